"""``rollgate export … +format=rl``: training-mode rollouts to one token-level RL record per rollout.

Input: rows collected in training mode, where each model call put exactly one output item in ``row["output"]``
carrying ``prompt_token_ids``, ``generation_token_ids`` and ``generation_log_probs`` (NeMo Gym's names), in call
order. The prompts are cumulative: call k's prompt is call k-1's prompt, then its generation, then the new tokens
(tool outputs, template). A record is therefore the last call's prompt plus its generation, and call k's generated
span starts at ``len(prompt_k)``.

One JSON line per kept rollout:

- ``token_ids``: the whole trajectory's ids (last prompt + last generation);
- ``loss_mask``: 1 on every token a model call generated (its end-of-turn token included), 0 on prompt, tool and
  template tokens;
- ``log_probs``: aligned with ``token_ids``; the sampling log-prob where the mask is 1, ``0.0`` elsewhere;
- ``reward``; ``advantage``: GRPO's ``(reward - mean) / (std + 1e-6)`` over the kept rollouts of the same task
  (same ``_rollout.task_index``), std the population std; 0.0 for a group of one or whose rewards are all equal;
- ``policy_versions``: ``_rollout.policy_versions`` (one per model call) or null in rows that predate them;
- ``rollout_id``, ``task_index``, ``repeat_index`` (from ``_rollout``), ``num_model_calls``.

Skipped, counted, never repaired: rows without token fields (not collected in training mode), rows whose token
fields are malformed (a field missing or not a list of numbers, log-probs not as long as their tokens), rows
without a finite numeric reward, and rows that are not token-exact (call k's prompt does not begin with call k-1's
prompt + generation, or the gateway marked it with ``response.metadata.rollgate_token_prefix_mismatch``).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any

from rollgate.collector._json import dumps
from rollgate.collector.postprocess._groups import iter_groups

__all__ = ["ADVANTAGE_EPS", "SKIP_REASONS", "export_rl", "summary"]

ADVANTAGE_EPS = 1e-6
"""Added to the group's (population) std before dividing, as ``examples/grpo_batch.py`` does."""

_TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
_MISMATCH_MARKER = "rollgate_token_prefix_mismatch"

SKIP_REASONS = ("not token-exact", "without token ids", "with malformed token fields", "without a reward")


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Call:
    prompt: list[int]
    generation: list[int]
    log_probs: list[float]


def _ints(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def _floats(value: Any) -> list[float] | None:
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return None


def _calls(row: dict[str, Any]) -> list[_Call]:
    calls: list[_Call] = []
    for item in row.get("output") or []:
        if not isinstance(item, dict) or all(item.get(f) is None for f in _TOKEN_FIELDS):
            continue
        prompt, generation = _ints(item.get("prompt_token_ids")), _ints(item.get("generation_token_ids"))
        log_probs = _floats(item.get("generation_log_probs"))
        if prompt is None or generation is None or log_probs is None or len(log_probs) != len(generation):
            raise _Skip("with malformed token fields")
        calls.append(_Call(prompt, generation, log_probs))
    if not calls:
        raise _Skip("without token ids")
    return calls


def _marked_mismatch(row: dict[str, Any]) -> bool:
    response = row.get("response")
    metadata = response.get("metadata") if isinstance(response, dict) else None
    return isinstance(metadata, dict) and bool(metadata.get(_MISMATCH_MARKER))


def _rl_record(row: dict[str, Any]) -> dict[str, Any]:
    """The record of one row (``advantage`` still 0.0); raises ``_Skip`` with the reason it cannot be used."""
    calls = _calls(row)
    if _marked_mismatch(row):
        raise _Skip("not token-exact")
    reward = row.get("reward")
    if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
        raise _Skip("without a reward")
    mask: list[int] = []
    log_probs: list[float] = []
    previous: list[int] = []
    for call in calls:
        # Token-exact: everything before this call is a prefix of its prompt, id for id.
        if call.prompt[:len(previous)] != previous:
            raise _Skip("not token-exact")
        context = len(call.prompt) - len(mask)
        mask += [0] * context + [1] * len(call.generation)
        log_probs += [0.0] * context + call.log_probs
        previous = call.prompt + call.generation
    given = row.get("_rollout")
    meta: dict[str, Any] = given if isinstance(given, dict) else {}
    versions = meta.get("policy_versions")
    return {
        "token_ids": previous,
        "loss_mask": mask,
        "log_probs": log_probs,
        "reward": float(reward),
        "advantage": 0.0,  # set per group by ``_set_advantages``
        "policy_versions": versions if isinstance(versions, list) else None,
        "rollout_id": meta.get("id"),
        "task_index": meta.get("task_index"),
        "repeat_index": meta.get("repeat_index"),
        "num_model_calls": len(calls),
    }


def _set_advantages(records: list[dict[str, Any]]) -> None:
    rewards = [r["reward"] for r in records]
    if len(rewards) < 2:
        return
    mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
    if std == 0.0:
        return
    for record in records:
        record["advantage"] = (record["reward"] - mean) / (std + ADVANTAGE_EPS)


def export_rl(input_path: str, out: IO[bytes], num_repeats: int | None) -> tuple[int, int, Counter[str]]:
    """Write the records of ``input_path`` to ``out``; (kept, seen, skipped by reason)."""
    kept = seen = 0
    skipped: Counter[str] = Counter()
    for task_index, group in iter_groups(input_path, num_repeats):
        records = []
        for position, row in enumerate(group):
            seen += 1
            try:
                record = _rl_record(row)
            except _Skip as skip:
                skipped[skip.reason] += 1
                continue
            if record["task_index"] is None:  # positional groups (rows without ``_rollout``)
                record["task_index"], record["repeat_index"] = task_index, position
            records.append(record)
        _set_advantages(records)
        for record in records:
            out.write(dumps(record) + b"\n")
            kept += 1
    return kept, seen, skipped


def summary(kept: int, seen: int, skipped: Counter[str]) -> str:
    """``kept N of M; skipped K not token-exact; F without token ids`` (+ other reasons when there are any)."""
    parts = [f"kept {kept} of {seen}", f"skipped {skipped['not token-exact']} not token-exact",
             f"{skipped['without token ids']} without token ids"]
    parts += [f"{skipped[r]} {r}" for r in SKIP_REASONS[2:] if skipped[r]]
    return "; ".join(parts)
