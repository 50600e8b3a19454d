"""Command-line arguments in both spellings, parsed into one typed pydantic config.

``+key=value`` / ``+a.b=value`` (the documented ``ng_collect_rollouts`` style; ``null`` is None, ``[a,b]`` a list)
and ``--key value`` / ``--key=value`` / ``--flag`` mean the same thing. Dashes in ``--long-names`` become
underscores. Values are typed the way OmegaConf types a dotlist, then validated by the config model, so
``+limit=5`` and ``--limit 5`` give the same ``int``. A command may add other spellings: ``aliases`` (``--agent`` for
``agent_name``, ``--temperature`` for ``responses_create_params.temperature``) and one-letter ``short`` flags
(``-a VALUE``, ``-a=VALUE``); ``--help`` lists them beside their keys, an unknown key or flag names the valid ones.

    class Config(BaseModel):
        limit: int | None = None
    cfg = parse_cli(["+limit=null"], Config)
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rollgate._parent import watch_parent

M = TypeVar("M", bound=BaseModel)


class CliError(Exception):
    """A command line that cannot become a valid config; the message says what to change."""


class CliHelp(Exception):
    """``-h``/``--help`` was given: the message is the list of keys, printed by ``run_cli`` with exit 0."""


def spellings(name: str, aliases: Mapping[str, str], short: Mapping[str, str]) -> list[str]:
    """The other flags that set key ``name`` or one of its sub-keys, e.g. ``["--agent/-a"]`` for ``agent_name``."""
    out = []
    for alias, target in aliases.items():
        if target == name or target.startswith(f"{name}."):
            letters = "".join(f"/-{k}" for k, v in short.items() if v == target)
            out.append(f"--{alias.replace('_', '-')}{letters}")
    out += [f"-{k}" for k, v in short.items() if v == name and v not in aliases.values()]
    return out


def _help_text(model: type[BaseModel], positional: Sequence[str], aliases: Mapping[str, str],
               short: Mapping[str, str]) -> str:
    lines = [f"keys ({'+key=value' } or --key value):"]
    for name, info in model.model_fields.items():
        default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
        where = " (or positional)" if name in positional else ""
        also = spellings(name, aliases, short)
        where += f" (also {', '.join(also)})" if also else ""
        doc = f": {info.description}" if info.description else ""
        lines.append(f"  {name}{where} [{default}]{doc}")
    return "\n".join(lines)


# No leading zeros: YAML 1.1 reads 010 as octal.
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
# Names, paths and addresses: a letter or slash first, then only characters YAML leaves alone (a final colon
# would make a mapping); or an IPv4 address with an optional port.
_PLAIN = re.compile(r"(?:[A-Za-z]|\.{0,2}/)[A-Za-z0-9_./:-]*(?<!:)|(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?::[0-9]+)?")
# The words YAML 1.1 (OmegaConf reads dotlist values as YAML) makes booleans or null, in their exact spellings.
_WORDS: dict[str, bool | None] = {
    **{w: True for a in ("true", "yes", "on") for w in (a, a.capitalize(), a.upper())},
    **{w: False for a in ("false", "no", "off") for w in (a, a.capitalize(), a.upper())},
    **dict.fromkeys(("null", "Null", "NULL")),
}
_UNHANDLED = object()
# A one-letter flag: -a, or -a=VALUE (a negative number is a value, not a flag).
_SHORT = re.compile(r"-[A-Za-z]")


def _fast_value(raw: str) -> Any:
    """What OmegaConf would make of the common simple values, without importing it (a tenth of the collector's
    start-up); ``_UNHANDLED`` for anything else. A test holds this equal to OmegaConf on a generated corpus."""
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        return float(raw)
    if raw in _WORDS:
        return _WORDS[raw]
    if _PLAIN.fullmatch(raw):
        return raw
    return _UNHANDLED


def _typed_value(key: str, raw: str) -> Any:
    value = _fast_value(raw)
    if value is not _UNHANDLED:
        return value
    # OmegaConf's dotlist grammar gives null/ints/floats/bools/lists the way the documented commands expect.
    from omegaconf import OmegaConf  # here: most command lines never need it

    try:
        conf = OmegaConf.from_dotlist([f"v={raw}"])
        return OmegaConf.to_container(conf, resolve=False)["v"]  # type: ignore[call-overload,index]
    except Exception as exc:  # omegaconf raises several grammar errors; all mean "bad value"
        raise CliError(f"{key}: cannot parse value {raw!r}: {exc}") from exc


def _split(argv: Sequence[str], flags: frozenset[str],
           short: Mapping[str, str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """Return ``(key, typed value)`` pairs in order, and the positional arguments. An unknown one-letter flag
    comes back as the pair ``("-x", None)`` for the caller to name among the valid ones."""
    pairs: list[tuple[str, Any]] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        flag, eq, given = arg.partition("=")
        if _SHORT.fullmatch(flag):
            key = short.get(flag[1:])
            if key is None:
                pairs.append((flag, None))
                continue
            if eq:
                raw = given
            elif key in flags:
                raw = "true"
            elif i < len(argv):
                raw, i = argv[i], i + 1
            else:
                raise CliError(f"{flag} needs a value")
            pairs.append((key, _typed_value(key, raw)))
        elif arg.startswith("--") and len(arg) > 2:
            body = arg[2:]
            if "=" in body:
                key, raw = body.split("=", 1)
            elif body.replace("-", "_") in flags:
                key, raw = body, "true"
            elif i < len(argv):
                key, raw = body, argv[i]
                i += 1
            else:
                raise CliError(f"--{body} needs a value")
            key = key.replace("-", "_")
            pairs.append((key, _typed_value(key, raw)))
        elif arg.startswith("+") or ("=" in arg and not arg.startswith("-")):
            body = arg[1:] if arg.startswith("+") else arg
            if "=" not in body:
                raise CliError(f"{arg}: expected +key=value")
            key, raw = body.split("=", 1)
            pairs.append((key, _typed_value(key, raw)))
        else:
            positional.append(arg)
    return pairs, positional


def _bool_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, f in model.model_fields.items() if f.annotation is bool)


def _open_dict_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields typed as a free-form dict: any sub-key is accepted below them."""
    out = set()
    for name, f in model.model_fields.items():
        origin = getattr(f.annotation, "__origin__", None)
        if f.annotation is dict or origin is dict:
            out.add(name)
    return frozenset(out)


def _unknown_key_error(key: str, valid: Sequence[str], aliases: Mapping[str, str],
                       short: Mapping[str, str]) -> CliError:
    near = difflib.get_close_matches(key, [*valid, *aliases], n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    what = "flag" if key.startswith("-") else "key"
    also = [s for name in valid for s in spellings(name, aliases, short)]
    flags = f"; also: {', '.join(also)}" if also else ""
    return CliError(f"unknown {what} {key!r}{hint}; valid keys: {', '.join(sorted(valid))}{flags}")


def _insert(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CliError(f"{dotted}: {part!r} already has a value, cannot set a sub-key")
        node = child
    node[parts[-1]] = value


def _format_validation(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        given = err.get("input")
        lines.append(f"{loc}: {err['msg']} (got {given!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_cli(
    argv: Sequence[str],
    model: type[M],
    *,
    positional: Sequence[str] = (),
    aliases: Mapping[str, str] | None = None,
    short: Mapping[str, str] | None = None,
) -> M:
    """Parse ``argv`` into ``model``; ``positional`` names the fields that bare arguments fill, in order.

    ``aliases`` maps other names (``--name`` or ``+name=``, dashes read as underscores) to a key or a dotted sub-key;
    ``short`` maps a letter (``-a``) to a key."""
    aliases = aliases or {}
    short = short or {}
    if any(arg in ("-h", "--help") for arg in argv):
        raise CliHelp(_help_text(model, positional, aliases, short))
    valid = list(model.model_fields)
    open_dicts = _open_dict_fields(model)
    bools = _bool_fields(model)
    pairs, bare = _split(argv, bools | {a for a, target in aliases.items() if target in bools}, short)
    tree: dict[str, Any] = {}
    for key, value in pairs:
        key = aliases.get(key, key)
        top = key.split(".", 1)[0]
        if top not in model.model_fields:
            raise _unknown_key_error(key, valid, aliases, short)
        if "." in key and top not in open_dicts and not _is_model_field(model, top):
            raise CliError(f"{key}: {top!r} has no sub-keys")
        _insert(tree, key, value)
    if len(bare) > len(positional):
        extra = bare[len(positional):]
        raise CliError(f"unexpected argument(s): {' '.join(extra)}; valid keys: {', '.join(sorted(valid))}")
    for name, value in zip(positional, bare, strict=False):  # fewer bare values than positional keys is fine
        tree[name] = value
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise CliError(_format_validation(exc)) from None


def _is_model_field(model: type[BaseModel], name: str) -> bool:
    ann = model.model_fields[name].annotation
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def run_cli(main: Callable[[], int]) -> int:
    """Run a command's body: a ``CliError`` becomes ``error: …`` on stderr and exit status 2.

    A command started by ``rollgate up`` also ends when ``up`` is gone (``_parent``)."""
    watch_parent()
    try:
        return main()
    except CliHelp as shown:
        print(shown)
        return 0
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
