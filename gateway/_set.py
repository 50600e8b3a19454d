"""``rollgate gateway set AGENT +verifier_url=URL …``: one ``GatewayAdmin.SetRoute`` call.

The fields given replace the agent's (nested ones merged, so ``+default_params.temperature=0.2`` keeps the other
default params); the gateway validates the whole result and refuses an invalid one with the reason. The admin
token comes from ``ROLLGATE_ADMIN_TOKEN`` (or ``+admin_token_env``), never from the command line; without it, from
the file a local stack (``rollgate up``) keeps for its gateway (``rollgate._local_admin``). Prints the
agent's new route as JSON on stdout; exit 0 on success, 1 when the gateway refused or could not be reached.

    rollgate gateway set my_agent +verifier_url=http://verifier-v2:8001 +gateway=127.0.0.1:50051
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, Literal

import grpc
import orjson
from pydantic import BaseModel, Field

from rollgate._local_admin import read_token, token_path
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc

__all__ = ["SetArgs", "run_set"]

_ROUTE_FIELDS = ("verifier_url", "model", "default_params", "max_steps", "kind", "timeouts", "retries",
                 "verifier_token_env")


def _default_gateway() -> str:
    return os.environ.get("ROLLGATE_GATEWAY", "127.0.0.1:50051")


class SetArgs(BaseModel):
    """Arguments of ``gateway set``."""

    command: Literal["set"]
    """The subcommand."""
    agent: str = Field(min_length=1)
    """The agent whose route changes."""
    gateway: str = Field(default_factory=_default_gateway)
    """The gateway's gRPC address (default ``ROLLGATE_GATEWAY`` or ``127.0.0.1:50051``)."""
    verifier_url: str | None = None
    """New resources/verifier server URL."""
    model: dict[str, Any] = Field(default_factory=dict)
    """Model endpoint fields to replace, e.g. ``+model.base_urls=[http://a/v1,http://b/v1]``."""
    default_params: dict[str, Any] = Field(default_factory=dict)
    """Default ``responses_create_params`` to replace, e.g. ``+default_params.temperature=0.2``."""
    timeouts: dict[str, Any] = Field(default_factory=dict)
    """Timeouts to replace, e.g. ``+timeouts.model_s=120``."""
    retries: dict[str, Any] = Field(default_factory=dict)
    """Retry budget fields to replace, e.g. ``+retries.attempts=5``."""
    max_steps: int | None = Field(default=None, ge=1)
    """New tool-loop step limit."""
    kind: Literal["single_turn", "tool_calling"] | None = None
    """New agent kind."""
    verifier_token_env: str | None = None
    """New env var name (on the gateway) holding the verifier's token."""
    admin_token_env: str = "ROLLGATE_ADMIN_TOKEN"
    """Env var (here) holding the admin token."""
    tls_ca: str | None = None
    """CA (PEM) to trust when the gateway's gRPC port has TLS."""
    tls_cert: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    tls_key: str | None = None
    """Client key (PEM) for mutual TLS."""
    timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for the gateway."""

    def patch(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _ROUTE_FIELDS:
            value = getattr(self, name)
            if value is not None and value != {}:
                out[name] = value
        return out


def _channel(args: SetArgs) -> grpc.aio.Channel:
    if not (args.tls_ca or args.tls_cert):
        return grpc.aio.insecure_channel(args.gateway)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None)
    return grpc.aio.secure_channel(args.gateway, creds)


def _token(args: SetArgs) -> str | None:
    # A local stack (`rollgate up`) keeps its gateway's token in a file only the user can read.
    return os.environ.get(args.admin_token_env) or read_token(args.gateway)


async def _call(args: SetArgs, patch: dict[str, Any]) -> pb.Route:
    token = _token(args)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with _channel(args) as channel:
        stub = pb_grpc.GatewayAdminStub(channel)
        request = pb.SetRouteRequest(agent=args.agent, route_json=orjson.dumps(patch))
        route: pb.Route = await stub.SetRoute(request, metadata=metadata, timeout=args.timeout_s)
        return route


def run_set(args: SetArgs) -> int:
    patch = args.patch()
    if not patch:
        print("error: nothing to change; give e.g. +verifier_url=URL, +model.base_urls=[...], "
              "+default_params.KEY=VALUE", file=sys.stderr)
        return 2
    try:
        route = asyncio.run(_call(args, patch))
    except grpc.aio.AioRpcError as exc:
        print(f"error: the gateway at {args.gateway} refused the change ({exc.code().name}): {exc.details()}",
              file=sys.stderr)
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            print(f"hint: set {args.admin_token_env} to the token the gateway was started with (its "
                  f"--admin-token-env); a stack started by `rollgate up` keeps it in {token_path(args.gateway)}, "
                  "so check that the address is that stack's gateway", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read a TLS file: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps({"agent": route.agent, "route": orjson.loads(route.route_json)}).decode())
    return 0
