"""The gRPC server: ``Gateway`` + ``grpc.health.v1`` + reflection, and the one place errors become statuses.

``create_server`` binds and starts (tests bind ``127.0.0.1:0``); ``gateway._serve`` is what
``rollgate gateway serve`` runs around it.

    async with GatewayCore(cfg) as core:
        server, port = await create_server(cfg, core=core)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rollgate.gateway._admin import AdminServicer
from rollgate.gateway._agent import GatewayCore
from rollgate.gateway._config import GatewayConfig
from rollgate.gateway._security import AuthInterceptor, server_credentials
from rollgate.gateway._servicer import MAX_MESSAGE_BYTES, MAX_STREAM_ROLLOUTS, GatewayServicer
from rollgate.gateway.errors import ConfigError, InputError, UnknownAgentError
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc

__all__ = ["MAX_MESSAGE_BYTES", "Security", "create_server"]

log = logging.getLogger("rollgate.gateway.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Gateway"].full_name
ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GatewayAdmin"].full_name
_background: set[asyncio.Task[None]] = set()


def _status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The only mapping from exceptions to gRPC status; anything unforeseen is INTERNAL with a generic text."""
    if isinstance(exc, UnknownAgentError):
        return grpc.StatusCode.NOT_FOUND, exc.message
    if isinstance(exc, InputError | ConfigError | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, ConnectionError):
        return grpc.StatusCode.UNAVAILABLE, "a backend is unavailable"
    return grpc.StatusCode.INTERNAL, "internal gateway error (details in the gateway log)"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str) -> None:
    code, text = _status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        # Type and message only (the JSON formatter never writes tracebacks): no locals, no secrets.
        log.error("%s failed", method, exc_info=exc, extra={"method": method})
    await context.abort(code, text)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns an exception escaping any handler into a gRPC status via ``_status_for``."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = str(handler_call_details.method)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, method))
        return handler


def _wrap_unary(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)
    return wrapper


def _wrap_stream(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)
    return wrapper


@dataclass(slots=True)
class Security:
    """Tokens and TLS files for the gRPC port (all optional).

        security = Security(token=os.environ["ROLLGATE_TOKEN"], tls_cert="tls.crt", tls_key="tls.key")
        server, port = await create_server(cfg, "0.0.0.0:50051", security=security)
    """

    token: str | None = None
    admin_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None


async def create_server(
    config: GatewayConfig, address: str = "127.0.0.1:0", *, core: GatewayCore | None = None,
    security: Security | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_stream_rollouts: int = MAX_STREAM_ROLLOUTS,
) -> tuple[grpc.aio.Server, int]:
    """Build, bind and start the gateway's gRPC server; returns it and the bound port.

    Pass ``core`` (an entered ``GatewayCore``) to own its lifetime; without it a core is created here and
    closed when the server terminates. ``security`` adds tokens and TLS (mutual TLS with ``tls_client_ca``).
    ``max_stream_rollouts`` bounds what one Collect stream holds before it stops reading (backpressure).
    """
    sec = security or Security()
    if bool(sec.tls_cert) != bool(sec.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    if sec.tls_client_ca and not sec.tls_cert:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key as well")
    credentials = server_credentials(sec.tls_cert, sec.tls_key, sec.tls_client_ca) if sec.tls_cert and sec.tls_key \
        else None
    owned = core is None
    if core is None:
        core = GatewayCore(config)
        await core.start()
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes)]
    # Auth first: an unauthenticated call never reaches a handler (nor the error mapping's logs).
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(token=sec.token, admin_token=sec.admin_token), ErrorMappingInterceptor()],
        options=options)
    servicer = GatewayServicer(core, max_message_bytes=max_message_bytes, max_stream_rollouts=max_stream_rollouts)
    pb_grpc.add_GatewayServicer_to_server(servicer, server)
    pb_grpc.add_GatewayAdminServicer_to_server(AdminServicer(core), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, ADMIN_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        await server.start()
    except BaseException:
        if owned:
            await core.aclose()
        raise
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def not_serving_on_drain(c: GatewayCore = core) -> None:
        await c.draining.wait()
        await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

    _spawn(not_serving_on_drain(), server)
    if owned:
        async def close_when_done(c: GatewayCore = core) -> None:
            await server.wait_for_termination()
            await c.aclose()
        _spawn(close_when_done(), None)
    return server, port


def _spawn(coro: Coroutine[Any, Any, None], server: grpc.aio.Server | None) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    if server is not None:
        async def cancel_on_stop() -> None:
            try:
                await server.wait_for_termination()
            finally:
                task.cancel()
        watcher = asyncio.create_task(cancel_on_stop())
        _background.add(watcher)
        watcher.add_done_callback(_background.discard)
