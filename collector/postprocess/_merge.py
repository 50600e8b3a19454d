"""``rollgate merge``: join shard outputs (``+num_shards=K +shard_index=i``) into one file in input order.

Every shard is in (task, repeat) order already, so a k-way merge by ``_rollout`` (task_index, repeat_index)
streams them into one file without holding any in memory. The sidecars (``<shard>.failures``) merge the same way
into ``<output>.failures``; the shards' manifests combine into ``<output>.manifest.json`` (counts and failures
summed, means weighted by each shard's successful rollouts) and the combined means go to stdout.

The output is written to a temporary file and renamed into place; an existing output is moved aside with its
sidecars (one ``.bak`` folder).
A rollout present in two shards (overlapping inputs, a shard run twice) is written once.

    rollgate merge +output_jsonl_fpath=all.jsonl +inputs='[out/shard_*.jsonl]'
    rollgate merge all.jsonl out/shard_0.jsonl out/shard_1.jsonl
"""

from __future__ import annotations

import glob
import heapq
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollgate._cli import parse_cli, run_cli
from rollgate.collector._json import loads
from rollgate.collector._outputs import back_up, failures_path, manifest_path, utc_stamp
from rollgate.collector.errors import CollectorError, InputError, OutputError, UsageError

__all__ = ["MergeConfig", "merge", "merge_main"]

_Item = tuple[tuple[int, int], str, bytes]  # (task, repeat), id, the line as written


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    output_jsonl_fpath: str = Field(min_length=1)
    """The merged rollouts file."""

    inputs: list[str] = Field(min_length=1)
    """Shard outputs (glob patterns allowed); also given as bare arguments after the output path."""


def _usage() -> str:
    return "\n".join([
        "usage: rollgate merge OUTPUT SHARD [SHARD...]",
        "       rollgate merge +output_jsonl_fpath=all.jsonl +inputs='[out/shard_*.jsonl]'",
        "",
        "Joins shard outputs into one file in input order (and their .failures sidecars and manifests).",
    ])


def merge_main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(_usage())
        return 0

    def run() -> int:
        keyed = [a for a in args if a.startswith(("+", "--")) or "=" in a]
        bare = [a for a in args if a not in keyed]
        extra: list[str] = []
        if bare:
            has_output = any("output_jsonl_fpath" in a for a in keyed)
            if not has_output:
                extra.append(f"+output_jsonl_fpath={bare.pop(0)}")
            if bare:
                extra.append("+inputs=[" + ",".join(json.dumps(b) for b in bare) + "]")
        cfg = parse_cli([*keyed, *extra], MergeConfig)
        try:
            means = merge(cfg)
        except CollectorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_status
        print(json.dumps(means, indent=4), flush=True)
        return 0

    return run_cli(run)


def _expand(patterns: list[str], output: Path) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise InputError(pattern, None, "no file matches")
        for match in matches:
            path = Path(match)
            if path.resolve() != output.resolve() and path not in paths:
                paths.append(path)
    if not paths:
        raise UsageError("no shard outputs to merge")
    return paths


def _rows(path: Path) -> Iterator[_Item]:
    """The shard's rows with their sort key; a torn, unreadable or out-of-order line is a ``FILE:LINE`` error."""
    last = (-1, -1)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):
                raise InputError(str(path), lineno, "torn last line: the shard is incomplete; resume it first "
                                 "(+resume=true)")
            try:
                row = loads(raw)
                meta = row["_rollout"]
                key = (int(meta["task_index"]), int(meta["repeat_index"]))
                rid = str(meta["id"])
            except (ValueError, KeyError, TypeError):
                raise InputError(str(path), lineno, "not a rollout row (needs _rollout.id, task_index, "
                                 "repeat_index)") from None
            if key < last:
                raise InputError(str(path), lineno, f"out of input order (task {key[0]} after {last[0]})")
            last = key
            yield key, rid, raw


def _merge_files(sources: list[Path], target: Path) -> tuple[int, int]:
    """Merge ``sources`` into ``target`` via a temp file; (rows written, duplicates dropped)."""
    tmp = Path(f"{target}.merge-{os.getpid()}.tmp")
    written = duplicates = 0
    previous: tuple[tuple[int, int], str] | None = None
    try:
        with open(tmp, "wb") as out:
            for key, rid, raw in heapq.merge(*(_rows(p) for p in sources), key=lambda item: item[0]):
                if previous == (key, rid):
                    duplicates += 1
                    continue
                if previous is not None and previous[0] == key:
                    print(f"warning: task {key[0]} repeat {key[1]} appears with two different rollout ids "
                          "(shards collected with different settings?); keeping both", file=sys.stderr)
                previous = (key, rid)
                out.write(raw)
                written += 1
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(str(target), exc.strerror or str(exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return written, duplicates


def _combine_manifests(shards: list[Path], written: int, failed_rows: int, duplicates: int) -> dict[str, Any]:
    manifests = []
    for shard in shards:
        path = manifest_path(shard)
        if path.exists():
            manifests.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            print(f"warning: {path} is missing; the combined counts and means leave that shard out",
                  file=sys.stderr)
    counts: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    versions: set[str] = set()
    for m in manifests:
        counts.update({k: v for k, v in m.get("counts", {}).items() if isinstance(v, int)})
        stages.update(m.get("failures_by_stage", {}))
        versions.update(m.get("verifier_versions", []))
        n = m.get("counts", {}).get("succeeded", 0)
        for key, value in m.get("means", {}).items():
            sums[key] = sums.get(key, 0.0) + value * n
            weights[key] = weights.get(key, 0.0) + n
    means = {k: sums[k] / weights[k] for k in sums if weights[k] > 0}
    wall = max((m.get("wall_s") or 0.0 for m in manifests), default=0.0)
    return {
        "shards": [str(s) for s in shards],
        "counts": dict(counts),
        "failures_by_stage": dict(sorted(stages.items())),
        "means": means,
        "verifier_versions": sorted(versions),
        "rows": {"output": written, "failures": failed_rows, "duplicates_dropped": duplicates},
        "wall_s": wall,
        "throughput_rollouts_per_s": round((counts["succeeded"] + counts["failed"]) / wall, 3) if wall else None,
        "configs": [m.get("config") for m in manifests],
    }


def merge(cfg: MergeConfig) -> dict[str, float]:
    output = Path(cfg.output_jsonl_fpath)
    shards = _expand(cfg.inputs, output)
    for shard in shards:
        if not shard.exists():
            raise InputError(str(shard), None, "no such file")
    if output.is_dir():
        raise OutputError(str(output), "it is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(str(output), exc.strerror or str(exc)) from None
    back_up([output, failures_path(output), manifest_path(output)], utc_stamp())
    written, duplicates = _merge_files(shards, output)
    sides = [failures_path(s) for s in shards if failures_path(s).exists()]
    failed_rows = _merge_files(sides, failures_path(output))[0] if sides else 0
    combined = _combine_manifests(shards, written, failed_rows, duplicates)
    tmp = Path(f"{manifest_path(output)}.tmp")
    tmp.write_text(json.dumps(combined, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path(output))
    print(f"merged {len(shards)} shard(s) into {output}: {written} rows"
          + (f", {failed_rows} in {failures_path(output)}" if failed_rows else "")
          + (f", {duplicates} duplicate(s) dropped" if duplicates else ""), file=sys.stderr)
    return combined["means"]  # type: ignore[no-any-return]
