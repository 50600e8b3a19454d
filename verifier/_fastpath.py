"""The per-rollout routes as one pure ASGI layer: ``POST /verify``, ``/verify_batch``, ``/seed_session``,
``/close_session`` and ``POST /<tool>`` for the tools the loaded verifier has.

These are on every rollout's path (tools on every step of a tool loop), and FastAPI's routing, dependency solving, ``Request``/``Response``
objects and ``http.cookies`` cost more CPU than the work itself (measured: ~0.28 ms of the verifier's CPU per
``/verify`` through FastAPI). Here they are answered from the ASGI scope directly: the body read as bytes, parsed
once with orjson, the answer serialised once, headers written as bytes. Every other path (an unknown tool, health,
metrics, ``aggregate_metrics``, a wrong method) falls through to the FastAPI app unchanged. A tool is looked up
per request, so a hot reload that adds or removes one is seen at once.

The behaviour is the same contract as the rest of ``_app.py``: errors as ``{"error": {"kind", "message"}}``,
``X-Verifier-Version`` (on ``/verify``, the version that scored it) and ``X-Rollgate-Session`` on every answer,
the session in the ``rollgate_session`` cookie, request metrics by endpoint and outcome.

``POST /verify_batch`` (rollgate's addition; ``X-Rollgate-Verify-Batch: N`` on every answer says it is there and
takes up to N) scores several ``/verify`` bodies in one request, for a gateway's rollouts that need no session:
``{"requests": [body, ...]}`` → ``{"results": [item, ...]}`` in the same order, each item
``{"status": 200, "version": V, "fields": {"reward": ..., ...}}`` (only what verify added: the gateway has the
body) or ``{"status": 4xx|5xx, "version": V, "error": {"kind", "message"}}``. One bad item fails alone; every item
counts as one ``verify`` request in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from rollgate.verifier._core import VerifierCore, json_type, session_mode
from rollgate.verifier._metrics import VerifierMetrics
from rollgate.verifier.errors import InvalidRequest, InvalidResult, RequestError, RequestTooLarge

__all__ = ["BATCH_HEADER", "MAX_VERIFY_BATCH", "SESSION_COOKIE", "SESSION_HEADER", "VERSION_HEADER", "FastPath",
           "error_body", "failure", "json_body"]

log = logging.getLogger("rollgate.verifier")

SESSION_COOKIE = "rollgate_session"
VERSION_HEADER = b"x-verifier-version"
# ``none``: this verifier needs no session, a client may skip /seed_session and /close_session. ``required``: it
# does. Sent on every answer, so a client learns of a hot reload that changes it from the next answer it gets.
SESSION_HEADER = b"x-rollgate-session"
# How many bodies one ``/verify_batch`` takes; advertised on every answer.
MAX_VERIFY_BATCH = 1024
BATCH_HEADER = (b"x-rollgate-verify-batch", str(MAX_VERIFY_BATCH).encode("latin-1"))
_JSON_TYPE = (b"content-type", b"application/json")
# What starlette's ``set_cookie(..., httponly=True, samesite="lax")`` / ``delete_cookie`` write, without going
# through ``http.cookies`` (session ids are URL-safe tokens: nothing to quote).
_DELETE_COOKIE = (
    f'{SESSION_COOKIE}=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Max-Age=0; Path=/; SameSite=lax'
).encode("latin-1")

Headers = list[tuple[bytes, bytes]]


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


def json_body(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        raise InvalidResult(f"the answer is not JSON-serialisable: {exc}") from exc


def error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"error": {"kind": kind, "message": message}})


def _session_id(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, _, val = part.strip().partition("=")
                if name == SESSION_COOKIE:
                    return val.strip('"') or None
    return None


async def _read_object(scope: Scope, receive: Receive, *, max_bytes: int, allow_empty: bool) -> dict[str, Any]:
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise RequestTooLarge(f"body of {int(value)} bytes is over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:  # chunked bodies have no Content-Length to check up front
            raise RequestTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return parse_body(chunks[0] if len(chunks) == 1 else b"".join(chunks), allow_empty=allow_empty)


def parse_body(raw: bytes, *, allow_empty: bool) -> dict[str, Any]:
    """A request body as a JSON object (``{}`` for an empty one where allowed), or an ``InvalidRequest``."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidRequest("empty body; expected a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"body must be a JSON object, got {json_type(value)}")
    return value


def failure(exc: Exception) -> tuple[int, str, str]:
    """The status, kind and message that answer ``exc``; what the operator must see goes to the log."""
    if isinstance(exc, RequestError):
        if exc.status >= 500:
            log.warning("%s: %s", exc.kind, exc.message)
        return exc.status, exc.kind, exc.message
    log.error("internal error", exc_info=exc)
    return 500, "internal", "internal error in the verifier server; see its log"


def _error_item(status: int, kind: str, message: str, version: str, session: str) -> dict[str, Any]:
    """One failed ``/verify_batch`` result."""
    return {"status": status, "version": version, "session": session, "error": {"kind": kind, "message": message}}


# A route: (scope, receive) -> (status, body, extra headers, version, session mode)
_Answer = tuple[int, bytes, Headers, str, str]
_Route = Callable[[Scope, Receive], Awaitable[_Answer]]


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
        except _ClientGone:
            return
        except Exception as exc:
            status, outcome, message = failure(exc)
            body, headers = error_body(outcome, message), []
            version, mode = self.core.version, self.core.session_mode
        headers += [
            _JSON_TYPE,
            (b"content-length", b"%d" % len(body)),
            (VERSION_HEADER, version.encode("latin-1")),
            (SESSION_HEADER, mode.encode("latin-1")),
            BATCH_HEADER,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(endpoint, outcome, time.perf_counter() - started)

    async def _read(self, scope: Scope, receive: Receive, *, allow_empty: bool) -> dict[str, Any]:
        return await _read_object(scope, receive, max_bytes=self.max_body_bytes, allow_empty=allow_empty)

    async def _verify(self, scope: Scope, receive: Receive) -> _Answer:
        body = await self._read(scope, receive, allow_empty=False)
        answer, loaded = await self.core.verify_loaded(body, _session_id(scope))
        self.metrics.reward(answer["reward"])
        # Labelled with the version that scored it, even if a reload swapped another one in meanwhile.
        return 200, json_body(answer), [], loaded.version, session_mode(loaded)

    async def _verify_batch(self, scope: Scope, receive: Receive) -> _Answer:
        body = await self._read(scope, receive, allow_empty=False)
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("the body needs 'requests': a non-empty list of /verify bodies")
        if len(items) > MAX_VERIFY_BATCH:
            raise InvalidRequest(f"{len(items)} requests in one batch; at most {MAX_VERIFY_BATCH}")
        session_id = _session_id(scope)
        results = await asyncio.gather(*(self._batch_item(item, session_id) for item in items))
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

    async def _batch_item(self, item: Any, session_id: str | None) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            if not isinstance(item, dict):
                raise InvalidRequest(f"each request must be a JSON object, got {json_type(item)}")
            fields, loaded = await self.core.verify_fields(item, session_id)
        except Exception as exc:
            status, kind, message = failure(exc)
            self.metrics.observe("verify", kind, time.perf_counter() - started)
            return _error_item(status, kind, message, self.core.version, self.core.session_mode)
        self.metrics.reward(fields["reward"])
        self.metrics.observe("verify", "ok", time.perf_counter() - started)
        return {"status": 200, "version": loaded.version, "session": session_mode(loaded), "fields": fields}

    async def _seed(self, scope: Scope, receive: Receive) -> _Answer:
        session = await self.core.seed_session(await self._read(scope, receive, allow_empty=True))
        cookie = f"{SESSION_COOKIE}={session.id}; HttpOnly; Path=/; SameSite=lax".encode("latin-1")
        return 200, b"{}", [(b"set-cookie", cookie)], self.core.version, self.core.session_mode

    async def _close(self, scope: Scope, receive: Receive) -> _Answer:
        await self._read(scope, receive, allow_empty=True)  # drain it; the body carries nothing we need
        await self.core.close_session(_session_id(scope))
        return 200, b"{}", [(b"set-cookie", _DELETE_COOKIE)], self.core.version, self.core.session_mode

    async def _tool(self, scope: Scope, receive: Receive) -> _Answer:
        args = await self._read(scope, receive, allow_empty=True)
        result = await self.core.call_tool(scope["path"][1:], args, _session_id(scope))
        return 200, json_body(result), [], self.core.version, self.core.session_mode
