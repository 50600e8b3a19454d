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
import threading
import types
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
        "run", "postprocess", "stack", "viewer", "train"}


# -- the built wheel in a fresh venv ------------------------------------------------------------------------------
# What a user gets from `pip install rollgate`: the wheel built from this checkout, installed into a new venv with
# its real dependencies from the package index, no extras. Nothing of the dev environment is visible there, so a
# module that only a dev extra brings (jsonschema once was) fails here as it would for a user.
def _readme_block(marker: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return str(block)


def _run(*cmd: str | Path, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


# Building the venv installs every dependency from the index (a minute or two with a warm pip cache).
_SLOW = pytest.mark.timeout(900)


@dataclass
class FreshVenv:
    path: Path
    wheel: Path
    site: Path
    added_by_wheel: list[str]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the checkout (links kept as links), so no build/ is left in the tree and nothing
    # stale from an earlier build can slip in.
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tools", ".nemo-gym-venv", ".vllm-venv", "build", "dist", "*.egg-info", "__pycache__",
        ".*_cache", "demo_out", "bench"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", src)
    (wheel,) = (tmp / "dist").glob("rollgate-*.whl")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    before = set(os.listdir(site))
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    added = sorted(set(os.listdir(site)) - before)
    # Now its dependencies, as `pip install rollgate` resolves them (no extras).
    _run(python, "-m", "pip", "install", "-q", wheel, timeout=900)
    return FreshVenv(venv, wheel, site, added)


@_SLOW
def test_wheel_installs_one_top_level_package(fresh_venv: FreshVenv) -> None:
    added = fresh_venv.added_by_wheel
    assert [a for a in added if not a.endswith(".dist-info")] == ["rollgate"]
    (dist_info,) = [a for a in added if a.endswith(".dist-info")]
    record = (fresh_venv.site / dist_info / "RECORD").read_text()
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
    probe = _run(fresh_venv.python, "-c", "import rollgate.collector.run, rollgate.collector.viewer, rollgate.gateway, "
                 "rollgate.verifier.hosting, rollgate.protos.rollgate.v1.gateway_pb2_grpc as g; print(g.__file__)",
                 cwd=fresh_venv.path)
    assert probe.stdout.strip().startswith(str(fresh_venv.site))


class _Served:
    """``rollgate verifier serve TARGET`` from the fresh venv, on 127.0.0.1 port 0."""

    def __init__(self, venv: FreshVenv, target: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([str(venv.bin("rollgate")), "verifier", "serve", target, "--host", "127.0.0.1",
                                      "--port", "0"], cwd=cwd, env={**os.environ, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise AssertionError(f"{target} did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        ready = json.loads(line)
        assert ready["event"] == "ready", ready
        self.url = str(ready["url"])

    def post(self, path: str, body: dict[str, Any], cookie: str | None = None) -> tuple[dict[str, Any], str]:
        headers = {"content-type": "application/json", **({"cookie": cookie} if cookie else {})}
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read()), resp.headers.get("set-cookie", "")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=30)


def _said(text: str) -> dict[str, Any]:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


@_SLOW
def test_readme_verifier_example_runs_from_the_wheel(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    (tmp_path / "my_env.py").write_text(_readme_block("from rollgate.verifier import"), encoding="utf-8")
    served = _Served(fresh_venv, "my_env:Counter", tmp_path)
    try:
        _, set_cookie = served.post("/seed_session", {})
        cookie = set_cookie.split(";", 1)[0]
        assert cookie
        assert served.post("/add", {"k": 2}, cookie)[0] == {"n": 2}
        assert served.post("/add", {"k": 3}, cookie)[0] == {"n": 5}
        verified, _ = served.post("/verify", {"responses_create_params": {"input": "add to 5"},
                                              "response": _said("5"), "target": 5}, cookie)
        assert verified["reward"] == 1.0
    finally:
        served.stop()


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that grades every answer 10 out of 10."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Fine.\nSCORE: 10"}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


# built-in -> (task fields, the model's answer) that earn 1.0
_BUILTIN_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "exact_match": ({"expected_answer": "Paris"}, "Paris"),
    "contains": ({"expected_answer": "Paris"}, "It is Paris."),
    "regex": ({"pattern": r"^\d+$"}, "42"),
    "multiple_choice": ({"expected_answer": "B"}, "Answer: B"),
    "math": ({"expected_answer": "\\frac{1}{2}"}, "So it is \\boxed{0.5}"),
    "json_schema": ({"schema": {"type": "object", "required": ["a"]}}, '{"a": 1}'),
    "llm_judge": ({"expected_answer": "Paris", "question": "Capital of France?"}, "Paris"),
}


@_SLOW
def test_every_builtin_scores_on_a_plain_install(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    from rollgate.verifier._builtins import BUILTINS

    assert set(BUILTINS) == {*_BUILTIN_CASES, "reasoning_gym"}, "a new built-in needs a case here"
    judge = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    env = {"ROLLGATE_JUDGE_BASE_URL": f"http://127.0.0.1:{judge.server_address[1]}/v1",
           "ROLLGATE_JUDGE_MODEL": "judge"}
    try:
        for name, (task, text) in _BUILTIN_CASES.items():
            served = _Served(fresh_venv, name, tmp_path, env)
            try:
                answer, _ = served.post("/verify", {"responses_create_params": {"input": "q"},
                                                    "response": _said(text), **task})
                assert answer["reward"] == 1.0, (name, answer)
            finally:
                served.stop()
    finally:
        judge.shutdown()
        judge.server_close()
    # reasoning_gym needs its extra: without it the server says how to get it, and exits non-zero.
    proc = subprocess.run([str(fresh_venv.bin("rollgate")), "verifier", "serve", "reasoning_gym", "--port", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "pip install 'rollgate[reasoning]'" in proc.stderr


@_SLOW
def test_reasoning_gym_scores_with_its_extra(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    _run(fresh_venv.python, "-m", "pip", "install", "-q", f"rollgate[reasoning] @ {fresh_venv.wheel.as_uri()}",
         timeout=900)
    tasks = tmp_path / "tasks.jsonl"
    _run(fresh_venv.bin("rollgate"), "verifier", "tasks", "reasoning_gym", "+dataset=basic_arithmetic", "+size=2",
         "+seed=0", f"+output_jsonl_fpath={tasks}", cwd=tmp_path)
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    served = _Served(fresh_venv, "reasoning_gym", tmp_path)
    try:
        for row in rows:
            right, _ = served.post("/verify", {"responses_create_params": {"input": row["question"]},
                                               "response": _said(str(row["expected_answer"])), **row})
            wrong, _ = served.post("/verify", {"responses_create_params": {"input": row["question"]},
                                               "response": _said("no idea"), **row})
            assert (right["reward"], wrong["reward"]) == (1.0, 0.0)
    finally:
        served.stop()
