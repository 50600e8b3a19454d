"""The embedded model's OpenAI-compatible server, against a stub engine (no model, no ``embedded`` extra needed).

The real engine (mistralrs + SmolLM2) is exercised by ``make demo``; here: the HTTP slice the gateway uses, what
it refuses, one request at a time, the ready line, and how ``start_embedded_model`` reads (or misses) it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from rollgate.collector.stack import _embedded
from rollgate.collector.stack._embedded_server import (
    Completion,
    SamplingParams,
    create_app,
    default_threads,
    parse_request,
    serve,
)
from rollgate.gateway._convert import chat_to_response, responses_to_chat


@dataclass
class StubEngine:
    """Answers with the last user message reversed; records calls and how many ran at once."""

    delay_s: float = 0.0
    fail: Exception | None = None
    calls: list[tuple[list[dict[str, str]], SamplingParams]] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chat(self, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay_s)
            if self.fail is not None:
                raise self.fail
            self.calls.append((messages, params))
            return Completion(messages[-1]["content"][::-1], "stop", prompt_tokens=7, completion_tokens=3)
        finally:
            with self.lock:
                self.running -= 1


@dataclass
class Served:
    url: str
    ready: dict[str, Any]
    session: aiohttp.ClientSession

    async def post(self, body: Any, *, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.session.post(f"{self.url}/chat/completions", data=data,
                                     headers={"content-type": "application/json"}) as answer:
            return answer.status, await answer.json()


@contextlib.asynccontextmanager
async def served(engine: StubEngine, name: str = "tiny") -> AsyncIterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    out = io.StringIO()
    out.close = lambda: None  # type: ignore[method-assign]  # keep what serve() wrote readable
    task = asyncio.create_task(serve(create_app(engine, name), sock, out, name))
    for _ in range(500):
        if out.getvalue() or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        await task
    ready = json.loads(out.getvalue())
    try:
        async with aiohttp.ClientSession() as session:
            yield Served(ready["url"], ready, session)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


FEW_SHOT = [
    {"role": "system", "content": "Answer with one word only."},
    {"role": "user", "content": "What is the capital of Peru?"},
    {"role": "assistant", "content": "Lima"},
    {"role": "user", "content": "What is the capital of France?"},
]


async def test_ready_line_and_models() -> None:
    async with served(StubEngine(), "smollm2") as srv:
        assert srv.ready["event"] == "ready" and srv.ready["service"] == "embedded-model"
        assert srv.ready["url"].startswith("http://127.0.0.1:") and srv.ready["url"].endswith("/v1")
        async with srv.session.get(f"{srv.url}/models") as answer:
            assert answer.status == 200
            models = await answer.json()
        assert [m["id"] for m in models["data"]] == ["smollm2"]


async def test_what_the_gateway_sends_is_answered_and_converts_back() -> None:
    engine = StubEngine()
    params = {"input": FEW_SHOT, "max_output_tokens": 16, "temperature": 0.1, "top_p": 0.95, "seed": 42,
              "instructions": "Be brief."}
    body, dropped = responses_to_chat(params, model="smollm2")
    assert dropped == []
    async with served(engine, "smollm2") as srv:
        status, chat = await srv.post(body)
    assert status == 200, chat
    messages, sampling = engine.calls[0]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1:] == FEW_SHOT
    assert sampling == SamplingParams(max_tokens=16, temperature=0.1, top_p=0.95)
    assert chat["object"] == "chat.completion" and chat["model"] == "smollm2"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "?ecnarF fo latipac eht si tahW"}
    assert chat["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    response = chat_to_response(chat)
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "?ecnarF fo latipac eht si tahW"
    assert response["usage"]["input_tokens"] == 7 and response["usage"]["output_tokens"] == 3


def test_parse_request_reads_the_openai_fields() -> None:
    messages, params = parse_request({
        "model": "anything",
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                     {"role": "user", "content": "hi"}],
        "max_completion_tokens": 5, "max_tokens": 99, "stop": "\n", "presence_penalty": 0.5, "temperature": 0,
        "n": 1, "stream": False, "tools": [], "logprobs": False,
    })
    assert messages == [{"role": "system", "content": "a\nb"}, {"role": "user", "content": "hi"}]
    assert params == SamplingParams(max_tokens=5, temperature=0.0, stop=["\n"], presence_penalty=0.5)


@pytest.mark.parametrize(("body", "says"), [
    ({"messages": FEW_SHOT, "stream": True}, "streaming"),
    ({"messages": FEW_SHOT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": FEW_SHOT, "logprobs": True}, "logprobs"),
    ({"messages": FEW_SHOT, "n": 2}, "one choice"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role 'tool'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text only"),
    ({"messages": FEW_SHOT, "max_tokens": 0}, "at least 1"),
    ({"messages": FEW_SHOT, "temperature": "hot"}, "'temperature' must be a number"),
    ({"messages": FEW_SHOT, "stop": [1]}, "'stop'"),
    ([1, 2], "JSON object"),
])
async def test_what_it_cannot_do_is_a_400_that_says_so(body: Any, says: str) -> None:
    engine = StubEngine()
    async with served(engine) as srv:
        status, answer = await srv.post(body)
    assert status == 400
    assert says in answer["error"]["message"]
    assert engine.calls == []


async def test_bad_json_and_engine_failures() -> None:
    async with served(StubEngine()) as srv:
        status, answer = await srv.post(None, raw=b"{nope")
        assert status == 400 and "not valid JSON" in answer["error"]["message"]
    async with served(StubEngine(fail=ValueError("Prompt sequence length is greater than 8192"))) as srv:
        status, answer = await srv.post({"messages": FEW_SHOT})
        assert status == 400 and "8192" in answer["error"]["message"]
    async with served(StubEngine(fail=RuntimeError("boom"))) as srv:
        status, answer = await srv.post({"messages": FEW_SHOT})
        assert status == 500 and answer["error"]["type"] == "server_error" and "boom" in answer["error"]["message"]


async def test_requests_reach_the_engine_one_at_a_time_and_all_are_answered() -> None:
    engine = StubEngine(delay_s=0.02)
    async with served(engine) as srv:
        results = await asyncio.gather(*(
            srv.post({"messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(8)
        ))
        # The event loop stays free while the engine works: the server answers other routes meanwhile.
        async with srv.session.get(f"{srv.url}/models") as answer:
            assert answer.status == 200
    assert [status for status, _ in results] == [200] * 8
    assert sorted(r["choices"][0]["message"]["content"] for _, r in results) == sorted(f"{i}q" for i in range(8))
    assert engine.most_at_once == 1


def test_default_threads() -> None:
    assert [default_threads(c) for c in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 4]


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)


def test_start_reads_the_ready_line_past_other_output() -> None:
    proc = _child("import json,time; print('hello'); "
                  "print(json.dumps({'event': 'ready', 'url': 'http://127.0.0.1:1/v1'}), flush=True); time.sleep(30)")
    try:
        assert _embedded._read_ready(proc, 20)["url"] == "http://127.0.0.1:1/v1"
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_start_says_when_the_server_exits_or_hangs() -> None:
    with pytest.raises(_embedded.EmbeddedModelError, match="exited with status 3 before it was ready"):
        _embedded._read_ready(_child("import sys; sys.exit(3)"), 20)
    hung = _child("import time; time.sleep(30)")
    with pytest.raises(_embedded.EmbeddedModelError, match="not ready within 1 s"):
        _embedded._read_ready(hung, 1)
    assert hung.returncode is not None


def test_start_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mistralrs" else real(name, *a))
    with pytest.raises(_embedded.EmbeddedModelError, match=r"make demo"):
        _embedded.start_embedded_model()
