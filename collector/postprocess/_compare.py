"""``rollgate compare``: two runs on the same tasks, metric by metric.

Per-metric means with 95% confidence intervals (normal approximation), the paired difference over common
tasks, and the tasks whose mean reward changed most.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from rollgate.collector._outputs import manifest_path
from rollgate.collector.postprocess._command import command_entry
from rollgate.collector.postprocess._groups import iter_groups

__all__ = ["compare_main"]

_Z95 = 1.959963984540054
# A task mean that moved less than this did not change (float noise from averaging).
_UNCHANGED = 1e-9


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    baseline_jsonl_fpath: str
    """Run A (e.g. ``eval_model_v1_results.jsonl``)."""
    candidate_jsonl_fpath: str
    """Run B on the same tasks."""
    metrics: list[str] | None = None
    """Fields to compare (default: the means in the runs' manifests, else ``reward``)."""
    top: int = Field(10, ge=0)
    """How many of the most changed tasks to list."""


def _mean_ci(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    half = _Z95 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.mean(values), half


def _per_task(path: str, metrics: list[str]) -> dict[int, dict[str, list[float]]]:
    out: dict[int, dict[str, list[float]]] = {}
    for task_index, group in iter_groups(path):
        slot = out.setdefault(task_index, {m: [] for m in metrics})
        for row in group:
            for m in metrics:
                v = row.get(m)
                if isinstance(v, (int, float)):
                    slot[m].append(float(v))
    return out


def _default_metrics(paths: list[str]) -> list[str]:
    keys: list[str] = []
    for p in paths:
        mp = manifest_path(p)
        if mp.exists():
            for k in json.loads(mp.read_text()).get("means", {}):
                if k not in keys:
                    keys.append(k)
    return keys or ["reward"]


def _compare(cfg: CompareConfig) -> int:
    a_path, b_path = cfg.baseline_jsonl_fpath, cfg.candidate_jsonl_fpath
    metrics = cfg.metrics or _default_metrics([a_path, b_path])
    a, b = _per_task(a_path, metrics), _per_task(b_path, metrics)
    common = sorted(set(a) & set(b))
    if set(a) != set(b):
        print(f"warning: the runs share {len(common)} tasks; {len(set(a) ^ set(b))} appear in only one",
              file=sys.stderr)
    print(f"{'metric':<14}{Path(a_path).name:>28}{Path(b_path).name:>28}{'B - A (paired, per task)':>30}")
    print(f"{'':<14}{'mean ± 95% CI':>28}{'mean ± 95% CI':>28}{'mean ± 95% CI':>30}")
    for m in metrics:
        ma, ha = _mean_ci([v for t in a.values() for v in t[m]])
        mb, hb = _mean_ci([v for t in b.values() for v in t[m]])
        diffs = [statistics.mean(b[t][m]) - statistics.mean(a[t][m]) for t in common if a[t][m] and b[t][m]]
        md, hd = _mean_ci(diffs)
        print(f"{m:<14}{f'{ma:.3f} ± {ha:.3f}':>28}{f'{mb:.3f} ± {hb:.3f}':>28}{f'{md:+.3f} ± {hd:.3f}':>30}")
    key = metrics[0]
    changes = [(statistics.mean(b[t][key]) - statistics.mean(a[t][key]), t)
               for t in common if a[t][key] and b[t][key]]
    # Only tasks whose mean moved: a list padded with +0.000 rows says nothing.
    changes = [c for c in changes if abs(c[0]) > _UNCHANGED]
    changes.sort(key=lambda c: (-abs(c[0]), c[1]))
    print("(each cell: mean ± half-width of its 95% confidence interval, normal approximation)")
    if not cfg.top:
        return 0
    if not changes:
        print(f"\nNo task's mean {key} changed between the runs ({len(common)} tasks in both).")
        return 0
    print(f"\nTasks that changed most ({key}, mean over repeats; {len(changes)} of {len(common)} changed):")
    for delta, t in changes[: cfg.top]:
        print(f"  task {t}: {statistics.mean(a[t][key]):.3f} -> {statistics.mean(b[t][key]):.3f} ({delta:+.3f})")
    return 0


compare_main = command_entry(CompareConfig,
                             "usage: rollgate compare BASELINE.jsonl CANDIDATE.jsonl [+metrics=[reward]] [+top=10]\n"
                             "(means ± 95% confidence half-widths, normal approximation)", _compare,
                             ["baseline_jsonl_fpath", "candidate_jsonl_fpath"])
