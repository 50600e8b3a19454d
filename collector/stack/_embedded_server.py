"""The embedded model's OpenAI-compatible HTTP server: ``/v1/chat/completions`` and ``/v1/models`` on loopback.

The engine is ``mistralrs`` (a prebuilt CPU wheel that reads the GGUF file, its tokenizer and its chat template),
an in-process library; this module puts the small slice of the OpenAI API the gateway uses in front of it. It runs
as the embedded model's subprocess and, like every rollgate server, prints one ready line on stdout once it
listens (everything else, the engine's own logs included, goes to stderr)::

    python -m rollgate.collector.stack._embedded_server --model SmolLM2-135M-Instruct.Q4_1.gguf --port 0
    {"event": "ready", "service": "embedded-model", "url": "http://127.0.0.1:PORT/v1", "model": "..."}

What a request may carry: ``messages`` (text; a list of text parts is joined), ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p``, ``stop``, ``presence_penalty``, ``frequency_penalty``,
and ``seed`` (accepted and ignored: mistralrs cannot seed its CPU sampler, so runs at temperature > 0 vary).
Streaming, tools, images, ``logprobs`` and ``n`` > 1 are answered with a 400 that says so. The engine runs one
request at a time (mistralrs' runner is not re-entrant); requests wait their turn in arrival order.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rollgate._parent import watch_parent

__all__ = [
    "ChatEngine", "Completion", "MistralrsEngine", "SamplingParams",
    "create_app", "default_threads", "main", "parse_request", "serve",
]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_ROLES = frozenset({"system", "user", "assistant"})
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# Unsupported request fields, and what to tell the caller. A falsy value (False, None, [], 1 for n) is fine.
_UNSUPPORTED = {
    "stream": "streaming",
    "tools": "tools",
    "functions": "tools",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "response_format": "response_format",
}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion (None = the engine's default).

        SamplingParams(max_tokens=16, temperature=0.1)
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(frozen=True)
class Completion:
    """One generated answer.

        Completion(text="Paris", finish_reason="stop", prompt_tokens=109, completion_tokens=2)
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ChatEngine(Protocol):
    """What the HTTP server needs from an engine; ``chat`` blocks and is called one request at a time.

        class Echo:
            def chat(self, messages, params): return Completion(messages[-1]["content"], "stop", 1, 1)
    """

    def chat(self, messages: list[dict[str, str]], params: SamplingParams) -> Completion: ...


class MistralrsEngine:
    """SmolLM2 (or any GGUF mistralrs can read) in process; tokenizer and chat template come from the GGUF.

        engine = MistralrsEngine(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))
        engine.chat([{"role": "user", "content": "Capital of France?"}], SamplingParams(max_tokens=8))
    """

    def __init__(self, model_path: Path) -> None:
        mistralrs: Any = importlib.import_module("mistralrs")
        self._mistralrs = mistralrs
        which = mistralrs.Which.GGUF(quantized_model_id=str(model_path.parent),
                                     quantized_filename=model_path.name)
        # token_source="none": never look for (or use) a model-hub token; nothing is fetched.
        # (No ``seed``: mistralrs cannot seed its CPU sampler and refuses to start when given one.)
        self._runner = mistralrs.Runner(which=which, token_source="none")

    def chat(self, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        request = self._mistralrs.ChatCompletionRequest(
            model="default",
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop_seqs=params.stop or None,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
        )
        answer = self._runner.send_chat_completion_request(request)
        choice = answer.choices[0]
        return Completion(
            text=choice.message.content or "",
            finish_reason=str(choice.finish_reason),
            prompt_tokens=int(answer.usage.prompt_tokens),
            completion_tokens=int(answer.usage.completion_tokens),
        )


class _BadRequest(ValueError):
    pass


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status_code=status)


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _BadRequest(f"{where}: the embedded model reads text only, not {kind!r} parts")
        return "\n".join(texts)
    raise _BadRequest(f"{where}: content must be a string or a list of text parts")


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise _BadRequest("'messages' must be a non-empty list")
    out = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise _BadRequest(f"messages[{i}] must be an object")
        role = msg.get("role")
        role = "system" if role == "developer" else role
        if role not in _ROLES:
            raise _BadRequest(f"messages[{i}]: role {role!r} is not one of system, user, assistant")
        if msg.get("tool_calls"):
            raise _BadRequest(f"messages[{i}]: the embedded model does not support tools")
        out.append({"role": str(role), "content": _text(msg.get("content"), f"messages[{i}]")})
    return out


def _number(body: dict[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise _BadRequest(f"'{key}' must be a {'whole number' if kind is int else 'number'}, got {value!r}")
    return kind(value)


def parse_request(body: Any) -> tuple[list[dict[str, str]], SamplingParams]:
    """Check a ``/chat/completions`` body; raise ``ValueError`` with a message for the caller when it is bad."""
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    for key, what in _UNSUPPORTED.items():
        if body.get(key):
            raise _BadRequest(f"the embedded model does not support {what} ('{key}')")
    n = _number(body, "n", int)
    if n is not None and n != 1:
        raise _BadRequest("the embedded model answers one choice per request ('n' must be 1)")
    messages = _messages(body.get("messages"))
    max_tokens = _number(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise _BadRequest(f"'max_tokens' must be at least 1, got {max_tokens}")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _BadRequest("'stop' must be a string or a list of strings")
    _number(body, "seed", int)  # checked, then ignored (see the module docstring)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", float),
        top_p=_number(body, "top_p", float),
        stop=list(stop or []),
        presence_penalty=_number(body, "presence_penalty", float),
        frequency_penalty=_number(body, "frequency_penalty", float),
    )
    return messages, params


def create_app(engine: ChatEngine, model_name: str = DEFAULT_MODEL_NAME) -> FastAPI:
    """The HTTP app in front of ``engine``; it answers under the name ``model_name`` whatever model is asked for.

        app = create_app(MistralrsEngine(path), "smollm2-135m-instruct")
    """
    app = FastAPI(title="rollgate embedded model", docs_url=None, redoc_url=None, openapi_url=None)
    turn = asyncio.Lock()
    started = int(time.time())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": started, "owned_by": "rollgate"}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the body is not valid JSON")
        try:
            messages, params = parse_request(body)
        except _BadRequest as exc:
            return _error(400, str(exc))
        async with turn:
            try:
                done = await asyncio.to_thread(engine.chat, messages, params)
            except ValueError as exc:  # mistralrs' own checks, e.g. a prompt longer than the context
                return _error(400, str(exc))
            except Exception as exc:  # any engine failure is this request's 500, not the server's
                return _error(500, f"the embedded model failed: {exc}", "server_error")
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }],
            "usage": {
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens,
            },
        })

    return app


async def serve(app: FastAPI, sock: socket.socket, ready_out: Any, model_name: str) -> None:
    """Serve ``app`` on the bound ``sock``; write the ready line to ``ready_out`` once it listens, then close it.

    Stops on SIGTERM/SIGINT (uvicorn's own handlers) or when cancelled, after in-flight requests finish.
    """
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, access_log=False, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            raise OSError(f"the embedded model server stopped before it listened on {host}:{port}")
        await asyncio.sleep(0.01)
    ready = {"event": "ready", "service": "embedded-model", "url": f"http://{host}:{port}/v1", "model": model_name}
    ready_out.write(json.dumps(ready) + "\n")
    ready_out.flush()
    ready_out.close()
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:  # cancelled: stop as SIGTERM would, then let the cancellation through
        server.should_exit = True
        await task
        raise


def default_threads(cores: int | None = None) -> int:
    """Half the cores, at least 1 and at most 4: 1 on a 2-core machine."""
    return max(1, min(4, (cores if cores is not None else os.cpu_count() or 2) // 2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollgate.collector.stack._embedded_server",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", required=True, type=Path, help="the GGUF file")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="the model name /v1/models reports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (the ready line says which)")
    parser.add_argument("--threads", type=int, default=0,
                        help="the engine's CPU threads (0 = half the cores, 1 to 4; CANDLE_NUM_THREADS wins)")
    args = parser.parse_args(argv)
    watch_parent()  # started by `rollgate up`: end with it (see rollgate._parent)

    # Only the ready line goes to stdout: the engine (native code) logs to fd 1, so fd 1 becomes stderr from here.
    ready_out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    # The engine's logs: errors only. Its CPU threads (candle's pool) are set before it loads: a 135M model gains
    # little from many threads and, on a small machine shared with the gateway and the collector, loses a lot to
    # threads waiting on a preempted sibling (measured on 2 cores under load: 1 thread ~2x faster than 2, half the
    # CPU). The pool's waiters block instead of spinning for the same reason. The environment can override both.
    os.environ.setdefault("RUST_LOG", "error")
    os.environ.setdefault("CANDLE_NUM_THREADS", str(args.threads or default_threads()))
    os.environ.setdefault("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    sock.listen(128)
    if not args.model.is_file():
        print(f"error: no model file at {args.model}", file=sys.stderr)
        return 1
    try:
        engine = MistralrsEngine(args.model)
    except ImportError:
        print("error: mistralrs is not installed: pip install 'rollgate[embedded]' (or run `make demo`)",
              file=sys.stderr)
        return 1
    except Exception as exc:  # the engine's own refusal (a bad file, too little memory): say it in one line
        print(f"error: the embedded model cannot load {args.model}: {exc}", file=sys.stderr)
        return 1
    asyncio.run(serve(create_app(engine, args.name), sock, ready_out, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
