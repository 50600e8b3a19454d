"""Channels to the gateway(s): addresses, TLS/mTLS, the bearer token, and the reconnect knobs of gRPC itself.

``+gateway`` is one ``HOST:PORT``, several comma-separated (one channel and one stream each: the work is spread
over them), or a ``dns:///name:port`` name (one channel with gRPC's ``round_robin`` policy over every address the
name resolves to, and several streams on it so the policy has calls to spread — a Kubernetes headless Service).

The token comes from ``ROLLGATE_TOKEN`` and travels as ``authorization: Bearer <token>`` metadata on every call;
it is never logged and never written to the manifest.

    endpoints = open_endpoints("10.0.0.1:50051,10.0.0.2:50051", TlsFiles(ca="ca.pem"))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from rollgate.collector.errors import UsageError

__all__ = ["DNS_STREAMS", "MAX_MESSAGE_BYTES", "Endpoint", "TlsFiles", "auth_metadata", "open_endpoints",
           "split_targets"]

TOKEN_ENV = "ROLLGATE_TOKEN"
# Streams opened on a dns:/// channel: round_robin balances per call, so one stream would pin one replica.
DNS_STREAMS = 4
# Responses with logprobs and long trajectories exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_BASE_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # gRPC's own reconnect backoff defaults to 1 s growing to 120 s: a restarted gateway would sit idle for
    # minutes. The collector runs its own bounded backoff on top, so keep the transport's short.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # A silently dead peer (node lost, network cut) is noticed within about a minute rather than never.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None


@dataclass
class Endpoint:
    """One channel and how many concurrent streams to run on it."""

    target: str
    channel: grpc.aio.Channel
    streams: int


def split_targets(address: str) -> list[str]:
    targets = [part.strip() for part in address.split(",") if part.strip()]
    if not targets:
        raise UsageError("gateway: no address given")
    return targets


def _read(key: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def _credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read("tls_ca", tls.ca),
        private_key=_read("tls_key", tls.key),
        certificate_chain=_read("tls_cert", tls.cert),
    )


def open_endpoints(address: str, tls: TlsFiles | None = None) -> list[Endpoint]:
    tls = tls or TlsFiles()
    creds = _credentials(tls) if tls.enabled else None
    endpoints = []
    for target in split_targets(address):
        options = list(_BASE_OPTIONS)
        streams = 1
        if target.startswith("dns:"):
            options.append(("grpc.lb_policy_name", "round_robin"))
            streams = DNS_STREAMS
        if creds is not None:
            channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        endpoints.append(Endpoint(target=target, channel=channel, streams=streams))
    return endpoints


def auth_metadata() -> tuple[tuple[str, str], ...]:
    token = os.environ.get(TOKEN_ENV)
    return (("authorization", f"Bearer {token}"),) if token else ()
