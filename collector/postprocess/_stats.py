"""``rollgate stats``: reward distribution, per-task statistics, failure rate and unbiased pass@k.

What the workflows hand-write: ``jq '.reward' | sort -n | uniq -c``, per-task μ/σ/range as the behavioural
exploration workflow prints it, and the failure rate from the ``.failures`` sidecar.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollgate.collector._outputs import failures_path
from rollgate.collector.postprocess._command import command_entry
from rollgate.collector.postprocess._groups import iter_groups, iter_rows

__all__ = ["format_sd", "pass_at_k", "stats_main"]


def format_sd(values: list[float], spec: str) -> str:
    """The sample standard deviation formatted with ``spec``, or ``n/a`` for fewer than two values."""
    return format(statistics.stdev(values), spec) if len(values) > 1 else "n/a"

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c are correct."""
    if k > n:
        raise ValueError("k must not exceed the number of samples")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


class StatsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    input_jsonl_fpath: str
    """The rollouts file; its ``.failures`` sidecar, when present, gives the failure rate."""
    correct_threshold: float = 1.0
    """A rollout counts as correct for pass@k when its reward is at least this."""
    per_task: bool = True
    """Print one line per task (``Task N: μ=…, σ=…, range=[…, …]``)."""
    json_output: bool = False
    """Print one JSON object instead of text."""
    num_repeats: int | None = Field(None, ge=1)
    """Group rows by position (only for files whose rows have no ``_rollout``)."""


def _stats(cfg: StatsConfig) -> int:
    dist: Counter[float] = Counter()
    rewards: list[float] = []
    tasks: list[dict[str, Any]] = []
    samples: list[tuple[int, int]] = []
    for task_index, group in iter_groups(cfg.input_jsonl_fpath, cfg.num_repeats):
        values = [float(r["reward"]) for r in group if isinstance(r.get("reward"), (int, float))]
        if not values:
            continue
        dist.update(values)
        rewards += values
        samples.append((len(values), sum(v >= cfg.correct_threshold for v in values)))
        sd = statistics.stdev(values) if len(values) > 1 else None
        tasks.append({"task": task_index, "n": len(values), "mean": statistics.mean(values), "stdev": sd,
                      "min": min(values), "max": max(values)})
    side = failures_path(cfg.input_jsonl_fpath)
    failed = sum(1 for _, r in iter_rows(side) if "error" in r) if side.exists() else 0
    total = len(rewards) + (sum(1 for _ in iter_rows(side)) if side.exists() else 0)
    failure_rate = failed / total if total else 0.0
    k_max = min((n for n, _ in samples), default=0)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, k_max) if 1 <= k <= k_max})
    passes = {f"pass@{k}": statistics.mean(pass_at_k(n, c, k) for n, c in samples) for k in ks}
    summary = {
        "rollouts": len(rewards),
        "tasks": len(tasks),
        "reward": {"mean": statistics.mean(rewards) if rewards else None,
                   "stdev": statistics.stdev(rewards) if len(rewards) > 1 else None,
                   "min": min(rewards, default=None), "max": max(rewards, default=None)},
        "distribution": {repr(v): dist[v] for v in sorted(dist)},
        "failed": failed,
        "failure_rate": failure_rate,
        **passes,
    }
    if cfg.json_output:
        print(json.dumps({**summary, "per_task": tasks if cfg.per_task else None}, indent=2))
        return 0
    print("Reward distribution:")
    for value in sorted(dist):
        print(f"{dist[value]:>7} {value}")
    r = summary["reward"]
    assert isinstance(r, dict)
    if rewards:
        print(f"Reward: μ={r['mean']:.3f}, σ={format_sd(rewards, '.3f')}, range=[{r['min']:.2f}, {r['max']:.2f}] "
              f"over {len(rewards)} rollouts, {len(tasks)} tasks")
    print(f"Failure rate: {failed} / {total} ({failure_rate * 100:.1f}%)")
    for k in ks:
        print(f"pass@{k}: {passes[f'pass@{k}']:.3f} (reward >= {cfg.correct_threshold:g})")
    if cfg.per_task:
        for t in tasks:
            sd_text = f"{t['stdev']:.2f}" if t["stdev"] is not None else "n/a"
            print(f"Task {t['task']}: μ={t['mean']:.2f}, σ={sd_text}, range=[{t['min']:.2f}, {t['max']:.2f}]")
    return 0


stats_main = command_entry(StatsConfig, "usage: rollgate stats ROLLOUTS.jsonl [+correct_threshold=1.0] "
                    "[+per_task=false] [+json_output=true]", _stats, ["input_jsonl_fpath"])
