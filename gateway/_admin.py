"""``rollgate.v1.GatewayAdmin``: read and change an agent's route at runtime (authorised by its own token).

``SetRoute`` takes a JSON object of the agent's config fields to replace (nested objects merged: ``{"model":
{"base_urls": [...]}}`` keeps the model's name). The whole new config is validated first; an invalid one is
refused with INVALID_ARGUMENT and the reason, and the old route stays. Rollouts in flight finish on their old
route; new ones take the new route.

    stub.SetRoute(pb.SetRouteRequest(agent="a", route_json=b'{"verifier_url": "http://v2:8001"}'))
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from rollgate.gateway._agent import GatewayCore
from rollgate.gateway.errors import InputError, UnknownAgentError
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc

__all__ = ["AdminServicer", "route_json"]


def route_json(core: GatewayCore, agent: str) -> bytes:
    cfg = core.config.agents.get(agent)
    if cfg is None:
        served = ", ".join(sorted(core.config.agents))
        raise UnknownAgentError(f"unknown agent {agent!r}; this gateway serves: {served}",
                                kind="unknown_agent", attempts=0)
    return orjson.dumps(cfg.model_dump(mode="json"))


class AdminServicer(pb_grpc.GatewayAdminServicer):
    """The thin wire layer over ``GatewayCore.set_route``; errors become statuses in the server's interceptor."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def GetRoute(  # noqa: N802 (generated name)
        self, request: pb.GetRouteRequest, context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.Route:
        return pb.Route(agent=request.agent, route_json=route_json(self.core, request.agent))

    async def SetRoute(  # noqa: N802
        self, request: pb.SetRouteRequest, context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.Route:
        try:
            patch = orjson.loads(request.route_json or b"{}")
        except orjson.JSONDecodeError as exc:
            raise InputError(f"route_json is not valid JSON: {exc}", kind="invalid_request", attempts=0) from None
        if not isinstance(patch, dict):
            raise InputError("route_json must be a JSON object of agent config fields", kind="invalid_request",
                             attempts=0)
        await self.core.set_route(request.agent, patch, source="admin")
        return pb.Route(agent=request.agent, route_json=route_json(self.core, request.agent))
