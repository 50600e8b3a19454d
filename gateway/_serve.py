"""``gateway serve``: the gRPC server, the HTTP probes/metrics port, config watching, signals, graceful drain.

Start-up order: core (validates secrets' env vars) -> gRPC port -> HTTP port -> ready line on stdout. SIGHUP
reloads the config; SIGTERM/SIGINT drain: health and ``/readyz`` turn NOT_SERVING at once, streams start nothing
new and end with UNAVAILABLE after their last result, rollouts in flight get ``grace_s`` seconds, then the rest
is cancelled and the process exits 0.

    await serve(config, ServeOptions(config_path="gw.yaml", port=0, metrics_port=0))
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import sys
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from rollgate.gateway._agent import GatewayCore
from rollgate.gateway._config import GatewayConfig
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway._probes import start_probes
from rollgate.gateway._reload import ConfigReloader
from rollgate.gateway._server import MAX_MESSAGE_BYTES, Security, create_server
from rollgate.gateway._servicer import MAX_STREAM_ROLLOUTS

__all__ = ["ServeOptions", "serve"]

log = logging.getLogger("rollgate.gateway.serve")
DEFAULT_METRICS_PORT = 9090


@dataclass(slots=True)
class ServeOptions:
    """Everything ``gateway serve`` needs besides the config itself."""

    config_path: str
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None
    """None = the default port (9090), or a free one with a warning when 9090 is taken."""
    grace_s: float = 30.0
    security: Security = field(default_factory=Security)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_stream_rollouts: int = MAX_STREAM_ROLLOUTS


def _host_for_url(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"  # a URL an operator on this machine can open
    return f"[{host}]" if ":" in host else host


async def _probes(core: GatewayCore, opts: ServeOptions, ready: list[bool]) -> tuple[web.AppRunner, int]:
    port = DEFAULT_METRICS_PORT if opts.metrics_port is None else opts.metrics_port
    try:
        return await start_probes(core, opts.host, port, ready=lambda: bool(ready))
    except OSError as exc:
        if opts.metrics_port is not None or exc.errno != errno.EADDRINUSE:
            raise
        # Only the *default* port gives way: several local gateways (tests, `rollgate up`) must not collide.
        log.warning("metrics port %d is in use; serving /metrics on a free port instead", port)
        return await start_probes(core, opts.host, 0, ready=lambda: bool(ready))


async def serve(config: GatewayConfig, opts: ServeOptions, metrics: GatewayMetrics | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch_stop = asyncio.Event()
    ready: list[bool] = []
    try:
        async with GatewayCore(config, metrics=metrics) as core:
            reloader = ConfigReloader(core, opts.config_path)
            loop.add_signal_handler(signal.SIGHUP, lambda: _spawn_reload(reloader))
            server, bound = await create_server(config, f"{opts.host}:{opts.port}", core=core,
                                                security=opts.security, max_message_bytes=opts.max_message_bytes,
                                                max_stream_rollouts=opts.max_stream_rollouts)
            runner, mport = await _probes(core, opts, ready)
            watcher = asyncio.create_task(reloader.watch(watch_stop))
            try:
                ready.append(True)
                line = {"event": "ready", "service": "gateway", "address": f"{opts.host}:{bound}",
                        "metrics_url": f"http://{_host_for_url(opts.host)}:{mport}/metrics"}
                sys.stdout.write(orjson.dumps(line).decode() + "\n")
                sys.stdout.flush()
                log.info("gateway serving %d agent(s) on %s:%d, metrics on port %d", len(config.agents),
                         opts.host, bound, mport)
                await stop.wait()
                log.info("draining: %d rollout(s) in flight, grace %.1fs", core.in_flight, opts.grace_s)
                t0 = time.monotonic()
                core.begin_drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(opts.grace_s):
                        await core.wait_idle()
                        # Streams end by themselves once idle, each with a last word to its client (UNAVAILABLE,
                        # "shutting down"), which a loaded machine may take a moment to say.
                        await core.streams.wait_zero()
                # What is left past the grace period is cancelled now.
                await server.stop(max(0.0, min(1.0, opts.grace_s - (time.monotonic() - t0))))
                log.info("stopped")
            finally:
                watch_stop.set()
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await server.stop(None)
                await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


_reloads: set[asyncio.Task[bool]] = set()


def _spawn_reload(reloader: ConfigReloader) -> None:
    task = asyncio.get_running_loop().create_task(reloader.reload("sighup"))
    _reloads.add(task)
    task.add_done_callback(_reloads.discard)
