"""The gateway's plain-HTTP port: ``/metrics``, ``/healthz``, ``/readyz``.

Never behind the token or TLS: Kubernetes probes and Prometheus scrapers cannot send either. ``/healthz`` says
the process answers; ``/readyz`` says it takes new work (503 while starting or draining), so a draining gateway
leaves its Service's endpoints before it stops.

    runner, port = await start_probes(core, "127.0.0.1", 0, ready=lambda: True)
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from rollgate.gateway._agent import GatewayCore

__all__ = ["start_probes"]


async def start_probes(core: GatewayCore, host: str, port: int,
                       ready: Callable[[], bool]) -> tuple[web.AppRunner, int]:
    """Start the HTTP server; returns its runner (``await runner.cleanup()`` stops it) and the bound port."""

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=core.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if core.draining.is_set():
            return web.json_response({"status": "draining"}, status=503)
        if not ready():
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ready", "agents": sorted(core.config.agents)})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)
