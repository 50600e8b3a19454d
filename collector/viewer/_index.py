"""A line-offset index over a rollouts JSONL file (and its ``.failures`` sidecar).

One streaming pass records, per non-blank line, where it starts and the few numbers the list view needs (reward,
metrics, task and repeat index, failure stage/kind) in compact ``array`` columns. The rows themselves stay on disk:
``read_row`` seeks to one line and parses it on demand, so memory grows with the number of rows, not their size.

    index = RolloutIndex.build([Path("rollouts.jsonl")])
    row = index.read_row(0)          # the parsed row, or a Malformed(line, error, raw)
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import orjson

from rollgate.collector._outputs import manifest_path

__all__ = ["PROGRESS_EVERY_BYTES", "Malformed", "Progress", "RolloutIndex", "RowStatus", "failures_sidecar"]

NAN = float("nan")
# Keys the collector reserves; never treated as metrics.
_RESERVED = frozenset({"responses_create_params", "response", "output", "_rollout", "error", "reward"})
# A file whose rows carry many distinct numeric fields would otherwise grow one column per field name.
MAX_METRICS = 32
# How often ``build`` reports its progress, in bytes read.
PROGRESS_EVERY_BYTES = 64 * 2**20
# ``progress(bytes_done, bytes_total)``
Progress = Callable[[int, int], None]
_RAW_PREVIEW = 2000


class RowStatus(IntEnum):
    OK = 0
    FAILED = 1  # has an ``error`` object (a failures sidecar row that failed)
    COMPLETED = 2  # a sidecar row marked completed: it succeeded, but a sibling in its group failed
    MALFORMED = 3  # the line is not a JSON object


def _measured_fields(paths: Sequence[Path]) -> frozenset[str] | None:
    """The metrics of a collector's output: the numeric fields its verifier added, which the run's manifest
    lists as its means (the printed means). Task fields such as ``task_id`` ride along in the rows but are not
    measurements. A file without a manifest (written elsewhere) has every numeric field as a metric."""
    fields: set[str] = set()
    for path in paths:
        # A ``.failures`` sidecar belongs to its output's run and manifest.
        run = Path(str(path).removesuffix(".failures"))
        try:
            means = json.loads(manifest_path(run).read_text(encoding="utf-8")).get("means")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(means, dict):
            return None
        fields.update(str(k) for k in means)
    return frozenset(fields)


@dataclass(frozen=True)
class Malformed:
    """A line that could not be read as a row: where it is and why."""

    path: str
    line: int
    error: str
    raw: str


def failures_sidecar(path: Path) -> Path | None:
    """The ``<output>.failures`` file beside ``path``, when there is one."""
    side = Path(f"{path}.failures")
    return side if side.is_file() and not path.name.endswith(".failures") else None


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return NAN


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        # The standard library reads what orjson refuses (ints over 64 bits, NaN) and words errors with a column.
        return json.loads(line)


@dataclass
class RolloutIndex:
    """Columns of per-row facts, one entry per non-blank line over all sources, in file order.

        index = RolloutIndex.build([Path("rollouts.jsonl")])
        len(index), index.reward[0]   # rows indexed, the first row's reward (NaN when it has none)
        row = index.read_row(0)       # the parsed row, or a Malformed(path, line, error, raw)
    """

    paths: list[Path]
    source: array[int] = field(default_factory=lambda: array("b"))
    offset: array[int] = field(default_factory=lambda: array("q"))
    line: array[int] = field(default_factory=lambda: array("l"))
    status: array[int] = field(default_factory=lambda: array("b"))
    task: array[int] = field(default_factory=lambda: array("q"))
    repeat: array[int] = field(default_factory=lambda: array("l"))
    reward: array[float] = field(default_factory=lambda: array("d"))
    metrics: dict[str, array[float]] = field(default_factory=dict)
    # Failure stage and kind as codes into ``labels`` (0 = none).
    stage: array[int] = field(default_factory=lambda: array("h"))
    kind: array[int] = field(default_factory=lambda: array("h"))
    labels: list[str] = field(default_factory=lambda: [""])
    malformed: list[int] = field(default_factory=list)
    bytes_total: int = 0
    # The fields the verifier added, from the runs' manifests (None: a file without one; every numeric field).
    measured: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self.offset)

    @classmethod
    def build(cls, paths: Sequence[Path], progress: Progress | None = None,
              every_bytes: int = PROGRESS_EVERY_BYTES) -> RolloutIndex:
        """Index ``paths`` in one pass each; an unreadable file raises ``OSError``.

        ``progress(done, total)`` (bytes over all the files) is called every ``every_bytes`` and at the end.
        """
        index = cls(paths=list(paths))
        index.measured = _measured_fields(index.paths)
        total = sum(path.stat().st_size for path in index.paths)
        done = 0
        for src, path in enumerate(index.paths):
            report = None
            if progress is not None:
                base = done

                def report(pos: int, base: int = base) -> None:
                    progress(base + pos, total)

            index._scan(src, path, report, every_bytes)
            done = index.bytes_total
        if progress is not None:
            progress(done, total)
        return index

    def _label(self, text: Any) -> int:
        name = str(text) if text is not None else ""
        if not name:
            return 0
        try:
            return self.labels.index(name)
        except ValueError:
            self.labels.append(name)
            return len(self.labels) - 1

    def _scan(self, src: int, path: Path, report: Callable[[int], None] | None = None,
              every_bytes: int = PROGRESS_EVERY_BYTES) -> None:
        # The hot loop of opening a file: bound methods in locals, and metric discovery only when a row's key set
        # differs from the previous row's (in a collector's output it almost never does).
        add_source, add_offset, add_line = self.source.append, self.offset.append, self.line.append
        add_status, add_task, add_repeat = self.status.append, self.task.append, self.repeat.append
        add_reward, add_stage, add_kind = self.reward.append, self.stage.append, self.kind.append
        metrics = self.metrics
        measured = self.measured
        last_keys: Any = None
        row_metrics: list[tuple[str, array[float]]] = []
        pos = 0
        # One int comparison per line: the report costs nothing when nobody listens (``next_report`` unreachable).
        next_report = every_bytes if report is not None else 1 << 62
        with open(path, "rb", buffering=1 << 20) as fh:
            for lineno, raw in enumerate(fh, start=1):
                start, pos = pos, pos + len(raw)
                if pos >= next_report:
                    assert report is not None
                    report(pos)
                    next_report = pos + every_bytes
                if not raw.strip():
                    continue
                n = len(self.offset)
                add_source(src)
                add_offset(start)
                add_line(lineno)
                try:
                    row = _parse(raw)
                    if not isinstance(row, dict):
                        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                except ValueError:
                    self._add_malformed()
                    continue
                meta = row.get("_rollout")
                if not isinstance(meta, dict):
                    meta = {}
                task, rep = meta.get("task_index"), meta.get("repeat_index")
                # A file not written by the collector has no indices: each row is its own task.
                add_task(task if type(task) is int else n)
                add_repeat(rep if type(rep) is int else 0)
                error = row.get("error")
                rstatus = meta.get("status")
                if type(error) is dict or rstatus == "failed":
                    err = error if type(error) is dict else {}
                    add_status(RowStatus.FAILED)
                    add_stage(self._label(err.get("stage") or "rollout"))
                    add_kind(self._label(err.get("kind") or "exception"))
                else:
                    add_status(RowStatus.COMPLETED if rstatus == "completed" else RowStatus.OK)
                    add_stage(0)
                    add_kind(0)
                add_reward(_number(row.get("reward")))
                keys = row.keys()
                if keys != last_keys:
                    last_keys = keys
                    for key, value in row.items():
                        if (key not in metrics and key not in _RESERVED and not key.startswith("_")
                                and (measured is None or key in measured)
                                and isinstance(value, (int, float)) and len(metrics) < MAX_METRICS):
                            metrics[key] = array("d", [NAN]) * n
                    row_metrics = [(k, col) for k, col in metrics.items() if k in keys]
                for key, col in row_metrics:
                    col.append(_number(row[key]))
                if len(row_metrics) != len(metrics):
                    for col in metrics.values():
                        if len(col) == n:
                            col.append(NAN)
        self.bytes_total += pos

    def _add_malformed(self) -> None:
        self.malformed.append(len(self.offset) - 1)
        self.status.append(RowStatus.MALFORMED)
        self.task.append(-1)
        self.repeat.append(-1)
        self.reward.append(NAN)
        self.stage.append(0)
        self.kind.append(0)
        for col in self.metrics.values():
            col.append(NAN)

    def where(self, i: int) -> tuple[str, int]:
        """``(file path, 1-based line number)`` of row ``i``."""
        return str(self.paths[self.source[i]]), self.line[i]

    def read_raw(self, i: int) -> bytes:
        with open(self.paths[self.source[i]], "rb") as fh:
            fh.seek(self.offset[i])
            return fh.readline()

    def read_row(self, i: int) -> dict[str, Any] | Malformed:
        """Row ``i`` parsed from disk; a line that no longer parses (or never did) comes back as ``Malformed``."""
        raw = self.read_raw(i)
        path, lineno = self.where(i)
        try:
            row = _parse(raw)
        except ValueError as exc:
            return Malformed(path, lineno, _describe(exc), raw[:_RAW_PREVIEW].decode("utf-8", "replace"))
        if not isinstance(row, dict):
            return Malformed(path, lineno, f"expected a JSON object, got {type(row).__name__}",
                             raw[:_RAW_PREVIEW].decode("utf-8", "replace"))
        return row

    def rows_of_task(self, task: int) -> list[int]:
        return [i for i in range(len(self)) if self.task[i] == task and self.status[i] != RowStatus.MALFORMED]

    def metric_names(self) -> list[str]:
        return ["reward", *self.metrics]

    def column(self, name: str) -> array[float] | None:
        return self.reward if name == "reward" else self.metrics.get(name)

    def ok_rows(self) -> Iterable[int]:
        return (i for i in range(len(self)) if self.status[i] in (RowStatus.OK, RowStatus.COMPLETED))


def _describe(exc: ValueError) -> str:
    # Both parsers name the position; the first line of the message is what a person needs.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text


def finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value
