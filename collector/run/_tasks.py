"""Tasks in: check the whole file, then read it lazily and expand it into rollout specs.

``check_input`` streams over the file once before anything is sent; it counts the rows (``Found N rows!``),
hashes the bytes for the manifest, and stops at the first bad line with ``FILE:LINE: what is wrong``. Blank lines
are skipped but still count for line numbers, so the reported line is the one an editor shows.

``iter_specs`` then reads the file a second time, lazily, and yields one ``RolloutSpec`` per (task, repeat) in
``aabbcc`` order: the whole file is never held in memory.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollgate._backend_params import metadata_objects
from rollgate.collector._json import dumps, loads
from rollgate.collector.errors import InputError
from rollgate.collector.run._ids import rollout_id

__all__ = [
    "PRODUCED_KEYS", "InputSummary", "RolloutSpec", "check_input", "deep_merge", "effective_params", "iter_specs",
    "iter_tasks", "shard_task_count", "task_fields",
]

# What a rollout produces. An input row that is an earlier output fed back in (ours or NeMo Gym's) carries its run's:
# they are never task fields, nor is any ``_ng_*`` key (NeMo Gym's collector owns that prefix).
PRODUCED_KEYS = frozenset({"response", "output", "reward", "error", "_rollout", "agent_ref"})


@dataclass(frozen=True)
class InputSummary:
    rows: int
    sha256: str


@dataclass(frozen=True)
class RolloutSpec:
    """One rollout to run: ``seq`` is its position in this run's output (task position * num_repeats + repeat)."""

    seq: int
    task_index: int
    repeat_index: int
    rollout_id: str
    row: dict[str, Any]
    params: dict[str, Any]
    # The row as JSON bytes, serialised once per task and shared by its repeats (empty: serialise on send).
    row_json: bytes = b""
    # A resume's stored response of this rollout, whose verify failed: the gateway re-verifies it (see _resume).
    prior_response_json: bytes = b""


def _describe(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _parse_line(path: str, lineno: int, raw: bytes) -> dict[str, Any]:
    try:
        row = loads(raw)
    except ValueError as exc:
        raise InputError(path, lineno, f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise InputError(path, lineno, f"expected a JSON object, got {_describe(row)}")
    if "responses_create_params" not in row:
        raise InputError(path, lineno, "the row has no 'responses_create_params'")
    params = row["responses_create_params"]
    if not isinstance(params, dict):
        raise InputError(path, lineno, f"'responses_create_params' must be an object, got {_describe(params)}")
    try:
        metadata_objects(params)
    except ValueError as exc:
        raise InputError(path, lineno, f"responses_create_params: {exc}") from None
    return row


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, None, "is a directory, not a JSONL file") from None
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc.strerror or exc}") from None
    with fh:
        yield from enumerate(fh, start=1)


def check_input(path: str) -> InputSummary:
    """One streaming pass over the whole file; raises ``InputError`` at the first bad line."""
    digest = hashlib.sha256()
    rows = 0
    for lineno, raw in _lines(path):
        digest.update(raw)
        if not raw.strip():
            continue
        _parse_line(path, lineno, raw)
        rows += 1
    return InputSummary(rows=rows, sha256=digest.hexdigest())


def iter_tasks(path: str, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(task_index, row)`` for the first ``limit`` rows (all when None); blank lines are not tasks."""
    index = 0
    for lineno, raw in _lines(path):
        if limit is not None and index >= limit:
            return
        if not raw.strip():
            continue
        yield index, _parse_line(path, lineno, raw)
        index += 1


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins; nested objects merge key by key, anything else (lists included) is replaced whole."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``deep_merge`` without the copies: new dicts only along the overridden paths, the rest shared.

    Every repeat of every task gets its params from here, and nothing mutates them after they are built, so
    sharing the untouched parts with the row saves a deep copy per rollout.
    """
    out = dict(base)
    for key, value in over.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            out[key] = _overlay(current, value)
        else:
            out[key] = value
    return out


def effective_params(row_params: Mapping[str, Any], overrides: Mapping[str, Any], repeat_index: int) -> dict[str, Any]:
    """The row's params under the CLI overrides; an integer ``seed`` becomes ``seed + repeat_index``.

    Agent defaults (the lowest layer) are applied by the gateway, which reports what it sent back in the result.
    The result shares unchanged nested values with its inputs: treat it as read-only.
    """
    params = _overlay(row_params, overrides)
    seed = params.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        # Repeats must differ yet stay reproducible: repeat r of a seeded task always gets seed + r.
        params["seed"] = seed + repeat_index
    return params


def task_fields(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as a task: without what an earlier rollout produced (``row`` itself when there is none)."""
    if PRODUCED_KEYS.isdisjoint(row) and not any(k.startswith("_ng_") for k in row):
        return row
    return {k: v for k, v in row.items() if k not in PRODUCED_KEYS and not k.startswith("_ng_")}


def iter_specs(
    path: str | Path,
    *,
    agent: str,
    overrides: Mapping[str, Any],
    num_repeats: int,
    limit: int | None,
    num_shards: int = 1,
    shard_index: int = 0,
) -> Iterator[RolloutSpec]:
    """Every rollout in output order: task 0 repeats 0..K-1, then task 1 … (the ``aabbcc`` pattern).

    With shards, this run takes the tasks whose index is ``shard_index`` modulo ``num_shards`` (after ``limit``):
    deterministic, balanced, and the ids and task indices stay those of the unsharded run, so merged shards
    equal one run row for row. ``seq`` counts this run's own output positions.
    """
    position = 0
    for task_index, raw_row in iter_tasks(str(path), limit):
        if task_index % num_shards != shard_index:
            continue
        row = task_fields(raw_row)  # once per task, not per rollout; the gateway and verifier see the task alone
        row_json = dumps(row)
        for r in range(num_repeats):
            params = effective_params(row["responses_create_params"], overrides, r)
            yield RolloutSpec(
                seq=position,
                task_index=task_index,
                repeat_index=r,
                rollout_id=rollout_id(task_index, row, params, r, agent),
                row=row,
                params=params,
                row_json=row_json,
            )
            position += 1


def shard_task_count(tasks: int, num_shards: int, shard_index: int) -> int:
    """How many of ``tasks`` (indices 0..tasks-1) fall in the shard."""
    return len(range(shard_index, tasks, num_shards))
