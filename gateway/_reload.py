"""Reload the config file (or directory) on change or SIGHUP, and hot-swap the routes.

A directory is watched as a whole: a Kubernetes ConfigMap mount updates by swapping its hidden ``..data``
symlink, which changes no visible file's mtime, so any event in the directory triggers a reload, and a reload
that yields the config already in force changes nothing. A single file is watched through its folder, but only
events for that file (or the kubelet's ``..``-named entries beside it, or the file a symlink points to) reload:
the folder may be a working directory where a collector writes rollouts many times a second. An invalid config
is refused with its reason in the log (and ``rollgate_gateway_route_rejections_total``); the old routes stay.

    reloader = ConfigReloader(core, "/etc/rollgate/agents")
    await reloader.reload("sighup")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

from rollgate.gateway._agent import GatewayCore
from rollgate.gateway._config import load_config
from rollgate.gateway.errors import ConfigError

__all__ = ["ConfigReloader"]

log = logging.getLogger("rollgate.gateway.reload")


class ConfigReloader:
    """Watches ``path`` and applies what it holds to ``core``."""

    def __init__(self, core: GatewayCore, path: str | Path) -> None:
        self.core = core
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def reload(self, source: str) -> bool:
        """Apply the config on disk now; True when the routes changed."""
        async with self._lock:
            try:
                config = await asyncio.to_thread(load_config, self.path)
            except ConfigError as exc:
                self.core.metrics.route_rejections.labels(source).inc()
                log.error("config reload refused; the old routes stay: %s", exc, extra={"source": source})
                return False
            if config == self.core.config:
                return False
            try:
                await self.core.apply_config(config, source)
            except ConfigError as exc:
                log.error("config reload refused; the old routes stay: %s", exc, extra={"source": source})
                return False
            return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every relevant change until ``stop`` is set."""
        if self.path.is_dir():
            targets, recursive, relevant = [self.path], True, None
        else:
            file, real = self.path.absolute(), self.path.resolve()
            targets, recursive, relevant = sorted({file.parent, real.parent}), False, _file_filter(file, real)
        async for _ in watchfiles.awatch(*targets, stop_event=stop, debounce=200, step=50, recursive=recursive,
                                         watch_filter=relevant):
            await self.reload("file")


def _file_filter(file: Path, real: Path) -> Callable[[watchfiles.Change, str], bool]:
    """Events that can change a single config file: the file, its symlink's target, the kubelet's ``..`` entries."""

    def relevant(_change: watchfiles.Change, changed: str) -> bool:
        path = Path(changed)
        return path in (file, real) or path.name.startswith("..")

    return relevant
