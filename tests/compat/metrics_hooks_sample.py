"""Aggregation hooks written as a NeMo Gym user writes them (plain Python, no imports), for the comparison in
``test_metrics_hooks_with_nemo.py``: NeMo Gym 0.7's ``compute_aggregate_metrics`` calls them in its venv, our
``aggregate_metrics`` here, on the same rows."""

from __future__ import annotations

from typing import Any


def compute_metrics(tasks: list[list[dict[str, Any]]]) -> dict[str, Any]:
    solved = [any(r["reward"] == 1.0 for r in rollouts) for rollouts in tasks]
    best = [max(r.get("score", 0) for r in rollouts) for rollouts in tasks]
    return {
        "pass@k": sum(solved) / len(solved),
        "best_score_sum": sum(best),
        "per_task_metrics": [{"_ng_task_index": rollouts[0].get("_ng_task_index", 0), "solved": ok, "best": b}
                             for rollouts, ok, b in zip(tasks, solved, best, strict=True)],
    }


def get_key_metrics(agent_metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in agent_metrics.items() if k in ("pass@k", "mean/reward", "num_repeats")}


def compute_repeat_metrics(tasks: list[list[dict[str, Any]]]) -> dict[str, Any]:
    # One repeat: pass@1 replaces nothing generic; mean/score replaces the generic mean of the score column.
    rewards = [r["reward"] for rollouts in tasks for r in rollouts]
    scores = [r["score"] for rollouts in tasks for r in rollouts]
    return {"pass@1": sum(rewards) / len(rewards), "mean/score": sum(scores) / len(scores) + 1000}
