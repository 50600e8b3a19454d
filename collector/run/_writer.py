"""Ordered output: rows leave in input order (task, then repeat), one complete task group at a time.

Results arrive in any order; ``GroupWriter`` holds them until the group at the head is complete, then writes it to
the main file when every member succeeded, otherwise to ``<output>.failures`` with each row marked
``_rollout.status`` ``completed`` or ``failed``. So the main file only ever holds whole groups and positional
grouping (``i // num_repeats``) stays right. The sidecar is created on its first row, never empty.

Writes are flushed once per event-loop iteration (``call_soon``), not once per group: the results that arrived
together (one gateway message) cost one flush, and a row is still in the file right after the callbacks that
completed it. Without a running loop (plain synchronous use) every group is flushed at once. ``flushed`` is the
position below which every row has reached the OS (the completion journal's watermark, see ``_journal``).

A row may come already serialised (``line``: the bytes the journal holds too), so it is encoded once; then a
right-sized copy of the bytes waits instead of the row (less memory than the dict), and a member of a failed group
is parsed back to be marked.

The reorder buffer is bounded twice: ``wait_for_room(seq)`` holds back a rollout until it is within ``window``
rollouts of the oldest unwritten one, and while the finished rows waiting behind a straggler hold more than
``max_buffered_bytes``; the head group is always admitted, so the run always progresses. A generous count with
a byte cap lets a long-tailed model keep every slot busy behind one slow rollout without unbounded memory.

"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import IO, Any

from rollgate.collector._json import dumps, loads
from rollgate.collector._outputs import failures_path
from rollgate.collector.run._lines import LoopFlush

__all__ = ["GroupWriter"]


class GroupWriter:
    """Writes rows by ``seq`` (= task position * num_repeats + repeat) in order, whole groups at a time."""

    def __init__(self, output: Path, num_repeats: int, window: int, *, failures: Path | None = None,
                 max_buffered_bytes: int = 256 * 2**20) -> None:
        if window < num_repeats:
            raise ValueError("the reorder window must hold at least one whole group")
        self.output = output
        self.failures = failures if failures is not None else failures_path(output)
        self.num_repeats = num_repeats
        self.window = window
        self.written = 0  # seq of the oldest rollout not yet written
        self.flushed = 0  # every row below this seq has been pushed to the OS
        self.groups_ok = 0
        self.groups_failed = 0
        self.max_buffered_bytes = max_buffered_bytes
        # seq -> (the row, or its JSON bytes when it came serialised; ok)
        self._pending: dict[int, tuple[dict[str, Any] | bytes, bool]] = {}
        self._sizes: dict[int, int] = {}
        self._pending_bytes = 0
        self._out: IO[bytes] = open(output, "wb")
        self._side: IO[bytes] | None = None
        self._room = asyncio.Event()
        self._flusher = LoopFlush(self.flush)

    @property
    def buffered(self) -> int:
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        return self._pending_bytes

    def _full(self, seq: int) -> bool:
        if seq >= self.written + self.window:
            return True
        # The head group is always let through, so the rows blocking the buffer can finish.
        return self._pending_bytes > self.max_buffered_bytes and seq >= self.written + self.num_repeats

    async def wait_for_room(self, seq: int) -> None:
        while self._full(seq):
            self._room.clear()
            await self._room.wait()

    def head_missing(self) -> int | None:
        """The seq of the first unfinished rollout of the head group (what holds the output), None when none."""
        for seq in range(self.written, self.written + self.num_repeats):
            if seq not in self._pending:
                return seq
        return None

    def add(self, seq: int, row: dict[str, Any], ok: bool, size: int = 0, *, line: bytes | None = None) -> None:
        """Record a finished rollout; ``size`` (bytes, an estimate) counts towards ``max_buffered_bytes``;
        ``line``, when given, is ``row`` already serialised (no newline) and is written as it is."""
        if seq < self.written or seq in self._pending:
            raise ValueError(f"rollout #{seq} was already recorded")
        # A right-sized copy: orjson's bytes keep the capacity they were built in (about 4 KiB for a small row),
        # which thousands of rows waiting behind a straggler would hold on to.
        self._pending[seq] = (row if line is None else bytes(memoryview(line)), ok)
        if size:
            self._sizes[seq] = size
            self._pending_bytes += size
        self._drain()

    def _drain(self) -> None:
        k = self.num_repeats
        pending = self._pending
        progressed = False
        while self.written in pending and (k == 1 or all(self.written + r in pending for r in range(1, k))):
            group = [pending.pop(self.written + r) for r in range(k)]
            for r in range(k):
                self._pending_bytes -= self._sizes.pop(self.written + r, 0)
            if all(ok for _, ok in group):
                self._out.write(b"".join([(row if isinstance(row, bytes) else dumps(row)) + b"\n"
                                          for row, _ in group]))
                self.groups_ok += 1
            else:
                side = self._sidecar()
                for stored, ok in group:
                    row = loads(stored) if isinstance(stored, bytes) else stored
                    marked = dict(row)
                    marked["_rollout"] = {**row.get("_rollout", {}), "status": "completed" if ok else "failed"}
                    side.write(dumps(marked) + b"\n")
                self.groups_failed += 1
            self.written += k
            progressed = True
        if progressed:
            self._flusher.schedule()
            self._room.set()

    def flush(self) -> None:
        """Push buffered rows to the OS (a reader or a resume after a kill sees them)."""
        for fh in (self._out, self._side):
            if fh is not None and not fh.closed:
                fh.flush()
        self.flushed = self.written

    def _sidecar(self) -> IO[bytes]:
        if self._side is None:
            self._side = open(self.failures, "wb")
        return self._side

    @property
    def has_failures(self) -> bool:
        return self._side is not None

    def close(self, *, sync: bool = False) -> None:
        """Close the files; rows of incomplete groups (an interrupted run) are not written.

        ``sync`` forces the bytes to disk first: a resume renames these files over the old ones, and a rename
        that reaches the disk before the data would leave an empty file after a power cut.
        """
        for fh in (self._out, self._side):
            if fh is None or fh.closed:
                continue
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
            fh.close()
