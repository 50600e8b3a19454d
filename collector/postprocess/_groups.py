"""Reading a rollouts file for post-processing: rows one at a time, and repeat groups by task index.

A collector output is in input order with complete groups only, so a group is a run of consecutive rows with the
same ``_rollout.task_index``. Rows without ``_rollout`` (a file from elsewhere) are grouped by position instead,
``num_repeats`` at a time — the workflows' ``i // num_repeats``. Files are streamed: one group in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollgate.collector._json import loads
from rollgate.collector.errors import InputError, UsageError

__all__ = ["iter_groups", "iter_rows", "task_key"]


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every non-blank line; a bad line is a ``FILE:LINE`` error."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(str(path), None, "no such file" if isinstance(exc, FileNotFoundError)
                         else f"cannot read: {exc.strerror or exc}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = loads(raw)
            except ValueError as exc:
                raise InputError(str(path), lineno, f"not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(str(path), lineno, "expected a JSON object")
            yield lineno, row


def task_key(row: dict[str, Any]) -> int | None:
    meta = row.get("_rollout")
    if isinstance(meta, dict) and isinstance(meta.get("task_index"), int):
        return int(meta["task_index"])
    return None


def iter_groups(path: str | Path, num_repeats: int | None = None) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(task index, rows)`` per task; positional groups of ``num_repeats`` when rows carry no ``_rollout``."""
    current: list[dict[str, Any]] = []
    current_key: int | None = None
    position = 0
    for lineno, row in iter_rows(path):
        key = task_key(row)
        if key is None:
            if num_repeats is None:
                raise UsageError(f"{path}:{lineno}: the row has no _rollout.task_index; pass +num_repeats=K to "
                                 "group rows by position")
            key = position // num_repeats
        position += 1
        if current and key != current_key:
            yield current_key if current_key is not None else 0, current
            current = []
        current_key = key
        current.append(row)
    if current:
        yield current_key if current_key is not None else 0, current
