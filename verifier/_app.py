"""The HTTP face of a verifier (NeMo Gym resources-server protocol plus rollgate's additions).

    POST /seed_session   -> {}            sets the ``rollgate_session`` cookie, runs the seed hook
    POST /verify         -> body + reward + verify's fields
    POST /verify_batch   -> {"results": [...]} for {"requests": [verify body, ...]} (see ``_fastpath.py``)
    POST /<tool>         -> the tool's JSON answer (the body is its keyword arguments)
    POST /close_session  -> {}            runs the close hook, forgets the session
    POST /aggregate_metrics -> the server's ``aggregate_metrics(body)`` answer (404 when it has none)
    GET  /healthz, /readyz -> {"status": "ok"|"load_error", "verifier", "version", "load_error", "reloads"}
    GET  /metrics        -> Prometheus exposition (requests by endpoint and outcome, durations, rewards, sessions,
                            loaded version, reloads)

With a ``token``, every protocol route needs ``Authorization: Bearer <token>`` (401 ``unauthorized``);
``/healthz``, ``/readyz`` and ``/metrics`` stay open for probes and scrapers.

Every answer, errors included, carries ``X-Verifier-Version``, ``X-Rollgate-Session: none|required`` (whether
a rollout must seed a session first; a gateway that sees ``none`` skips seed and close) and
``X-Rollgate-Verify-Batch: N`` (``/verify_batch`` takes up to N bodies). Errors are
``{"error": {"kind", "message"}}`` (kinds in ``verifier.errors``). Bodies are read as raw bytes and parsed with
orjson: a pydantic-typed body costs about half as much CPU again per rollout. The per-rollout routes (verify,
seed_session, close_session) are answered by a pure ASGI layer before FastAPI (``_fastpath.py``); the rest here.

    app = create_app("exact_match")        # or a LoadedVerifier, or a VerifierCore
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollgate.verifier._core import VerifierCore
from rollgate.verifier._fastpath import (
    BATCH_HEADER,
    SESSION_COOKIE,
    SESSION_HEADER,
    VERSION_HEADER,
    FastPath,
    error_body,
    failure,
    json_body,
    parse_body,
)
from rollgate.verifier._loader import LoadedVerifier, load_target
from rollgate.verifier._metrics import VerifierMetrics
from rollgate.verifier.errors import RequestTooLarge

__all__ = ["SESSION_COOKIE", "create_app"]

log = logging.getLogger("rollgate.verifier")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class _BearerToken:
    """Pure ASGI middleware: the protocol routes need the token; health and metrics do not."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):  # constant time: no token prefix guessing
            await self.app(scope, receive, send)
            return
        why = "missing" if not given else "wrong"
        response = _error("unauthorized", f"{why} bearer token (Authorization: Bearer <token>)", 401)
        await response(scope, receive, send)


class _VersionHeader:
    """Pure ASGI middleware (BaseHTTPMiddleware would add a task per request) adding ``X-Verifier-Version`` and
    ``X-Rollgate-Session`` to the answers that ``FastPath`` does not write itself.

    The version is read per response, so a hot reload that swaps ``core.loaded`` shows at once; ``/verify`` sets the
header itself to the version that scored it, so a request that straddles a reload is labelled truthfully.
    """

    def __init__(self, app: ASGIApp, core: VerifierCore) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                # /verify sets the version that scored the request itself; other answers get the current one.
                if not any(k == VERSION_HEADER for k, _ in headers):
                    headers.append((VERSION_HEADER, self.core.version.encode("latin-1")))
                headers.append((SESSION_HEADER, self.core.session_mode.encode("latin-1")))
                headers.append(BATCH_HEADER)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


def _json(value: Any, status: int = 200) -> Response:
    return Response(content=json_body(value), status_code=status, media_type="application/json")


def _error(kind: str, message: str, status: int) -> Response:
    return Response(content=error_body(kind, message), status_code=status, media_type="application/json")


async def _guarded(answer: Awaitable[Response]) -> tuple[Response, str]:
    """Every route's errors become structured bodies here; nothing user-made reaches the client as a trace."""
    try:
        return await answer, "ok"
    except Exception as exc:
        status, kind, message = failure(exc)
        return _error(kind, message, status), kind


async def _read_object(request: Request, *, max_bytes: int, allow_empty: bool) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge(f"body of {declared} bytes is over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:  # chunked bodies have no Content-Length to check up front
            raise RequestTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return parse_body(b"".join(chunks), allow_empty=allow_empty)


def create_app(
    target: str | LoadedVerifier | VerifierCore,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    registry: CollectorRegistry | None = None,
    token: str | None = None,
) -> FastAPI:
    """The FastAPI app serving ``target`` (a spec such as ``"exact_match"``, a loaded verifier, or a core).

    Metrics go to ``registry`` (a fresh one by default, so two apps in one process never collide).
    """
    if isinstance(target, VerifierCore):
        core = target
    else:
        core = VerifierCore(load_target(target) if isinstance(target, str) else target)

    app = FastAPI(title=f"rollgate verifier {core.name}", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = VerifierMetrics(registry)
    metrics.track_sessions(lambda: core.session_count)
    app.state.core = core
    app.state.metrics = metrics
    app.add_middleware(_VersionHeader, core=core)
    # Outside _VersionHeader: it writes its own headers, and the per-rollout routes skip FastAPI entirely.
    app.add_middleware(FastPath, core=core, metrics=metrics, max_body_bytes=max_body_bytes)
    if token:
        # Added last = outermost: a refused request never reaches the app, and (no version header) a caller
        # without the token learns nothing about the verifier.
        app.add_middleware(_BearerToken, token=token)

    async def guard(endpoint: str, answer: Awaitable[Response]) -> Response:
        started = time.perf_counter()
        response, outcome = await _guarded(answer)
        metrics.observe(endpoint, outcome, time.perf_counter() - started)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(kind, message, exc.status_code)

    async def read(request: Request, *, allow_empty: bool) -> dict[str, Any]:
        return await _read_object(request, max_bytes=max_body_bytes, allow_empty=allow_empty)

    @app.get("/metrics")
    async def metrics_page() -> Response:
        # Read at scrape time, so a reload shows without the reloader knowing about metrics.
        metrics.show_loaded(core.name, core.version, core.load_error)
        return Response(content=generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    @app.get("/readyz")
    async def healthz() -> Response:
        return _json(core.health())

    @app.post("/aggregate_metrics")
    async def aggregate_metrics(request: Request) -> Response:
        async def answer() -> Response:
            return _json(await core.aggregate_metrics(await read(request, allow_empty=True)))

        return await guard("aggregate_metrics", answer())

    # Declared last: the fixed paths above take precedence over this catch-all.
    @app.post("/{tool_name}")
    async def call_tool(tool_name: str, request: Request) -> Response:
        async def answer() -> Response:
            args = await read(request, allow_empty=True)
            return _json(await core.call_tool(tool_name, args, request.cookies.get(SESSION_COOKIE)))

        return await guard("tool", answer())

    return app
