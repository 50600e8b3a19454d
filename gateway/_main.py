"""``rollgate gateway serve …`` (run a gateway) and ``rollgate gateway set AGENT …`` (change its routing).

Flags follow docs/INTERNALS.md "Command-line contract" exactly; both ``--key value`` and ``+key=value`` work.
Secrets are only ever read from environment variables named by flags, never passed on the command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Literal

from pydantic import BaseModel, Field

from rollgate._cli import parse_cli, run_cli
from rollgate.gateway._config import load_config
from rollgate.gateway._logging import setup_logging
from rollgate.gateway._serve import ServeOptions, serve
from rollgate.gateway._server import Security
from rollgate.gateway._servicer import MAX_STREAM_ROLLOUTS
from rollgate.gateway._set import SetArgs, run_set
from rollgate.gateway.errors import ConfigError

__all__ = ["ServeArgs", "main"]

USAGE = """\
usage: rollgate gateway serve --config PATH [--host 127.0.0.1] [--port 50051] [--metrics-port 9090]
                               [--token-env ROLLGATE_TOKEN] [--admin-token-env ROLLGATE_ADMIN_TOKEN]
                               [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--grace-s 30]
       rollgate gateway set AGENT [+verifier_url=URL] [+model.base_urls=[URL,...]]
                               [+default_params.temperature=0.2] [+gateway=HOST:PORT]"""


class ServeArgs(BaseModel):
    """Arguments of ``gateway serve``."""

    command: Literal["serve"]
    """The subcommand."""
    config: str
    """Gateway config: a YAML/JSON file, or a directory whose files are merged; watched and reloaded."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback unless told otherwise (``0.0.0.0`` in containers)."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (the ready line says which)."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """HTTP port for /metrics, /healthz, /readyz; default 9090 (a free port if 9090 is taken); 0 = free port."""
    token_env: str = "ROLLGATE_TOKEN"
    """Env var holding the bearer token that Gateway calls need (unset = no token needed)."""
    admin_token_env: str = "ROLLGATE_ADMIN_TOKEN"
    """Env var holding the GatewayAdmin token (unset = the admin service is refused)."""
    tls_cert: str | None = None
    """Server certificate (PEM) for TLS on the gRPC port."""
    tls_key: str | None = None
    """Server private key (PEM)."""
    tls_client_ca: str | None = None
    """CA (PEM) that client certificates must chain to: mutual TLS."""
    grace_s: float = Field(default=30.0, ge=0)
    """Seconds in-flight rollouts get to finish on SIGTERM/SIGINT."""
    max_message_mb: int = Field(default=64, ge=1, le=2047)
    """Largest gRPC message taken or sent, in MiB (a batch of rows or results; one huge row alone)."""
    max_stream_rollouts: int = Field(default=MAX_STREAM_ROLLOUTS, ge=1, le=1_000_000)
    """Most rollouts one Collect stream holds at once (running, waiting, unsent); above it the stream stops reading."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level (JSON lines on stderr)."""


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # optional speed-up (~7-10%); asyncio's own loop works the same
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _serve(args_list: list[str]) -> int:
    args = parse_cli(args_list, ServeArgs, positional=("command",))
    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    security = Security(token=os.environ.get(args.token_env) or None,
                        admin_token=os.environ.get(args.admin_token_env) or None,
                        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)
    opts = ServeOptions(config_path=args.config, host=args.host, port=args.port, metrics_port=args.metrics_port,
                        grace_s=args.grace_s, security=security, max_message_bytes=args.max_message_mb * 2**20,
                        max_stream_rollouts=args.max_stream_rollouts)
    _event_loop_policy()
    try:
        return asyncio.run(serve(config, opts))
    except ConfigError as exc:  # e.g. an api_key_env that is not set, an unreadable TLS file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use
        print(f"error: cannot start the gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        logging.shutdown()


def main(argv: list[str] | None = None) -> int:
    """The gateway's command line; returns the exit status (2 for a bad command line or config)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    if not args_list or args_list[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stderr)
        return 0 if args_list else 2

    def body() -> int:
        if args_list[0] == "set":
            args: Any = parse_cli(args_list, SetArgs, positional=("command", "agent"))
            return run_set(args)
        return _serve(args_list)

    return run_cli(body)
