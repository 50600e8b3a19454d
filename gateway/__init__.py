"""rollgate's agent gateway: runs rollouts for named agents (model calls, tool loop, verifier) behind gRPC.

    async with GatewayCore(load_config("agents.yaml")) as core:
        server, port = await create_server(core.config, "127.0.0.1:0", core=core)

``rollgate gateway serve --config DIR`` runs one (see ``rollgate.gateway._main``); ``rollgate gateway set`` reroutes it.
"""

from __future__ import annotations

from rollgate.gateway._agent import GatewayCore
from rollgate.gateway._config import AgentConfig, GatewayConfig, ModelEndpoint, RetryConfig, Timeouts, load_config
from rollgate.gateway._main import main
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway._outcome import RolloutErrorInfo, RolloutOutcome, RolloutRequest, Timings
from rollgate.gateway._server import Security, create_server
from rollgate.gateway.errors import ConfigError, GatewayError, RolloutFailure

__all__ = [
    "AgentConfig",
    "ConfigError",
    "GatewayConfig",
    "GatewayCore",
    "GatewayError",
    "GatewayMetrics",
    "ModelEndpoint",
    "RetryConfig",
    "RolloutErrorInfo",
    "RolloutFailure",
    "RolloutOutcome",
    "RolloutRequest",
    "Security",
    "Timeouts",
    "Timings",
    "create_server",
    "load_config",
    "main",
]
