"""Two things the run's files share: reading complete JSONL lines, and flushing once per event-loop iteration.

    for raw in complete_lines(path, stats): ...        # a torn last line counts in stats.torn, then stops
    flusher = LoopFlush(self.flush); flusher.schedule()  # flush() runs at the end of this loop iteration
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

__all__ = ["LoopFlush", "LineStats", "complete_lines"]


class LineStats(Protocol):
    torn: int
    unreadable: int


def complete_lines(path: Path, stats: LineStats) -> Iterator[bytes]:
    """Every non-blank complete line of ``path`` (a missing file has none); a final line without ``\\n`` (the
    process died in the middle of a write) counts as torn and ends the reading."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                stats.torn += 1
                return
            if raw.strip():
                yield raw


class LoopFlush:
    """Calls ``flush`` once at the end of the current event-loop iteration however often it is scheduled, so the
    results that arrived together (one gateway message) cost one flush; without a running loop, at once."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self.pending = False

    def schedule(self) -> None:
        if self.pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # synchronous use: now
            self._flush()
            return
        self.pending = True
        loop.call_soon(self._run)

    def _run(self) -> None:
        self.pending = False
        self._flush()
