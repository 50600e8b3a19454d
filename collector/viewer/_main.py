"""``ng_viewer`` / ``rollgate view``: index a rollouts file, serve the page, print its URL, serve until Ctrl-C.

    ng_viewer +input_jsonl_fpath=rollouts.jsonl [+port=7860] [+host=127.0.0.1] [+compare_jsonl_fpath=other.jsonl]

Like the other rollgate servers it prints one ready line on stdout,
``{"event": "ready", "service": "viewer", "url": "http://HOST:PORT"}``; a human line and logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from pydantic import BaseModel, ConfigDict, Field

from rollgate._cli import parse_cli, run_cli
from rollgate.collector.viewer._app import Viewer, create_app

__all__ = ["ViewerConfig", "serve", "viewer_main"]


class ViewerConfig(BaseModel):
    """What ``ng_viewer`` opens and where it listens; built from ``+key=value`` arguments.

        cfg = ViewerConfig(input_jsonl_fpath=Path("rollouts.jsonl"), port=0)
        cfg = parse_cli(["rollouts.jsonl", "+port=0"], ViewerConfig, positional=("input_jsonl_fpath",))
    """

    model_config = ConfigDict(extra="forbid")

    input_jsonl_fpath: Path
    """The rollouts file to browse (its ``.failures`` sidecar is read too when it exists)."""
    compare_jsonl_fpath: Path | None = None
    """A second run over the same tasks, for the Compare tab (files beside the input can be picked in the page)."""
    host: str = "127.0.0.1"
    """Interface to listen on; keep the loopback default unless the page must be reachable from elsewhere."""
    port: int = Field(default=7860, ge=0, le=65535)
    """TCP port; 0 picks a free one."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(viewer: Viewer, sock: socket.socket, on_ready: Callable[[str], None] | None = None,
                server_box: list[uvicorn.Server] | None = None) -> None:
    """Serve the page on an already bound socket until the server is told to exit (Ctrl-C/SIGTERM in a CLI)."""
    config = uvicorn.Config(create_app(viewer), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if server_box is not None:
        server_box.append(server)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started and on_ready is not None:
        on_ready(_url(sock))
    await task


def _progress_printer(min_interval_s: float = 1.0) -> Callable[[int, int], None]:
    """Lines such as ``indexing: 37% (380 of 1,024 MB)`` on stderr while a big file is read (at most one a second)."""
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] < min_interval_s:
            return
        last[0] = now
        print(f"indexing: {100 * done // max(total, 1)}% ({done / 1e6:,.0f} of {total / 1e6:,.0f} MB)",
              file=sys.stderr, flush=True)

    return report


def viewer_main(argv: list[str]) -> int:
    def body() -> int:
        cfg = parse_cli(argv, ViewerConfig, positional=("input_jsonl_fpath",))
        for path in (cfg.input_jsonl_fpath, cfg.compare_jsonl_fpath):
            if path is not None and not path.is_file():
                print(f"error: {path}: no such file", file=sys.stderr)
                return 2
        t0 = time.perf_counter()
        try:
            viewer = Viewer.open(cfg.input_jsonl_fpath, cfg.compare_jsonl_fpath, progress=_progress_printer())
        except OSError as exc:
            print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
        bad = f", {len(viewer.a.malformed)} malformed" if viewer.a.malformed else ""
        print(f"indexed {len(viewer.a):,} rows{bad} from {', '.join(map(str, viewer.a.paths))} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        try:
            sock = _bind(cfg.host, cfg.port)
        except OSError as exc:
            print(f"error: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}", file=sys.stderr)
            return 2

        def ready(url: str) -> None:
            print(f"ng_viewer: open {url} in your browser (Ctrl-C to stop)", file=sys.stderr, flush=True)
            print(json.dumps({"event": "ready", "service": "viewer", "url": url}), flush=True)

        try:
            asyncio.run(serve(viewer, sock, ready))
        except KeyboardInterrupt:
            # uvicorn shuts down gracefully, then re-raises the Ctrl-C it caught; that is a normal stop.
            pass
        finally:
            sock.close()
        return 0

    return run_cli(body)
