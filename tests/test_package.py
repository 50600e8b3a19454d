"""The installable package: one top-level import name, public surfaces that say what they export, no import cycles.

The wheel test builds the wheel the way a user's ``pip install .`` does and installs it into a fresh venv, so
what the editable dev install hides (a file left out of the package list, a module that only exists through the
repo's links) shows there.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import sysconfig
import types
import urllib.request
from pathlib import Path

import pytest

import rollgate

ROOT = Path(__file__).resolve().parent.parent
# Public modules whose ``__all__`` is their whole surface besides the packages (httpx's test_exported_members).
PUBLIC_MODULES = ["rollgate.verifier.hosting"]


def _all_modules() -> list[str]:
    names = ["rollgate"]
    for info in pkgutil.walk_packages(rollgate.__path__, "rollgate."):
        if not info.name.endswith(".__main__"):  # importing one runs the command
            names.append(info.name)
    return sorted(names)


def _surfaces() -> list[str]:
    """Every package (the generated protos aside) and the public modules listed above."""
    packages = [n for n in _all_modules() if hasattr(importlib.import_module(n), "__path__") and ".protos" not in n]
    return packages + PUBLIC_MODULES


SURFACES = _surfaces()


@pytest.mark.parametrize("name", SURFACES)
def test_all_is_exactly_what_the_surface_exports(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        attr for attr, value in vars(module).items()
        if not attr.startswith("_") and attr != "annotations" and not isinstance(value, types.ModuleType)
    }
    assert sorted(module.__all__) == sorted(public | ({"__version__"} & set(module.__all__)))
    for attr in module.__all__:
        assert getattr(module, attr) is not None


def test_every_package_has_all_and_a_docstring() -> None:
    for name in _all_modules():
        module = importlib.import_module(name)
        if not hasattr(module, "__path__") or ".protos" in name:
            continue
        assert module.__doc__ and module.__doc__.strip(), f"{name} says nothing about what it is"
        assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"


def test_verifier_surface_is_the_authoring_api() -> None:
    import rollgate.verifier as verifier

    assert sorted(verifier.__all__) == ["InvalidTask", "LLMJudge", "ResourcesServer", "Session", "tool"]


def test_public_classes_show_a_usage_example() -> None:
    """Each exported class's docstring (or its module's) shows how it is used: an indented code line."""
    missing = []
    for name in SURFACES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            value = getattr(module, attr)
            if not isinstance(value, type):
                continue
            doc = value.__doc__ or ""
            if not re.search(r"\n {8,}\S", doc):
                missing.append(f"{name}.{attr}")
    assert not missing, f"no usage example in the docstring of: {', '.join(sorted(set(missing)))}"


def _imports_of(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The rollgate modules ``module`` imports at import time (module level, ``if TYPE_CHECKING`` included;
    imports inside functions run later and cannot form a load cycle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("rollgate"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                if not base.startswith("rollgate"):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.add(full if full in known else base)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    out.discard(module)
    return out


def test_no_import_cycles() -> None:
    files: dict[str, tuple[Path, bool]] = {}
    for name in _all_modules():
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        files[name] = (Path(spec.origin), spec.submodule_search_locations is not None)
    known = set(files)
    graph = {name: _imports_of(path, name, pkg, known) & known for name, (path, pkg) in files.items()}

    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"
    # The graph is real: the front door and the gateway core do import things.
    assert "rollgate.gateway._outcome" in graph["rollgate.gateway._metrics"]


def test_collector_top_level_stays_small() -> None:
    top = list((ROOT / "collector").glob("*.py"))
    assert len(top) <= 10, sorted(p.name for p in top)
    assert {p.name for p in (ROOT / "collector").iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {
        "run", "postprocess", "stack", "viewer"}


# -- the built wheel in a fresh venv ------------------------------------------------------------------------------
def _readme_block(marker: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return str(block)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel built from this checkout, installed without dependencies; the dev venv's
    site-packages is appended to its path so the installed code can run (the wheel's own files come first)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the checkout (links kept as links), so no build/ is left in the tree and nothing
    # stale from an earlier build can slip in.
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tools", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo_out", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("rollgate-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    before = set(os.listdir(site))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    added = set(os.listdir(site)) - before
    (site / "added.json").write_text(json.dumps(sorted(added)))
    (site / "zz_dev_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def test_wheel_installs_one_top_level_package(fresh_venv: Path) -> None:
    python = fresh_venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    added = json.loads((site / "added.json").read_text())
    assert [a for a in added if not a.endswith(".dist-info")] == ["rollgate"]
    (dist_info,) = [a for a in added if a.endswith(".dist-info")]
    record = (site / dist_info / "RECORD").read_text()
    tops = {line.split("/", 1)[0] for line in record.splitlines() if line and not line.startswith("../")}
    assert tops == {"rollgate", dist_info}
    # The rooms, their subpackages, generated code and static files are all inside.
    for needed in ("rollgate/collector/run/_collect.py", "rollgate/collector/viewer/static/",
                   "rollgate/protos/rollgate/v1/gateway_pb2_grpc.py", "rollgate/verifier/hosting.py",
                   "rollgate/gateway/_http1_client.py", "rollgate/_cli.py", "rollgate/verifier/py.typed"):
        assert needed in record, needed
    for name in _all_modules():
        if hasattr(importlib.import_module(name), "__path__"):
            init = name.replace(".", "/") + "/__init__.py"
            assert init in record, f"package {name} is missing from the wheel (pyproject's packages list)"
    # Every import resolves inside the wheel's copy, not the checkout.
    probe = subprocess.run(
        [str(python), "-c", "import rollgate.collector.run, rollgate.collector.viewer, rollgate.gateway, "
         "rollgate.verifier.hosting, rollgate.protos.rollgate.v1.gateway_pb2_grpc as g; print(g.__file__)"],
        cwd=fresh_venv, check=True, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().startswith(str(site))


def test_readme_verifier_example_runs_from_the_wheel(fresh_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "my_env.py").write_text(_readme_block("from rollgate.verifier import"), encoding="utf-8")
    proc = subprocess.Popen([str(fresh_venv / "bin" / "rollgate"), "verifier", "serve", "my_env:Counter",
                             "--host", "127.0.0.1", "--port", "0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready", ready
        url = ready["url"]

        def post(path: str, body: dict[str, object], cookie: str | None = None) -> tuple[dict[str, object], str]:
            headers = {"content-type": "application/json", **({"cookie": cookie} if cookie else {})}
            req = urllib.request.Request(url + path, json.dumps(body).encode(), headers, method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read()), resp.headers.get("set-cookie", "")

        _, set_cookie = post("/seed_session", {})
        cookie = set_cookie.split(";", 1)[0]
        assert cookie
        assert post("/add", {"k": 2}, cookie)[0] == {"n": 2}
        assert post("/add", {"k": 3}, cookie)[0] == {"n": 5}
        response = {"output": [{"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "5"}]}]}
        verified, _ = post("/verify", {"responses_create_params": {"input": "add to 5"}, "response": response,
                                       "target": 5}, cookie)
        assert verified["reward"] == 1.0
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
