"""Hot reload in the running process (``serve --reload``): watch the target's source, load it again into a fresh
module namespace, and swap it into the ``VerifierCore`` in one step.

This is not uvicorn's ``--reload`` (a process restart, which drops every request in flight and every session).
Here the server never stops: a request that started on the old code finishes on it (it holds its own handler),
the next one runs the new code, and the new version shows in ``X-Verifier-Version`` at once.

A broken edit (syntax error, import error, missing attribute, bad signature) keeps the old version serving; the
error is logged and shown on ``/healthz`` (``status: load_error``, ``load_error: …``) until a good edit lands.

    reloader = Reloader(core, on_reload=lambda ok: print("reloaded" if ok else "load error"))
    task = asyncio.create_task(reloader.watch())      # cancelled at shutdown
    await reloader.reload()                           # what a change triggers; tests may call it directly
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

from rollgate.verifier._core import VerifierCore
from rollgate.verifier._loader import load_target
from rollgate.verifier.errors import VerifierLoadError

__all__ = ["Reloader"]

log = logging.getLogger("rollgate.verifier.reload")


def _is_source(change: watchfiles.Change, path: str) -> bool:
    # A Kubernetes ConfigMap mounted as a directory updates by swapping its ``..data`` symlink: the ``.py`` names
    # in the folder never change themselves, so that swap counts as an edit too.
    name = path.rsplit("/", 1)[-1]
    return (name.endswith(".py") and "__pycache__" not in path) or name == "..data"


class Reloader:
    """Reloads ``core``'s target when its source files change; see the module docstring.

        reloader = Reloader(core)
        watcher = asyncio.create_task(reloader.watch())  # cancel it at shutdown
        await reloader.watching.wait()  # edits saved from now on are served
    """

    def __init__(
        self,
        core: VerifierCore,
        *,
        on_reload: Callable[[bool], None] | None = None,
        debounce_ms: int = 200,
        force_polling: bool | None = None,
    ) -> None:
        self.core = core
        self.on_reload = on_reload
        self.debounce_ms = debounce_ms
        self.force_polling = force_polling
        self._lock = asyncio.Lock()
        self.watching = asyncio.Event()

    def folders(self) -> list[Path]:
        """What to watch: the folders holding the target's source files (editors replace files by renaming,
        so watching the folder catches a save that watching the file itself would miss)."""
        # Not resolved: under a ConfigMap the real file lives in a timestamped folder that the next update deletes.
        return sorted({p.absolute().parent for p in self.core.loaded.source_files})

    async def reload(self) -> bool:
        """Load the target again; swap it in on success. Returns whether the new code is now serving."""
        async with self._lock:
            spec = self.core.loaded.spec
            try:
                # In a worker thread: importing runs the user's module code, which must not stall requests.
                loaded = await asyncio.to_thread(load_target, spec, fresh=True)
            except VerifierLoadError as exc:
                self.core.load_error = str(exc)
                log.error("reload of %s failed; still serving version %s: %s", spec, self.core.version, exc)
                ok = False
            else:
                old = self.core.version
                self.core.swap(loaded)
                log.warning("reloaded %s: version %s -> %s", spec, old, loaded.version)
                ok = True
        if self.on_reload is not None:
            self.on_reload(ok)
        return ok

    async def watch(self) -> None:
        """Watch until cancelled; each batch of changes to ``.py`` files triggers one reload."""
        folders = self.folders()
        if not folders:
            log.warning("--reload: %s has no source files to watch (a built-in?); reload is off", self.core.name)
            self.watching.set()
            return
        log.info("--reload: watching %s", ", ".join(map(str, folders)))
        stop = asyncio.Event()
        watcher = watchfiles.awatch(
            *folders,
            watch_filter=_is_source,
            debounce=self.debounce_ms,
            recursive=False,
            stop_event=stop,
            force_polling=self.force_polling,
            poll_delay_ms=100,
            yield_on_timeout=True,
            rust_timeout=500,
        )
        try:
            async for changes in watcher:
                self.watching.set()  # the first (possibly empty, on timeout) batch: the watcher is live
                if changes:
                    log.info("changed: %s", ", ".join(sorted({p for _, p in changes})))
                    await self.reload()
        finally:
            stop.set()
