"""The completion journal: every result the collector receives is on disk before it counts as done.

The ordered output (``GroupWriter``) writes a row only once every rollout before it has finished, so one hung
rollout can hold thousands of finished ones in memory; a Ctrl-C, SIGKILL or OOM kill would lose them and the
resume would pay for them again. So every result, ok or failed, is also appended, in arrival order, to a sidecar
journal: ``<output>.journal`` for a fresh run, ``<output>.resume-<stamp>-<pid>.journal`` for a resume (each run
its own file, never rewritten; none ends in ``.jsonl``). One line per result::

    {"seq": 7, "id": "<rollout id>", "task_index": 3, "repeat_index": 1, "ok": true, "row": {<the output row>}}

``row`` is the row exactly as the output will hold it (``GroupWriter`` writes the same bytes). Lines are buffered
and written with one write and flush per event-loop iteration, like the writer's, so a killed process loses at
most the results of the iteration it died in, and its last line may be torn (it is then ignored).

Watermarks keep a resume's memory bounded: before each batch the journal notes ``{"written": N}``, the writer's
position whose rows are already flushed to this run's ordered files (the output, or the resume's ``.partial``),
which stay until a later run completes. A reader keeps only the entries at or past the last watermark (what the
reorder buffer held), sorted by (task, repeat) for ``ExistingRows``' merge join; everything before it is read
from the ordered files. A normal completion removes the journals (every row is then in the output or the
``.failures`` sidecar); an interrupted or killed run leaves them for ``+resume=true``, which matches their rows
by rollout id like any other source and removes them once its own output is in place.

    journal = Journal(journal_path(output), watermark=lambda: writer.flushed)
    journal.append(spec, ok, dumps(row))   # then writer.add(...): on disk by the end of this loop iteration
"""

from __future__ import annotations

import glob
import heapq
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from rollgate.collector._json import loads
from rollgate.collector.run._lines import LineStats, LoopFlush, complete_lines
from rollgate.collector.run._tasks import RolloutSpec

__all__ = ["JOURNAL_SUFFIX", "Journal", "is_journal", "journal_path", "journal_paths", "read_journal"]

JOURNAL_SUFFIX = ".journal"

_Key = tuple[int, int]


def journal_path(output: Path, resume_suffix: str | None = None) -> Path:
    """A fresh run's journal, or (``resume_suffix`` = ``.resume-<stamp>-<pid>``) a resume's own."""
    return Path(f"{output}{resume_suffix or ''}{JOURNAL_SUFFIX}")


def journal_paths(output: Path) -> list[Path]:
    """Every journal of ``output`` left on disk: the fresh run's first, then the resumes' in stamp order."""
    first = journal_path(output)
    found = [first] if first.exists() else []
    return found + sorted(Path(p) for p in glob.glob(glob.escape(str(output)) + ".resume-*" + JOURNAL_SUFFIX))


def is_journal(path: Path) -> bool:
    return path.name.endswith(JOURNAL_SUFFIX)


class Journal:
    """Appends results; flushed once per event-loop iteration (at once without a loop)."""

    def __init__(self, path: Path, *, watermark: Callable[[], int] | None = None) -> None:
        self.path = path
        self.entries = 0
        self._watermark = watermark
        self._noted = 0
        self._fh: IO[bytes] | None = open(path, "ab")  # appending never destroys what an earlier run left
        self._buffer: list[bytes] = []
        self._flusher = LoopFlush(self.flush)

    def append(self, spec: RolloutSpec, ok: bool, line: bytes) -> None:
        """Record one result; ``line`` is the output row's JSON, as the writer will write it (no newline)."""
        # Pieces, joined once at the flush: the row's bytes are copied once, not twice.
        self._buffer += (b'{"seq":%d,"id":"%s","task_index":%d,"repeat_index":%d,"ok":%s,"row":' % (
            spec.seq, spec.rollout_id.encode(), spec.task_index, spec.repeat_index, b"true" if ok else b"false"),
            line, b"}\n")
        self.entries += 1
        self._flusher.schedule()

    def flush(self) -> None:
        """Write what is buffered in one write and push it to the OS (a resume after a kill reads it)."""
        if self._fh is None or not self._buffer:
            return
        if self._watermark is not None:
            mark = self._watermark()
            if mark > self._noted:
                self._noted = mark
                self._buffer.insert(0, b'{"written":%d}\n' % mark)
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._fh.write(data)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is None:
            return
        self.flush()
        self._fh.close()
        self._fh = None

    def remove(self) -> None:
        """The run completed: every row is in the output or its sidecar."""
        self.close()
        self.path.unlink(missing_ok=True)


def read_journal(path: Path, stats: LineStats) -> Iterator[tuple[_Key, int, dict[str, Any]]]:
    """The journal's reusable rows (ok, past its last watermark) as ``(key, order, row)``, sorted by key.

    A final line without ``\\n`` (the process died mid-write) is torn and ignored; an unreadable line is skipped.
    """
    held: list[tuple[int, _Key, bytes]] = []  # a heap by seq: what the writer had not flushed yet
    for raw in complete_lines(path, stats):
        try:
            entry = loads(raw)
            if "written" in entry:
                mark = int(entry["written"])
                while held and held[0][0] < mark:
                    heapq.heappop(held)
                continue
            if entry["ok"] is not True:
                continue
            seq = int(entry["seq"])
            key = (int(entry["task_index"]), int(entry["repeat_index"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            stats.unreadable += 1
            continue
        heapq.heappush(held, (seq, key, raw))
    order = 0
    for _, key, raw in sorted(held, key=lambda item: item[1]):
        row = loads(raw).get("row")
        meta = row.get("_rollout") if isinstance(row, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
            stats.unreadable += 1
            continue
        order += 1
        yield key, order, row
