"""Who may call what on the gRPC port: bearer tokens per service, TLS / mutual TLS credentials.

- ``rollgate.v1.Gateway``: needs ``authorization: Bearer <token>`` when a token is configured.
- ``rollgate.v1.GatewayAdmin``: needs the *admin* token; with no admin token configured it is refused entirely
  (PERMISSION_DENIED), so a gateway is never reconfigurable by accident.
- ``grpc.health.v1`` and reflection: always open (probes and ``grpcurl list`` carry no token).
Tokens are compared in constant time and never logged.

    server = grpc.aio.server(interceptors=[AuthInterceptor(token="t", admin_token=None), ...])
    server.add_secure_port(addr, server_credentials(cert, key, client_ca=None))
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from rollgate.gateway.errors import ConfigError

__all__ = ["AuthInterceptor", "server_credentials"]

log = logging.getLogger("rollgate.gateway.security")
_GATEWAY = "/rollgate.v1.Gateway/"
_ADMIN = "/rollgate.v1.GatewayAdmin/"


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, text: str) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, text)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(code, text)
        yield None  # pragma: no cover - abort raises; this line only makes the function a generator

    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary)
    if handler.stream_stream is not None:
        return handler._replace(stream_stream=streaming)
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=streaming)
    return handler._replace(stream_unary=unary)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks the bearer token of Gateway and GatewayAdmin calls; health and reflection pass untouched."""

    def __init__(self, *, token: str | None, admin_token: str | None) -> None:
        self._token = token.encode() if token else None
        self._admin = admin_token.encode() if admin_token else None

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = str(handler_call_details.method)
        if handler is None:
            return handler
        if method.startswith(_ADMIN):
            if self._admin is None:
                return _deny(handler, grpc.StatusCode.PERMISSION_DENIED,
                             "the admin API is disabled on this gateway (no admin token configured)")
            expected: bytes | None = self._admin
        elif method.startswith(_GATEWAY):
            expected = self._token
        else:
            return handler
        if expected is None:
            return handler
        given = _bearer(handler_call_details.invocation_metadata)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            log.warning("refused a call without a valid token", extra={"method": method})
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED,
                         "missing or invalid token (send 'authorization: Bearer <token>')")
        return handler


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials for the gRPC port; with ``client_ca`` clients must present a certificate it signed."""
    pair = (_read(key, "--tls-key"), _read(cert, "--tls-cert"))
    ca = _read(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
