"""NeMo Gym itself, run the way NeMo Gym runs: its venv, ``ng_run`` with its shipped configs, its collector.

- ``require_venv()``: the NeMo Gym venv that ``make nemo-gym-venv`` builds (``scripts/nemo_gym_venv.sh``), or
  skip (fail under ``CI=true``) with the reason.
- ``NemoStack.start(...)``: ``ng_run`` with the configs NeMo Gym ships for ``string_match`` (verify only),
  ``example_single_tool_call``, ``example_session_state_mgmt`` and its ``openai_model`` proxy, plus
  ``nemo_root/``'s config that puts a rollgate verifier where NeMo Gym expects a resources server. Every server
  runs from the one NeMo Gym venv (``+uv_venv_dir`` holds a link to it per server, ``+skip_venv_if_present``),
  on 127.0.0.1 (Ray too), with uvicorn's access log on so each server's answers (status per route) are in the log.
- ``access_lines(log_text, server)``: those answers, per server.
- ``collect_with_nemo(...)``: NeMo Gym's own ``ng_collect_rollouts`` against one of its agents.

    stack = NemoStack.start(venv, model_url=complete_url, workdir=tmp)
    stack.urls["string_match"]; stack.run("string_match_simple_agent", row)["reward"]; stack.stop()
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# NeMo Gym finds our extra server (``resources_servers/rollgate_verifier``) here (``NEMO_GYM_EXTRA_ROOTS``).
NEMO_ROOT = HERE / "nemo_root"
NEMO_GYM_VERSION = "0.7.0"
VENV_ENV = "ROLLGATE_NEMO_GYM_VENV"

# The configs NeMo Gym ships, as paths inside its install (ng_run resolves them there), and ours.
SHIPPED_CONFIGS = [
    "resources_servers/string_match/configs/string_match.yaml",
    "resources_servers/example_single_tool_call/configs/example_single_tool_call.yaml",
    "resources_servers/example_session_state_mgmt/configs/example_session_state_mgmt.yaml",
    "responses_api_models/openai_model/configs/openai_model.yaml",
]
OUR_CONFIGS = [NEMO_ROOT / "resources_servers" / "rollgate_verifier" / "configs" / "rollgate_verifier.yaml"]
# Every server directory those configs start (``<type>/<name>``): each gets a link to the NeMo Gym venv.
SERVER_DIRS = [
    "resources_servers/string_match", "resources_servers/example_single_tool_call",
    "resources_servers/example_session_state_mgmt", "resources_servers/rollgate_verifier",
    "responses_api_agents/simple_agent", "responses_api_models/openai_model", "environment_servers/legacy_agent",
]
START_TIMEOUT_S = 240.0  # 13 servers, Ray and the head server on 2 busy cores: ~25 s measured, CI is slower
STOP_TIMEOUT_S = 60.0


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV) or ROOT / ".nemo-gym-venv" / NEMO_GYM_VERSION)


def _python313() -> str | None:
    """A Python 3.13 on this machine, as scripts/nemo_gym_venv.sh would find it (for the skip reason only)."""
    candidates = [os.environ.get("NEMO_GYM_PYTHON", "")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += [str(p) for p in sorted(pyenv_root.glob("versions/3.13*/bin/python3.13"), reverse=True)]
    candidates.append(shutil.which("python3.13") or "")
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                                   capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.stdout.strip() == "True":
            return candidate
    return None


def require_venv() -> Path:
    """The NeMo Gym venv; skip (fail under CI=true) when it is not built, saying why and how to build it."""
    venv = venv_dir()
    needed = [venv / "bin" / "python", venv / "bin" / "ng_run", venv / "bin" / "ng_collect_rollouts"]
    if not os.environ.get(VENV_ENV):
        needed.append(venv / ".installed")  # written last by scripts/nemo_gym_venv.sh: not an interrupted build
    if all(p.exists() for p in needed):
        return venv
    python = _python313()
    how = (f"`make nemo-gym-venv` builds it with {python}" if python else
           "it needs a Python 3.13 and none was found (set NEMO_GYM_PYTHON, or `pyenv install 3.13`), "
           "then `make nemo-gym-venv`")
    skip_or_fail(f"NeMo Gym {NEMO_GYM_VERSION} is not installed in {venv}: {how}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Straight to 127.0.0.1, whatever proxy the environment names.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 30.0) -> tuple[int, Any]:
    """One HTTP call on loopback; (status, parsed JSON body or the text when it is not JSON)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with _LOOPBACK.open(request, timeout=timeout_s) as answer:
            status, raw = int(answer.status), answer.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def read_ready(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The ``{"event": "ready", …}`` line a rollgate service (or the fake model) prints; bounded by ``timeout_s``.

    Reads the pipe's file descriptor directly (no buffered reader that could hold the line while ``select`` waits).
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(timeout=left):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{proc.args!r} exited with {proc.wait(timeout=5)} before it was ready")
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "ready":
                    return event
    raise RuntimeError(f"{proc.args!r} printed no ready line within {timeout_s:g} s")


def tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


# uvicorn's access log line, as NeMo Gym's servers print it with their name in front:
# (string_match) INFO:     127.0.0.1:53694 - "POST /verify HTTP/1.1" 422 Unprocessable Entity
_ACCESS = re.compile(r'^\((?P<server>[\w.-]+)\) INFO:\s+\S+ - "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" '
                     r"(?P<status>\d{3})", re.MULTILINE)
# NeMo Gym's own log of a refused body (its request-validation handler), kept as evidence.
_VALIDATION = re.compile(r"^\((?P<server>[\w.-]+)\) .*Request validation failed.*$", re.MULTILINE)


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int


def access_lines(log_text: str, server: str) -> list[Access]:
    """Every answer ``server`` (its NeMo Gym config name) logged in ``log_text``, in order."""
    return [Access(m["method"], m["path"], int(m["status"])) for m in _ACCESS.finditer(log_text)
            if m["server"] == server]


def validation_failures(log_text: str, server: str) -> list[str]:
    """NeMo Gym's log lines for bodies ``server`` refused (422), each with the body's first characters."""
    return [m.group(0)[:1500] for m in _VALIDATION.finditer(log_text) if m["server"] == server]


class NemoStack:
    """A running ``ng_run`` (and everything it started); ``urls`` maps each server's config name to its URL."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, log_file: IO[bytes], head_url: str,
                 venv: Path, workdir: Path, ray_tmp: Path) -> None:
        self.proc = proc
        self.ray_tmp = ray_tmp
        self.log_path = log_path
        self._log_file = log_file
        self.head_url = head_url
        self.head_port = int(head_url.rsplit(":", 1)[1])
        self.venv = venv
        self.workdir = workdir
        self.urls: dict[str, str] = {}

    @classmethod
    def start(cls, venv: Path, *, model_url: str, workdir: Path) -> NemoStack:
        venvs = workdir / "venvs"
        for server_dir in SERVER_DIRS:  # ng_run runs server <type>/<name> from <uv_venv_dir>/<type>/<name>/.venv
            (venvs / server_dir).mkdir(parents=True, exist_ok=True)
            (venvs / server_dir / ".venv").symlink_to(venv, target_is_directory=True)
        head_port = free_port()
        configs = ",".join([*SHIPPED_CONFIGS, *map(str, OUR_CONFIGS)])
        argv = [str(venv / "bin" / "ng_run"), f"+config_paths=[{configs}]",
                f"+policy_base_url={model_url}", "+policy_api_key=unused", "+policy_model_name=fake-model",
                f"+uv_venv_dir={venvs}", "+skip_venv_if_present=true",
                "+default_host=127.0.0.1", "+head_server.host=127.0.0.1", f"+head_server.port={head_port}",
                "+uvicorn_logging_show_200_ok=true"]
        # Ray's session files (sockets, logs) in a folder of this run's, removed with it; short, as a Unix socket
        # path must stay under 108 bytes.
        ray_tmp = Path(tempfile.mkdtemp(prefix="rg-ray-"))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update({
            "RAY_TMPDIR": str(ray_tmp),
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "NEMO_GYM_EXTRA_ROOTS": str(NEMO_ROOT),
            # What nemo_root's rollgate_verifier runs: this interpreter, with this process's import path.
            "ROLLGATE_PYTHON": sys.executable,
            "ROLLGATE_PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            # Ray's node address is the loopback one (as on a laptop) rather than the machine's routable IP.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        })
        log_path = workdir / "ng_run.log"
        log_file = log_path.open("wb")
        # A session of its own: whatever ng_run leaves behind is found by its process group and stopped with it.
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        stack = cls(proc, log_path, log_file, f"http://127.0.0.1:{head_port}", venv, workdir, ray_tmp)
        try:
            stack._wait_ready()
        except BaseException:
            stack.stop()
            raise
        return stack

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ng_run exited with {self.proc.returncode} before its servers were ready:\n"
                                   f"{tail(self.log_path)}")
            try:
                status, _ = http_json("GET", f"{self.head_url}/readyz", timeout_s=2)
            except OSError:
                status = 0
            if status == 200:
                _, instances = http_json("GET", f"{self.head_url}/server_instances")
                self.urls = {str(i["process_name"]): str(i["url"]) for i in instances}
                return
            time.sleep(0.5)
        raise RuntimeError(f"ng_run's servers were not ready within {START_TIMEOUT_S:g} s:\n{tail(self.log_path)}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def settle(self, offset: int, quiet_s: float = 0.5, timeout_s: float = 8.0) -> str:
        """The log since ``offset`` once the servers stopped writing to it (the last detached
        ``/close_session`` calls are logged after the collector returns), bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        size = self.log_size()
        quiet_until = time.monotonic() + quiet_s
        while time.monotonic() < min(quiet_until, deadline):
            time.sleep(0.1)
            if (now := self.log_size()) != size:
                size, quiet_until = now, time.monotonic() + quiet_s
        return self.log_since(offset)

    def run(self, agent: str, row: dict[str, Any]) -> dict[str, Any]:
        """NeMo Gym's agent on one task (its ``/run``: seed, model and tools, verify); the verify answer."""
        status, body = http_json("POST", f"{self.urls[agent]}/run", row, timeout_s=60)
        if status != 200 or not isinstance(body, dict):
            raise AssertionError(f"NeMo Gym's {agent} /run answered {status}: {str(body)[:2000]}")
        return body

    def stop(self) -> None:
        """SIGINT (ng_run stops its servers and Ray), then SIGKILL to the whole process group if it lingers."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
        finally:
            try:  # anything of this run still alive in its process group (none, when ng_run stopped cleanly)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._log_file.close()
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


@dataclass(repr=False)
class NemoCollection:
    """What NeMo Gym's ``ng_collect_rollouts`` did: exit status, its output, rows and aggregate metrics."""

    returncode: int
    output: str
    rows: list[dict[str, Any]]
    aggregate_path: Path
    aggregate: Any

    def __repr__(self) -> str:
        return (f"NemoCollection(exit {self.returncode}, {len(self.rows)} rows, "
                f"aggregate metrics {'written' if self.aggregate is not None else 'missing'})")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect_with_nemo(stack: NemoStack, *, agent: str, tasks: Path, out: Path,
                      timeout_s: float = 120.0) -> NemoCollection:
    """NeMo Gym's ``ng_collect_rollouts`` (its collector, through ``agent``'s environment server) on ``tasks``."""
    argv = [str(stack.venv / "bin" / "ng_collect_rollouts"), f"+agent_name={agent}",
            f"+input_jsonl_fpath={tasks}", f"+output_jsonl_fpath={out}", "+head_server.host=127.0.0.1",
            f"+head_server.port={stack.head_port}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run(argv, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout_s)
    aggregate_path = out.with_name(f"{out.stem}_aggregate_metrics.json")
    aggregate = json.loads(aggregate_path.read_text()) if aggregate_path.exists() else None
    return NemoCollection(done.returncode, done.stdout + done.stderr, read_jsonl(out), aggregate_path, aggregate)


def check_rows_with_nemo(venv: Path, paths: list[Path]) -> dict[str, list[dict[str, str | None]]]:
    """Validate rows with NeMo Gym's and OpenAI's models, in NeMo Gym's venv (``nemo_check_rows.py``)."""
    done = subprocess.run([str(venv / "bin" / "python"), str(HERE / "nemo_check_rows.py"), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"nemo_check_rows.py failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report: dict[str, list[dict[str, str | None]]] = json.loads(done.stdout)
    return report
