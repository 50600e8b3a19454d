"""A fake resources/verifier server (NeMo Gym protocol) on 127.0.0.1, with session cookies.

- ``POST /seed_session``  sets cookie ``session_id`` (unique per session)
- ``POST /add``           ``{a, b}`` -> ``{"sum": a + b}``
- ``POST /whoami``        -> ``{"session_id": <the cookie it received>}``
- ``POST /boom``          -> HTTP 500
- ``POST /verify``        reward 1.0 if the last assistant text equals ``expected_answer`` (case-insensitive),
                          answers the request body plus ``reward`` and ``accuracy``; header X-Verifier-Version
- ``POST /close_session`` (unless ``has_close_session=False``: then 404, like third-party servers)

Knobs: ``port`` (fixed, so a test can restart the server on the same address), ``token`` (bearer token
required), ``version``, ``reward``, ``verify_status``, ``tool_latency_s``, ``extra_headers`` (on every
answer: e.g. a rollgate verifier's ``X-Rollgate-Session`` / ``X-Rollgate-Verify-Batch``, to test a
server that claims what it cannot do; ``/verify_batch`` itself is answered 404 unless ``batch_status`` is set,
then with that status and an error body).

It records, per tool call, the session id it saw (``calls``), the verify bodies with their session id
(``verified``), and the peak number of tool calls in flight (``max_in_flight``).

    async with FakeResourcesServer(tool_latency_s=0.05) as rs:
        rs.url  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any, Self

from aiohttp import web

__all__ = ["FakeResourcesServer", "final_text"]

_UNSET = object()


def final_text(response: dict[str, Any]) -> str:
    """The text of the last assistant message in a Responses object's output."""
    for item in reversed(response.get("output", [])):
        if item.get("type") == "message":
            return "".join(p.get("text", "") for p in item.get("content", []) if isinstance(p, dict))
    return ""


class FakeResourcesServer:
    """A real aiohttp resources server on 127.0.0.1:0."""

    def __init__(
        self,
        *,
        version: str | None = "fake-1",
        tool_latency_s: float = 0.0,
        reward: Any = _UNSET,
        verify_status: int = 200,
        verify_raw: bytes | None = None,
        has_close_session: bool = True,
        port: int = 0,
        token: str | None = None,
        extra_headers: dict[str, str] | None = None,
        batch_status: int | None = None,
    ) -> None:
        self.port = port
        self.extra_headers = extra_headers or {}
        self.batch_status = batch_status
        # When set, every route needs ``Authorization: Bearer <token>`` (401 otherwise), like a real verifier.
        self.token = token
        self.unauthorised = 0
        self.version = version
        self.tool_latency_s = tool_latency_s
        self.reward = reward
        self.verify_status = verify_status
        self.verify_raw = verify_raw
        self.has_close_session = has_close_session
        self.requests: Counter[str] = Counter()
        self.calls: list[tuple[str, str | None]] = []
        self.verified: list[tuple[str | None, dict[str, Any]]] = []
        self.closed: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/seed_session", self._seed)
        app.router.add_post("/verify", self._verify)
        app.router.add_post("/close_session", self._close)
        app.router.add_post("/add", self._add)
        app.router.add_post("/whoami", self._whoami)
        app.router.add_post("/boom", self._boom)
        if self.batch_status is not None:
            app.router.add_post("/verify_batch", self._verify_batch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorised += 1
            return web.json_response({"error": {"kind": "unauthorised", "message": "bad token"}}, status=401)
        resp: web.StreamResponse = await handler(request)
        resp.headers.update(self.extra_headers)
        return resp

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _headers(self) -> dict[str, str]:
        return {"X-Verifier-Version": self.version} if self.version else {}

    async def _verify_batch(self, request: web.Request) -> web.Response:
        self.requests["verify_batch"] += 1
        assert self.batch_status is not None
        return web.json_response({"error": {"kind": "exception", "message": "batch refused"}},
                                 status=self.batch_status, headers=self._headers())

    async def _seed(self, request: web.Request) -> web.Response:
        self.requests["seed_session"] += 1
        resp = web.json_response({})
        resp.set_cookie("session_id", f"s{next(self._ids)}")
        return resp

    async def _tool(self, request: web.Request, name: str) -> tuple[dict[str, Any], str | None]:
        self.requests[name] += 1
        sid = request.cookies.get("session_id")
        self.calls.append((name, sid))
        body: dict[str, Any] = await request.json()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.tool_latency_s:
                await asyncio.sleep(self.tool_latency_s)
        finally:
            self.in_flight -= 1
        return body, sid

    async def _add(self, request: web.Request) -> web.Response:
        body, _ = await self._tool(request, "add")
        return web.json_response({"sum": body["a"] + body["b"]})

    async def _whoami(self, request: web.Request) -> web.Response:
        _, sid = await self._tool(request, "whoami")
        return web.json_response({"session_id": sid})

    async def _boom(self, request: web.Request) -> web.Response:
        await self._tool(request, "boom")
        return web.json_response({"error": {"kind": "exception", "message": "boom"}}, status=500)

    async def _verify(self, request: web.Request) -> web.Response:
        self.requests["verify"] += 1
        body: dict[str, Any] = await request.json()
        self.verified.append((request.cookies.get("session_id"), body))
        if self.verify_raw is not None:
            return web.Response(body=self.verify_raw, status=self.verify_status, headers=self._headers())
        if self.verify_status >= 400:
            return web.json_response({"error": {"kind": "exception", "message": "verify failed"}},
                                     status=self.verify_status, headers=self._headers())
        expected = str(body.get("expected_answer", ""))
        ok = final_text(body["response"]).strip().lower() == expected.strip().lower()
        reward = self.reward if self.reward is not _UNSET else (1.0 if ok else 0.0)
        return web.json_response({**body, "reward": reward, "accuracy": ok}, headers=self._headers())

    async def _close(self, request: web.Request) -> web.Response:
        self.requests["close_session"] += 1
        if not self.has_close_session:
            return web.json_response({"detail": "Not Found"}, status=404)
        self.closed.append(request.cookies.get("session_id"))
        return web.json_response({})
