"""``rollgate pairs``: DPO chosen/rejected pairs from repeat groups.

The DPO workflow's ``create_dpo_pairs``, on a streamed rollouts file: sort a task's group by reward, highest
first (stable), and pair the top two when the gap is at least ``min_reward_gap``; print the statistics the
workflow prints. The pairs file is written exactly as the workflow writes it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rollgate.collector.postprocess._command import command_entry
from rollgate.collector.postprocess._groups import iter_groups
from rollgate.collector.postprocess._stats import format_sd

__all__ = ["pairs_main"]

class PairsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    input_jsonl_fpath: str
    """The rollouts file (collected with ``+num_repeats`` >= 2)."""
    output_jsonl_fpath: str | None = None
    """Where the pairs go (default: ``<input>`` with ``.pairs.jsonl`` in place of ``.jsonl``)."""
    min_reward_gap: float = Field(0.15, ge=0)
    """Pair the top two of a group only when their rewards differ by at least this much."""
    ties: Literal["keep", "skip"] = "keep"
    """``keep``: with min_reward_gap=0 equal rewards make a pair (as the workflow does); ``skip``: never."""
    num_repeats: int | None = Field(None, ge=1)
    """Group rows by position, this many at a time (only for files whose rows have no ``_rollout``)."""


def make_pairs(path: str, min_reward_gap: float, ties: str, num_repeats: int | None,
               out: Any) -> tuple[int, int, list[tuple[float, float, float]]]:
    groups = pairs = 0
    stats: list[tuple[float, float, float]] = []
    for _, group in iter_groups(path, num_repeats):
        groups += 1
        if len(group) < 2:
            continue
        ranked = sorted(group, key=lambda x: x["reward"], reverse=True)
        best, second = ranked[0], ranked[1]
        if best["reward"] - second["reward"] >= min_reward_gap:
            gap = best["reward"] - second["reward"]
            if ties == "skip" and gap == 0:
                continue
            pair = {
                "prompt": best["responses_create_params"]["input"],
                "chosen": best["output"],
                "rejected": second["output"],
                "reward_chosen": best["reward"],
                "reward_rejected": second["reward"],
                "reward_gap": gap,
            }
            out.write(json.dumps(pair) + "\n")  # byte for byte what the workflow's snippet writes
            pairs += 1
            stats.append((best["reward"], second["reward"], gap))
    return groups, pairs, stats


def _pairs(cfg: PairsConfig) -> int:
    src = cfg.input_jsonl_fpath
    target = cfg.output_jsonl_fpath or (src[:-6] if src.endswith(".jsonl") else src) + ".pairs.jsonl"
    with open(target, "w") as out:
        groups, n, stats = make_pairs(src, cfg.min_reward_gap, cfg.ties, cfg.num_repeats, out)
    sizes = Counter(len(g) for _, g in iter_groups(src, cfg.num_repeats))
    each = ", ".join(f"{k}" for k in sorted(sizes)) or "0"
    print(f"Created {groups} prompt groups ({each} rollouts each)")
    print(f"Created {n} preference pairs from {groups} groups")
    print(f"Pair creation rate: {n / groups * 100 if groups else 0.0:.1f}%")
    if stats:
        for name, i in (("Chosen:  ", 0), ("Rejected:", 1), ("Gap:     ", 2)):
            values = [s[i] for s in stats]
            print(f"{name} μ={statistics.mean(values):.3f}, σ={format_sd(values, '.3f')}")
    print(f"pairs written to {target}", file=sys.stderr)
    return 0


pairs_main = command_entry(PairsConfig, "usage: rollgate pairs ROLLOUTS.jsonl [+output_jsonl_fpath=PAIRS.jsonl] "
                    "[+min_reward_gap=0.15] [+ties=keep|skip]", _pairs, ["input_jsonl_fpath"])
