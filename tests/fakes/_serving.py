"""How the fake servers listen: one aiohttp app on 127.0.0.1, as the real servers they stand in for would.

    runner, port = await serve_app(app, port=0)
    ...
    await runner.cleanup()
"""

from __future__ import annotations

import asyncio
import json
import signal

from aiohttp import web

__all__ = ["announce_and_wait", "serve_app"]


async def serve_app(app: web.Application, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on 127.0.0.1:``port`` (0: a free one); the runner (``cleanup()`` stops it) and the port."""
    # handler_cancellation: a client that hangs up (a cancelled rollout) cancels its request here too, which tests
    # observe and which keeps shutdown quick.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    # uvicorn's (so vLLM's and SGLang's) listen backlog; aiohttp's default of 128 drops the SYNs of a gateway
    # opening hundreds of connections at once, and each dropped one waits a 1 s retransmit.
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    return runner, int(runner.addresses[0][1])


async def announce_and_wait(service: str, url: str) -> None:
    """As a process (benchmarks): print the ready JSON line the stack's readers wait for, then serve until
    SIGTERM or SIGINT."""
    print(json.dumps({"event": "ready", "service": service, "url": url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
