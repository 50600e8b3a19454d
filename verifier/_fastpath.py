"""The per-rollout routes as one pure ASGI layer: ``POST /verify``, ``/verify_batch``, ``/seed_session``,
``/close_session`` and ``POST /<tool>`` for the tools the loaded verifier has.

These are on every rollout's path (tools on every step of a tool loop), and FastAPI's routing, dependency solving,
``Request``/``Response`` objects and ``http.cookies`` cost more CPU than the work itself (measured: ~0.28 ms of the
verifier's CPU per ``/verify`` through FastAPI). Here they are answered from the ASGI scope directly: the body read
as bytes, parsed once with orjson, the answer serialised once, headers written as bytes. Every other path (an
unknown tool, health, metrics, ``aggregate_metrics``, a wrong method) falls through to the FastAPI app unchanged.
A tool is looked up per request, so a hot reload that adds or removes one is seen at once.

The body reader, the session cookie, the tool route, the error mapping and the header stamp are ``_wire.py``'s,
shared with the FastAPI routes in ``_app.py``, so both faces keep one contract: errors as
``{"error": {"kind", "message"}}``, ``X-Verifier-Version`` (on ``/verify``, the version that scored it) and
``X-Rollgate-Session`` on every answer, the session in the ``rollgate_session`` cookie, request metrics by
endpoint and outcome.

``POST /verify_batch`` (rollgate's addition; ``X-Rollgate-Verify-Batch: N`` on every answer says it is there and
takes up to N) scores several ``/verify`` bodies in one request, for a gateway's rollouts that need no session:
``{"requests": [body, ...]}`` → ``{"results": [item, ...]}`` in the same order, each item
``{"status": 200, "version": V, "fields": {"reward": ..., ...}}`` (only what verify added: the gateway has the
body) or ``{"status": 4xx|5xx, "version": V, "error": {"kind", "message"}}``. One bad item fails alone; every item
counts as one ``verify`` request in the metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from rollgate.verifier._core import VerifierCore, json_type, session_mode
from rollgate.verifier._metrics import VerifierMetrics
from rollgate.verifier._wire import (
    DELETE_COOKIE,
    JSON_TYPE,
    MAX_VERIFY_BATCH,
    Answer,
    ClientGone,
    error_answer,
    failure,
    json_body,
    read_object,
    session_cookie,
    session_id,
    stamp,
    tool_answer,
)
from rollgate.verifier.errors import InvalidRequest, InvalidResult

__all__ = ["FastPath"]


def _error_item(status: int, kind: str, message: str, version: str, session: str) -> dict[str, Any]:
    """One failed ``/verify_batch`` result."""
    return {"status": status, "version": version, "session": session, "error": {"kind": kind, "message": message}}


_Route = Callable[[Scope, Receive], Awaitable[Answer]]


class FastPath:
    """Pure ASGI middleware answering the per-rollout routes itself; see the module docstring."""

    def __init__(self, app: ASGIApp, core: VerifierCore, metrics: VerifierMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.core = core
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._routes: dict[str, tuple[str, _Route]] = {
            "/verify": ("verify", self._verify),
            "/verify_batch": ("verify_batch", self._verify_batch),
            "/seed_session": ("seed_session", self._seed),
            "/close_session": ("close_session", self._close),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            route = self._routes.get(path)
            if route is None and path.count("/") == 1 and path[1:] in self.core.loaded.tools:
                route = ("tool", self._tool)
        if route is None:
            await self.app(scope, receive, send)
            return
        endpoint, answer = route
        started = time.perf_counter()
        outcome = "ok"
        try:
            status, body, headers, version, mode = await answer(scope, receive)
        except ClientGone:
            return
        except Exception as exc:
            (status, body, headers, version, mode), outcome = error_answer(exc, self.core)
        headers += (JSON_TYPE, (b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": stamp(headers, version, mode)})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(endpoint, outcome, time.perf_counter() - started)

    async def _read(self, scope: Scope, receive: Receive, *, allow_empty: bool) -> dict[str, Any]:
        return await read_object(scope, receive, max_bytes=self.max_body_bytes, allow_empty=allow_empty)

    async def _verify(self, scope: Scope, receive: Receive) -> Answer:
        body = await self._read(scope, receive, allow_empty=False)
        answer, loaded = await self.core.verify_loaded(body, session_id(scope))
        self.metrics.reward(answer["reward"])
        # Labelled with the version that scored it, even if a reload swapped another one in meanwhile.
        return 200, json_body(answer), [], loaded.version, session_mode(loaded)

    async def _verify_batch(self, scope: Scope, receive: Receive) -> Answer:
        body = await self._read(scope, receive, allow_empty=False)
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("the body needs 'requests': a non-empty list of /verify bodies")
        if len(items) > MAX_VERIFY_BATCH:
            raise InvalidRequest(f"{len(items)} requests in one batch; at most {MAX_VERIFY_BATCH}")
        session = session_id(scope)
        results = await asyncio.gather(*(self._batch_item(item, session) for item in items))
        try:
            answer = orjson.dumps({"results": results}, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:  # some verify returned what JSON cannot hold: fail those items alone
            answer = json_body({"results": [self._serialisable(r) for r in results]})
        return 200, answer, [], self.core.version, self.core.session_mode

    @staticmethod
    def _serialisable(item: dict[str, Any]) -> dict[str, Any]:
        try:
            json_body(item)
        except InvalidResult as exc:
            return _error_item(exc.status, exc.kind, exc.message, item["version"], item["session"])
        return item

    async def _batch_item(self, item: Any, session: str | None) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            if not isinstance(item, dict):
                raise InvalidRequest(f"each request must be a JSON object, got {json_type(item)}")
            fields, loaded = await self.core.verify_fields(item, session)
        except Exception as exc:
            status, kind, message = failure(exc)
            self.metrics.observe("verify", kind, time.perf_counter() - started)
            return _error_item(status, kind, message, self.core.version, self.core.session_mode)
        self.metrics.reward(fields["reward"])
        self.metrics.observe("verify", "ok", time.perf_counter() - started)
        return {"status": 200, "version": loaded.version, "session": session_mode(loaded), "fields": fields}

    async def _seed(self, scope: Scope, receive: Receive) -> Answer:
        session = await self.core.seed_session(await self._read(scope, receive, allow_empty=True))
        return 200, b"{}", [session_cookie(session.id)], self.core.version, self.core.session_mode

    async def _close(self, scope: Scope, receive: Receive) -> Answer:
        await self._read(scope, receive, allow_empty=True)  # drain it; the body carries nothing we need
        await self.core.close_session(session_id(scope))
        return 200, b"{}", [DELETE_COOKIE], self.core.version, self.core.session_mode

    def _tool(self, scope: Scope, receive: Receive) -> Awaitable[Answer]:
        # The shared route's coroutine itself: no extra frame on a tool loop's every step.
        return tool_answer(self.core, scope["path"][1:], scope, receive, max_bytes=self.max_body_bytes)
