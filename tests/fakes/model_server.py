"""A fake OpenAI-compatible model: ``/v1/responses`` and ``/v1/chat/completions`` on 127.0.0.1.

The answer is driven by the LAST user message (see docs/INTERNALS.md):
- ``say: TEXT``          answer TEXT (to the end of that line); otherwise ``I don't know``
- ``tool: NAME {json}``  one line per call; while no tool output followed that message, answer with these
                         function calls (several lines = parallel calls); afterwards answer
                         ``tools said: <outputs joined by |>`` unless ``say:`` is given
- ``loop_tools``         always call the tools again (max_steps tests)
- ``fail_seed: N``       HTTP 400 ``{"error": {"message": "seed rejected"}}`` when the request's seed is N
- ``sleep: S``           wait S seconds first
- ``reason: TEXT``       include reasoning (chat: ``reasoning_content``; responses: a reasoning item)
- ``pad: N``             append a space and N ``x`` characters to the answer text (large results)
- ``choose: A|B|…``      answer one of the options: with a ``seed``, picked by a hash of (seed, message), so a
                         repeat with another seed may differ yet stays reproducible; without one, at random
It counts the requests in flight (``in_flight``, peak ``max_in_flight``). Knob
``faults=[(status, rate, retry_after), …]`` injects error answers at random (``served`` counts every status answered).
Token counts are word counts; a ``max_tokens``/``max_output_tokens`` below the answer's length cuts it
(finish_reason ``length`` / status ``incomplete``).

    async with FakeModelServer(latency_s=0.01) as fake:
        fake.base_url  # http://127.0.0.1:PORT/v1

Knob ``max_concurrent=K`` answers 429 at once to a request arriving while K are being answered (``refused``).

Also ``python -m tests.fakes.model_server --port P --latency-ms X`` for benchmarks (prints a ready JSON line;
``--max-concurrent K``, ``--fault 429:0.3``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any, Self

from aiohttp import web

from tests.fakes._serving import announce_and_wait, serve_app

__all__ = ["FakeModelServer", "Plan", "plan_reply"]

_ids = itertools.count(1)


class Plan:
    """What the fake will answer for one request (parsed from the conversation)."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.calls: list[tuple[str, str]] = []
        self.reasoning: str | None = None
        self.sleep_s = 0.0
        self.pad = 0
        self.fail_seed: int | None = None
        self.choices: list[str] = []
        self.user_text = ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _normalise(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Either API's conversation -> (kind, text): kind is user / assistant / tool_output / other."""
    out: list[tuple[str, str]] = []
    for m in messages:
        kind = m.get("type", "message")
        if kind == "function_call_output" or m.get("role") == "tool":
            out.append(("tool_output", _text(m.get("output", m.get("content")))))
        elif kind == "message" and m.get("role") == "user":
            out.append(("user", _text(m.get("content"))))
        else:
            out.append(("other", ""))
    return out


def plan_reply(messages: list[dict[str, Any]]) -> Plan:
    """Decide the reply from the conversation (either API's message shapes)."""
    plan = Plan()
    conv = _normalise(messages)
    last_user = max((i for i, (k, _) in enumerate(conv) if k == "user"), default=-1)
    user_text = conv[last_user][1] if last_user >= 0 else ""
    outputs = [t for k, t in conv[last_user + 1:] if k == "tool_output"]
    say: str | None = None
    tools: list[tuple[str, str]] = []
    loop = False
    for line in user_text.splitlines():
        line = line.strip()
        if m := re.search(r"say: (.*)$", line):
            say = m.group(1)
        if line.startswith("tool: "):
            name, _, args = line[len("tool: "):].partition(" ")
            tools.append((name, args.strip() or "{}"))
        elif line == "loop_tools":
            loop = True
        elif line.startswith("fail_seed: "):
            plan.fail_seed = int(line.split(":", 1)[1])
        elif line.startswith("sleep: "):
            plan.sleep_s = float(line.split(":", 1)[1])
        elif line.startswith("pad: "):
            plan.pad = int(line.split(":", 1)[1])
        elif line.startswith("reason: "):
            plan.reasoning = line[len("reason: "):]
        elif line.startswith("choose: "):
            plan.choices = [c.strip() for c in line[len("choose: "):].split("|") if c.strip()]
    plan.user_text = user_text
    if tools and (loop or not outputs):
        plan.calls = tools
    elif outputs and say is None:
        plan.text = "tools said: " + "|".join(outputs)
    elif say is None and plan.choices:
        plan.text = None  # decided per request in ``_check`` (it needs the seed)
    else:
        plan.text = say if say is not None else "I don't know"
    return plan


def _words(text: str) -> int:
    return len(text.split())


class FakeModelServer:
    """A real aiohttp model server on 127.0.0.1:0 with latency and fault knobs; records what it received."""

    def __init__(
        self,
        *,
        latency_s: float | Callable[[], float] = 0.0,
        fail_status: int | None = None,
        fail_rate: float = 1.0,
        supports_responses: bool = True,
        reported_model: str | None = None,
        seed: int = 0,
        port: int = 0,
        faults: list[tuple[int, float, str | None]] | None = None,
        max_concurrent: int | None = None,
    ) -> None:
        # Admission control: with this many requests being answered, another gets an immediate 429 (``refused``
        # counts them), as a server with a fixed number of slots would; None = unbounded.
        self.max_concurrent = max_concurrent
        self.refused = 0
        self.latency_s = latency_s
        self.fail_status = fail_status
        self.fail_rate = fail_rate
        # (status, probability, Retry-After value or None): one draw per request picks at most one fault.
        self.faults = faults or []
        # Every status answered (faults, 200s, 400s ...), so tests can compare with what the client counted.
        self.served: Counter[int] = Counter()
        self.supports_responses = supports_responses
        self.reported_model = reported_model
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.cancelled = 0
        # Requests being answered now, and the most ever at once (what a gateway's concurrency limits bound).
        self.in_flight = 0
        self.max_in_flight = 0
        self._rng = random.Random(seed)
        self._port = port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._count_cancelled])
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, port = await serve_app(app, self._port)  # a cancelled request counts in ``cancelled``
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _count_cancelled(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            self.refused += 1
            self.served[429] += 1
            return web.json_response({"error": {"message": f"all {self.max_concurrent} slots busy"}}, status=429)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            resp: web.StreamResponse = await handler(request)
            self.served[resp.status] += 1
            return resp
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _prelude(self, request: web.Request, path: str) -> tuple[dict[str, Any], web.Response | None]:
        self.requests[path] += 1
        body: dict[str, Any] = await request.json()
        self.bodies.append(body)
        del self.bodies[:-200]  # the last bodies are enough for assertions
        self.headers.append(dict(request.headers))
        del self.headers[:-200]
        delay = self.latency_s() if callable(self.latency_s) else self.latency_s
        if delay:
            await asyncio.sleep(delay)
        if self.fail_status is not None and self._rng.random() < self.fail_rate:
            return body, web.json_response({"error": {"message": "injected failure"}}, status=self.fail_status)
        if self.faults:
            draw = self._rng.random()
            for status, rate, retry_after in self.faults:
                if draw < rate:
                    headers = {"Retry-After": retry_after} if retry_after is not None else None
                    return body, web.json_response({"error": {"message": f"injected {status}"}}, status=status,
                                                   headers=headers)
                draw -= rate
        return body, None

    async def _check(self, plan: Plan, body: dict[str, Any]) -> web.Response | None:
        if plan.text is None and not plan.calls and plan.choices:
            seed = body.get("seed")
            if isinstance(seed, int):
                plan.text = plan.choices[zlib.crc32(f"{seed}:{plan.user_text}".encode()) % len(plan.choices)]
            else:
                plan.text = self._rng.choice(plan.choices)
        if plan.pad and plan.text is not None:
            plan.text += " " + "x" * plan.pad
        if plan.sleep_s:
            await asyncio.sleep(plan.sleep_s)
        if plan.fail_seed is not None and body.get("seed") == plan.fail_seed:
            return web.json_response({"error": {"message": "seed rejected"}}, status=400)
        return None

    @staticmethod
    def _cut(text: str, limit: Any) -> tuple[str, bool]:
        if isinstance(limit, int) and _words(text) > limit:
            return " ".join(text.split()[:limit]), True
        return text, False

    async def _responses(self, request: web.Request) -> web.Response:
        body, fail = await self._prelude(request, "/v1/responses")
        if not self.supports_responses:
            return web.json_response({"error": {"message": "Not Found"}}, status=404)
        if fail is not None:
            return fail
        inp = body.get("input", "")
        items = [{"role": "user", "content": inp}] if isinstance(inp, str) else list(inp)
        plan = plan_reply(items)
        if (err := await self._check(plan, body)) is not None:
            return err
        n = next(_ids)
        output: list[dict[str, Any]] = []
        if plan.reasoning:
            output.append({"type": "reasoning", "id": f"rs_{n}", "summary": [],
                           "content": [{"type": "reasoning_text", "text": plan.reasoning}]})
        cut = False
        if plan.text is not None:
            text, cut = self._cut(plan.text, body.get("max_output_tokens"))
            output.append({"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": text, "annotations": []}]})
        for i, (name, args) in enumerate(plan.calls):
            output.append({"type": "function_call", "id": f"fc_{n}_{i}", "call_id": f"call_{n}_{i}",
                           "name": name, "arguments": args, "status": "completed"})
        in_tokens = sum(_words(json.dumps(x)) for x in items)
        out_tokens = _words(plan.text or "") + len(plan.calls)
        return web.json_response({
            "id": f"resp_{n}", "object": "response", "created_at": int(time.time()),
            "model": self.reported_model or body.get("model"), "output": output,
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens,
                      "total_tokens": in_tokens + out_tokens},
        })

    async def _chat(self, request: web.Request) -> web.Response:
        body, fail = await self._prelude(request, "/v1/chat/completions")
        if fail is not None:
            return fail
        messages = list(body.get("messages", []))
        plan = plan_reply(messages)
        if (err := await self._check(plan, body)) is not None:
            return err
        n = next(_ids)
        message: dict[str, Any] = {"role": "assistant", "content": None}
        finish = "stop"
        if plan.text is not None:
            text, cut = self._cut(plan.text, body.get("max_tokens"))
            message["content"] = text
            finish = "length" if cut else "stop"
        if plan.reasoning:
            message["reasoning_content"] = plan.reasoning
        if plan.calls:
            message["tool_calls"] = [
                {"id": f"call_{n}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(plan.calls)
            ]
            finish = "tool_calls"
        in_tokens = sum(_words(json.dumps(m)) for m in messages)
        out_tokens = _words(message["content"] or "") + len(plan.calls)
        return web.json_response({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": self.reported_model or body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": in_tokens, "completion_tokens": out_tokens,
                      "total_tokens": in_tokens + out_tokens},
        })


def latency_distribution(latency_ms: float, dist: str, sigma: float = 1.0) -> float | Callable[[], float]:
    """A fixed latency, or a long-tailed one: lognormal with median ``latency_ms`` (sigma 1: p99 ~ 10x median)."""
    if dist == "fixed" or latency_ms <= 0:
        return latency_ms / 1000.0
    if dist == "lognormal":
        mu = math.log(latency_ms / 1000.0)
        return lambda: random.lognormvariate(mu, sigma)
    raise ValueError(f"unknown latency distribution {dist!r} (fixed or lognormal)")


async def _serve(port: int, latency: float | Callable[[], float], max_concurrent: int | None = None,
                 faults: list[tuple[int, float, str | None]] | None = None) -> None:
    async with FakeModelServer(latency_s=latency, port=port, max_concurrent=max_concurrent, faults=faults) as fake:
        await announce_and_wait("fake_model", fake.base_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.model_server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed latency, or the median of --latency-dist")
    parser.add_argument("--latency-dist", choices=["fixed", "lognormal"], default="fixed")
    parser.add_argument("--max-concurrent", type=int, default=None, help="answer 429 at once above this many")
    parser.add_argument("--fault", action="append", default=[], metavar="STATUS:RATE",
                        help="answer STATUS to this share of requests, at random (repeatable)")
    args = parser.parse_args(argv)
    faults: list[tuple[int, float, str | None]] = [(int(f.split(":")[0]), float(f.split(":")[1]), None)
                                                   for f in args.fault]
    try:  # as a process (benchmarks), the fake runs on uvloop when it can, like the services it stands beside
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(args.port, latency_distribution(args.latency_ms, args.latency_dist), args.max_concurrent,
                          faults))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
