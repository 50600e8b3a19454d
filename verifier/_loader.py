"""Turn a target string into a ``LoadedVerifier``: ``module:attr`` (importable from the current directory, as
uvicorn does) or a built-in name such as ``exact_match``.

Every failure is a ``VerifierLoadError`` with one message that says what is wrong: no colon, module not found,
the import raised (with file and line), attribute missing (with a near match), not callable, or a class that is
not a ``ResourcesServer``. ``attr`` may be dotted (``pkg.mod:Outer.verify``).

``load_target(spec, fresh=True)`` forgets the module (and its stale bytecode) first, so hot reload can call the
same function again after a file changes and get the new code and a new version.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, cast

from rollgate.verifier._aggregate import MetricsHooks
from rollgate.verifier._base import TOOL_MARK, ResourcesServer
from rollgate.verifier._builtins import BUILTINS
from rollgate.verifier._calls import Handler
from rollgate.verifier._version import builtin_version, declared_version, source_version
from rollgate.verifier.errors import VerifierLoadError

__all__ = ["LoadedVerifier", "load_target"]

# Paths the app serves itself; a tool cannot take them.
RESERVED_PATHS = frozenset(
    {"verify", "verify_batch", "seed_session", "close_session", "aggregate_metrics", "healthz", "readyz",
     "metrics"}
)
_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class LoadedVerifier:
    """A target ready to serve: the handlers to call, its name and version, and the files it came from.

        loaded = load_target("exact_match")  # or "my_verifier:verify"
        loaded.version, loaded.needs_session  # ("exact_match@<rollgate's version>", False)
    """

    spec: str
    name: str
    kind: Literal["builtin", "function", "resources_server"]
    version: str
    verify: Handler
    tools: Mapping[str, Handler] = field(default_factory=dict)
    seed_hook: Handler | None = None
    close_hook: Handler | None = None
    aggregate_hook: Handler | None = None
    # NeMo Gym's finer /aggregate_metrics hooks (``compute_metrics``, ``get_key_metrics``) a server overrides.
    metrics_hooks: MetricsHooks = field(default_factory=lambda: MetricsHooks())
    instance: ResourcesServer | None = None
    # What a reload watcher should watch; empty for built-ins.
    source_files: tuple[Path, ...] = ()

    @property
    def needs_session(self) -> bool:
        """Whether a rollout must ``POST /seed_session`` first: tools, a session hook, or a verify taking
        ``session``. When not, a client may skip seed and close (``X-Rollgate-Session: none``): two HTTP calls
        fewer per rollout, which is most of the verifier's cost for a cheap verify."""
        return (bool(self.tools) or self.seed_hook is not None or self.close_hook is not None
                or self.verify.wants_session)


def load_target(spec: str, *, fresh: bool = False) -> LoadedVerifier:
    """Load ``spec`` (``module:attr`` or a built-in name); ``fresh`` re-imports the module from its source."""
    spec = spec.strip()
    if spec in BUILTINS:
        builtin = BUILTINS[spec]
        try:
            fn = builtin.load()
        except VerifierLoadError:
            raise
        except ImportError as exc:
            raise VerifierLoadError(f"built-in {spec!r} cannot load: {exc}", spec=spec) from None
        return LoadedVerifier(
            spec=spec,
            name=spec,
            kind="builtin",
            version=builtin_version(spec),
            verify=Handler.of(fn, "verify", inline=builtin.inline),
        )
    if ":" not in spec:
        near = difflib.get_close_matches(spec, list(BUILTINS), n=1)
        hint = f"did you mean the built-in {near[0]!r}? " if near else ""
        raise VerifierLoadError(
            f"{spec!r} is neither MODULE:ATTR (e.g. my_verifier:verify) nor a built-in verifier; "
            f"{hint}built-ins: {', '.join(sorted(BUILTINS))}",
            spec=spec,
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise VerifierLoadError(f"{spec!r}: expected MODULE:ATTR with both parts, e.g. my_verifier:verify", spec=spec)
    module = _import(module_name, spec, fresh=fresh)
    obj = _resolve(module, module_name, attr, spec)
    helpers = _siblings(_user_dir_of(module_name), module_name.partition(".")[0])
    helper_files = [Path(f) for n in helpers if (f := getattr(sys.modules.get(n), "__file__", None))]
    try:
        return _classify(obj, module, spec, helper_files)
    except VerifierLoadError as exc:
        if exc.spec:
            raise
        raise VerifierLoadError(f"{spec}: {exc}", spec=spec) from None  # e.g. a bad declared version


def _ensure_cwd_importable() -> None:
    # `python -m rollgate.verifier` puts the current directory on sys.path, but an installed `rollgate` script does not;
    # uvicorn adds it for the same reason.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _user_dir_of(module_name: str) -> Path | None:
    """The folder of a loaded module's file (its package's folder for a package), or None."""
    mod = sys.modules.get(module_name.partition(".")[0])
    origin = getattr(mod, "__file__", None)
    if not origin:
        return None
    path = Path(origin).resolve()
    return path.parent.parent if path.name == "__init__.py" else path.parent


def _siblings(folder: Path | None, exclude: str) -> list[str]:
    """Top-level modules whose file lies directly in ``folder``: the user's helpers beside the target.

    Only files directly in the folder, so running from a checkout never forgets rollgate's own packages.
    """
    if folder is None:
        return []
    out = []
    for name, mod in list(sys.modules.items()):
        origin = getattr(mod, "__file__", None)
        if "." in name or name == exclude or not origin or not origin.endswith(".py"):
            continue
        if Path(origin).resolve().parent == folder and not name.startswith(_OWN_PACKAGES):
            out.append(name)
    return out


_OWN_PACKAGES = ("rollgate", "tests", "conftest")


def _forget(module_name: str) -> None:
    """Drop a module, its submodules, the user's helper modules beside it and their bytecode caches, so the
    next import reads every one of them from source into a fresh namespace."""
    top = module_name.partition(".")[0]
    doomed = [n for n in sys.modules if n == top or n.startswith(top + ".")]
    doomed += _siblings(_user_dir_of(module_name), top)
    for name in doomed:
        mod = sys.modules.pop(name, None)
        origin = getattr(mod, "__file__", None)
        if origin and origin.endswith(".py"):
            # A file rewritten within the same second at the same size would pass the .pyc check and run stale.
            try:
                os.unlink(importlib.util.cache_from_source(origin))
            except (OSError, NotImplementedError, ValueError):
                pass
    importlib.invalidate_caches()


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    # The innermost frame outside importlib's machinery (and this file) is the user's line.
    machinery = (os.path.dirname(importlib.__file__ or ""), __file__)
    user = [f for f in frames if not f.filename.startswith("<frozen") and not f.filename.startswith(machinery)]
    if not user:
        return ""
    last = user[-1]
    return f" (at {last.filename}:{last.lineno})"


def _import(module_name: str, spec: str, *, fresh: bool) -> ModuleType:
    _ensure_cwd_importable()
    if fresh:
        _forget(module_name)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise VerifierLoadError(
                f"{spec}: module {module_name!r} not found (looked in the current directory {os.getcwd()} "
                f"and on sys.path)",
                spec=spec,
            ) from None
        raise VerifierLoadError(
            f"{spec}: importing {module_name!r} failed: it imports {missing!r}, which is not installed{_where(exc)}",
            spec=spec,
        ) from None
    except SyntaxError as exc:
        text = f"\n    {exc.text.rstrip()}" if exc.text else ""
        raise VerifierLoadError(
            f"{spec}: importing {module_name!r} failed: {exc.filename}:{exc.lineno}: "
            f"{type(exc).__name__}: {exc.msg}{text}",
            spec=spec,
        ) from None
    except (Exception, SystemExit) as exc:  # user module code ran and raised; SystemExit must not end the server
        raise VerifierLoadError(
            f"{spec}: importing {module_name!r} raised {type(exc).__name__}: {exc}{_where(exc)}", spec=spec
        ) from None


def _resolve(module: ModuleType, module_name: str, attr: str, spec: str) -> Any:
    obj: Any = module
    done: list[str] = []
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = f"module {module_name!r}" if not done else f"{module_name}:{'.'.join(done)}"
            names = [n for n in dir(obj) if not n.startswith("__")]
            near = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise VerifierLoadError(f"{spec}: {where} has no attribute {part!r}{hint}", spec=spec) from None
        done.append(part)
    return obj


def _files_of(*objects: Any) -> list[Path]:
    files: list[Path] = []
    for obj in objects:
        try:
            src = inspect.getsourcefile(obj)
        except TypeError:  # builtins and C extensions have no source
            src = None
        if src and os.path.exists(src):
            files.append(Path(src))
    return files


def _version_for(module: ModuleType, obj: Any, files: list[Path], where: str) -> str:
    declared = getattr(obj, "version", None) if isinstance(obj, type) else None
    if declared is not None:
        return declared_version(declared, f"{where}.version")
    if hasattr(module, "__verifier_version__"):
        return declared_version(module.__verifier_version__, f"{module.__name__}.__verifier_version__")
    if not files:
        return "unknown"
    return source_version(files)


def _classify(obj: Any, module: ModuleType, spec: str, helpers: list[Path]) -> LoadedVerifier:
    if isinstance(obj, type):
        if not issubclass(obj, ResourcesServer):
            raise VerifierLoadError(
                f"{spec}: {obj.__name__} is a class but not a verifier.ResourcesServer subclass; "
                "point at a verify(task, response) function or subclass verifier.ResourcesServer",
                spec=spec,
            )
        try:
            instance = obj()
        except Exception as exc:
            raise VerifierLoadError(
                f"{spec}: creating {obj.__name__}() raised {type(exc).__name__}: {exc}{_where(exc)}", spec=spec
            ) from None
        return _from_server(instance, module, spec, helpers)
    if isinstance(obj, ResourcesServer):
        return _from_server(obj, module, spec, helpers)
    if not callable(obj):
        raise VerifierLoadError(
            f"{spec}: {type(obj).__name__} object is not callable; point at a verify(task, response) function "
            "or a verifier.ResourcesServer subclass",
            spec=spec,
        )
    verify = Handler.of(obj, "verify")
    _check_verify_signature(verify, spec)
    files = _files_of(module, obj) + helpers
    return LoadedVerifier(
        spec=spec,
        name=spec,
        kind="function",
        version=_version_for(module, obj, files, spec),
        verify=verify,
        source_files=tuple(sorted(set(files))),
    )


def _check_verify_signature(verify: Handler, spec: str) -> None:
    if verify.signature is None:
        return
    try:
        verify.signature.bind({}, {})
    except TypeError as exc:
        raise VerifierLoadError(
            f"{spec}: verify must accept (task, response) (and optionally session): {exc}", spec=spec
        ) from None


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(ResourcesServer, name)


def _plain_hook(spec: str, cls: type, instance: ResourcesServer, name: str) -> Callable[[Any], Any]:
    method = getattr(instance, name)
    if inspect.iscoroutinefunction(method):
        # They run inside the default aggregation, in a worker thread, as NeMo Gym's run inside its own.
        raise VerifierLoadError(f"{spec}: {cls.__name__}.{name} must be a plain def, as in NeMo Gym", spec=spec)
    return cast(Callable[[Any], Any], method)


def _from_server(instance: ResourcesServer, module: ModuleType, spec: str, helpers: list[Path]) -> LoadedVerifier:
    cls = type(instance)
    if not _overrides(cls, "verify"):
        raise VerifierLoadError(f"{spec}: {cls.__name__} does not define verify(self, task, response)", spec=spec)
    verify = Handler.of(instance.verify, "verify")
    # Not on the base class: NeMo Gym servers may define it; used only when the user's class has one.
    aggregate = getattr(instance, "aggregate_metrics", None)
    _check_verify_signature(verify, spec)
    tools: dict[str, Handler] = {}
    for klass in reversed(cls.__mro__):
        for attr_name, value in vars(klass).items():
            raw: Callable[..., Any] | None = getattr(value, "__func__", value)
            tool_name = getattr(raw, TOOL_MARK, None)
            if not isinstance(tool_name, str):
                continue
            if not _TOOL_NAME.match(tool_name) or tool_name in RESERVED_PATHS:
                raise VerifierLoadError(
                    f"{spec}: tool name {tool_name!r} on {cls.__name__}.{attr_name} cannot be served "
                    f"(letters, digits, _ and -; not one of {', '.join(sorted(RESERVED_PATHS))})",
                    spec=spec,
                )
            # A subclass overriding a tool replaces it; two different methods claiming one name is a mistake.
            previous = tools.get(tool_name)
            if previous is not None and getattr(previous.fn, "__name__", None) != attr_name:
                raise VerifierLoadError(f"{spec}: two methods of {cls.__name__} are tool {tool_name!r}", spec=spec)
            tools[tool_name] = Handler.of(getattr(instance, attr_name), tool_name)
    classes = [k for k in cls.__mro__ if k not in (ResourcesServer, object)]
    files = _files_of(module, *classes) + helpers
    return LoadedVerifier(
        spec=spec,
        name=spec,
        kind="resources_server",
        version=_version_for(module, cls, files, f"{cls.__name__}"),
        verify=verify,
        tools=tools,
        seed_hook=Handler.of(instance.seed_session, "seed_session") if _overrides(cls, "seed_session") else None,
        close_hook=Handler.of(instance.close_session, "close_session") if _overrides(cls, "close_session") else None,
        aggregate_hook=Handler.of(aggregate, "aggregate_metrics") if callable(aggregate) else None,
        metrics_hooks=MetricsHooks(**{name: _plain_hook(spec, cls, instance, name)
                                      for name in ("compute_metrics", "get_key_metrics", "compute_repeat_metrics")
                                      if _overrides(cls, name)}),
        instance=instance,
        source_files=tuple(sorted(set(files))),
    )
