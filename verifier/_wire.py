"""The verifier's wire, once: what both HTTP faces (the ASGI fast path in ``_fastpath.py`` and the FastAPI routes
in ``_app.py``) use to read a body, find the session, call a tool, turn an exception into an error body and stamp
the headers every answer carries.

    args = await read_object(scope, receive, max_bytes=1 << 20, allow_empty=True)   # a dict, or a RequestError
    status, body, headers, version, mode = await tool_answer(core, "add", scope, receive, max_bytes=1 << 20)
    stamp(headers, version, mode)       # X-Verifier-Version, X-Rollgate-Session, X-Rollgate-Verify-Batch

Everything works on the ASGI ``scope``/``receive`` and on bytes, so the fast path pays for no ``Request`` object
and the FastAPI routes pass ``request.scope`` and ``request.receive``. Errors are ``{"error": {"kind",
"message"}}`` with the status of the ``RequestError`` raised (kinds in ``verifier.errors``); anything else is a
500 ``internal`` whose details go to the log only.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.types import Receive, Scope

from rollgate.verifier._core import VerifierCore, json_type
from rollgate.verifier.errors import InvalidRequest, InvalidResult, RequestError, RequestTooLarge

__all__ = ["BATCH_HEADER", "DELETE_COOKIE", "JSON_TYPE", "MAX_VERIFY_BATCH", "SESSION_COOKIE", "SESSION_HEADER",
           "VERSION_HEADER", "Answer", "ClientGone", "Headers", "error_answer", "error_body", "failure", "json_body",
           "parse_body", "read_object", "session_cookie", "session_id", "stamp", "tool_answer"]

log = logging.getLogger("rollgate.verifier")

SESSION_COOKIE = "rollgate_session"
VERSION_HEADER = b"x-verifier-version"
# ``none``: this verifier needs no session, a client may skip /seed_session and /close_session. ``required``: it
# does. Sent on every answer, so a client learns of a hot reload that changes it from the next answer it gets.
SESSION_HEADER = b"x-rollgate-session"
# How many bodies one ``/verify_batch`` takes; advertised on every answer.
MAX_VERIFY_BATCH = 1024
BATCH_HEADER = (b"x-rollgate-verify-batch", str(MAX_VERIFY_BATCH).encode("latin-1"))
JSON_TYPE = (b"content-type", b"application/json")
# What starlette's ``set_cookie(..., httponly=True, samesite="lax")`` / ``delete_cookie`` write, without going
# through ``http.cookies`` (session ids are URL-safe tokens: nothing to quote).
_EXPIRED = f'{SESSION_COOKIE}=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Max-Age=0; Path=/; SameSite=lax'
DELETE_COOKIE = (b"set-cookie", _EXPIRED.encode("latin-1"))

Headers = list[tuple[bytes, bytes]]
# What a route answers: (status, body, extra headers, version, session mode). The version and mode are the ones
# that answered (``/verify`` pins the version that scored it, even if a reload swapped another one in meanwhile).
Answer = tuple[int, bytes, Headers, str, str]


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


def json_body(value: Any) -> bytes:
    """``value`` as JSON bytes, or ``InvalidResult`` when user code returned something JSON cannot hold."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        raise InvalidResult(f"the answer is not JSON-serialisable: {exc}") from exc


def error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"error": {"kind": kind, "message": message}})


def failure(exc: Exception) -> tuple[int, str, str]:
    """The status, kind and message that answer ``exc``; what the operator must see goes to the log."""
    if isinstance(exc, RequestError):
        if exc.status >= 500:
            log.warning("%s: %s", exc.kind, exc.message)
        return exc.status, exc.kind, exc.message
    log.error("internal error", exc_info=exc)
    return 500, "internal", "internal error in the verifier server; see its log"


def error_answer(exc: Exception, core: VerifierCore) -> tuple[Answer, str]:
    """The ``Answer`` to a route that raised ``exc``, and its outcome (the error kind) for the metrics."""
    status, kind, message = failure(exc)
    return (status, error_body(kind, message), [], core.version, core.session_mode), kind


def stamp(headers: Headers, version: str, mode: str) -> Headers:
    """Append the headers every answer carries (``headers`` is changed in place and returned)."""
    headers += ((VERSION_HEADER, version.encode("latin-1")), (SESSION_HEADER, mode.encode("latin-1")), BATCH_HEADER)
    return headers


def session_id(scope: Scope) -> str | None:
    """The ``rollgate_session`` cookie's value, or None; read from the raw headers (no ``http.cookies``)."""
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, _, val = part.strip().partition("=")
                if name == SESSION_COOKIE:
                    return val.strip('"') or None
    return None


def session_cookie(session_id: str) -> tuple[bytes, bytes]:
    """The ``Set-Cookie`` header that hands a new session to the client."""
    return b"set-cookie", f"{SESSION_COOKIE}={session_id}; HttpOnly; Path=/; SameSite=lax".encode("latin-1")


async def read_object(scope: Scope, receive: Receive, *, max_bytes: int, allow_empty: bool) -> dict[str, Any]:
    """The request body as a JSON object; ``RequestTooLarge`` over ``max_bytes``, ``ClientGone`` on disconnect."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise RequestTooLarge(f"body of {int(value)} bytes is over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
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


async def tool_answer(core: VerifierCore, name: str, scope: Scope, receive: Receive, *, max_bytes: int) -> Answer:
    """``POST /<name>``: the body as the tool's keyword arguments, the session from the cookie, the tool's JSON
    answer; an unknown tool is ``UnknownTool`` (404), a failing one ``ToolFailed`` (500)."""
    args = await read_object(scope, receive, max_bytes=max_bytes, allow_empty=True)
    result = await core.call_tool(name, args, session_id(scope))
    return 200, json_body(result), [], core.version, core.session_mode
