"""The HTTP face of a verifier (NeMo Gym resources-server protocol plus rollgate's additions).

    POST /seed_session   -> {}            sets the ``rollgate_session`` cookie, runs the seed hook
    POST /verify         -> body + reward + verify's fields
    POST /verify_batch   -> {"results": [...]} for {"requests": [verify body, ...]} (see ``_fastpath.py``)
    POST /<tool>         -> the tool's JSON answer (the body is its keyword arguments)
    POST /close_session  -> {}            runs the close hook, forgets the session
    POST /aggregate_metrics -> the server's ``aggregate_metrics(body)`` answer, else NeMo Gym's default
                            (``AggregateMetrics`` for ``{"verify_responses": [...]}``, see ``_aggregate.py``)
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
verify_batch, seed_session, close_session, a known tool) are answered by a pure ASGI layer before FastAPI
(``_fastpath.py``); the rest here. Both faces read bodies, call tools, map errors and stamp headers with the same
functions (``_wire.py``), so an answer does not depend on which face gave it.

    app = create_app("exact_match")        # or a LoadedVerifier, or a VerifierCore
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollgate.verifier._core import VerifierCore
from rollgate.verifier._fastpath import FastPath
from rollgate.verifier._isolation import VerifyLimits
from rollgate.verifier._loader import LoadedVerifier, load_target
from rollgate.verifier._metrics import VerifierMetrics
from rollgate.verifier._wire import (
    SESSION_COOKIE,
    Answer,
    ClientGone,
    error_answer,
    error_body,
    json_body,
    read_object,
    stamp,
    tool_answer,
)

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
    """Pure ASGI middleware (BaseHTTPMiddleware would add a task per request) stamping the FastAPI routes' answers
    (``X-Verifier-Version``, ``X-Rollgate-Session``, ``X-Rollgate-Verify-Batch``) as ``FastPath`` stamps its own.

    The version is read per response, so a hot reload that swaps ``core.loaded`` shows at once. ``FastPath``
    (``/verify`` labels its answer with the version that scored it) sits outside: its answers never come here.
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
                headers = stamp(list(message.get("headers", ())), self.core.version, self.core.session_mode)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


def _error(kind: str, message: str, status: int) -> Response:
    return Response(content=error_body(kind, message), status_code=status, media_type="application/json")


def _response(answer: Answer) -> Response:
    """A route's ``Answer`` as a starlette ``Response``; ``_VersionHeader`` stamps it on the way out."""
    status, body, headers, _, _ = answer
    response = Response(content=body, status_code=status, media_type="application/json")
    response.raw_headers.extend(headers)
    return response


def create_app(
    target: str | LoadedVerifier | VerifierCore,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    registry: CollectorRegistry | None = None,
    token: str | None = None,
    limits: VerifyLimits | None = None,
) -> FastAPI:
    """The FastAPI app serving ``target`` (a spec such as ``"exact_match"``, a loaded verifier, or a core).

    Metrics go to ``registry`` (a fresh one by default, so two apps in one process never collide). ``limits``
    (verify's time limit, pool sizes) applies when the core is built here; a core passed in has its own.
    """
    if isinstance(target, VerifierCore):
        core = target
    else:
        core = VerifierCore(load_target(target) if isinstance(target, str) else target, limits=limits)

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

    async def guard(endpoint: str, route: Awaitable[Answer]) -> Response:
        """Every route's errors become structured bodies here (as in ``FastPath``); nothing user-made reaches the
        client as a trace."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            answer = await route
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; like FastPath, not counted in the metrics
        except Exception as exc:
            answer, outcome = error_answer(exc, core)
        metrics.observe(endpoint, outcome, time.perf_counter() - started)
        return _response(answer)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(kind, message, exc.status_code)

    @app.get("/metrics")
    async def metrics_page() -> Response:
        # Read at scrape time, so a reload shows without the reloader knowing about metrics.
        metrics.show_loaded(core.name, core.version, core.load_error)
        return Response(content=generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    @app.get("/readyz")
    async def healthz() -> Response:
        return Response(content=json_body(core.health()), media_type="application/json")

    @app.post("/aggregate_metrics")
    async def aggregate_metrics(request: Request) -> Response:
        async def answer() -> Answer:
            body = await read_object(request.scope, request.receive, max_bytes=max_body_bytes, allow_empty=True)
            return 200, json_body(await core.aggregate_metrics(body)), [], core.version, core.session_mode

        return await guard("aggregate_metrics", answer())

    # Declared last: the fixed paths above take precedence over this catch-all.
    @app.post("/{tool_name}")
    async def call_tool(tool_name: str, request: Request) -> Response:
        # Only unknown tools reach this route (FastPath answers known ones), but through the same code.
        return await guard("tool", tool_answer(core, tool_name, request.scope, request.receive,
                                               max_bytes=max_body_bytes))

    return app
