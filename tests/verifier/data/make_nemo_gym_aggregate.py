"""Regenerate ``nemo_gym_aggregate_metrics.json``: NeMo Gym's own default ``/aggregate_metrics`` answers.

Run with a Python that has NeMo Gym 0.7.0 installed (``scripts/nemo_gym_venv.sh`` builds one):

    .nemo-gym-venv/0.7.0/bin/python tests/verifier/data/make_nemo_gym_aggregate.py

Each case's ``answer`` is what ``SimpleResourcesServer.aggregate_metrics`` returns when the server overrides none
of ``compute_metrics`` / ``get_key_metrics`` / ``compute_repeat_metrics``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

# Only in a NeMo Gym venv (Python 3.13), never in the project's own.
from nemo_gym.config_types import AggregateMetricsRequest  # type: ignore[import-not-found]
from nemo_gym.reward_profile import AggregateMetricsMixin, compute_aggregate_metrics  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent


def _stripped(row: dict[str, Any]) -> dict[str, Any]:
    """A row as NeMo Gym's collector posts it: ``response`` cut down to usage and incomplete_details."""
    out = {k: v for k, v in row.items() if k not in ("response", "responses_create_params")}
    response = row.get("response") or {}
    kept = {k: response[k] for k in ("usage", "incomplete_details") if response.get(k) is not None}
    if kept:
        out["response"] = kept
    return out


def _usage(i: int) -> dict[str, Any]:
    return {"usage": {"input_tokens": 10 + i, "output_tokens": 3 * i + 1, "total_tokens": 11 + 4 * i,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}


def cases() -> dict[str, list[dict[str, Any]]]:
    real = json.loads((HERE / "nemo_gym_verify_response.json").read_text())  # a row NeMo Gym's collector wrote
    repeats = [
        {"_ng_task_index": t, "_ng_rollout_index": r, "agent_ref": {"name": "my_agent"}, "task_id": 100 + t,
         "category": "math" if t % 2 else "code", "reward": [1.0, 0.0, 0.5][(t + r) % 3], "accuracy": (t + r) % 3 == 0,
         "response": _usage(3 * t + r)}
        for t in range(3) for r in range(3) if (t, r) != (2, 2)
    ]
    masked = [
        {"_ng_task_index": t, "_ng_rollout_index": r, "reward": float(t == r), "mask_sample": t == 1 and r == 0}
        for t in range(3) for r in range(2)
    ] + [{"_ng_task_index": 3, "_ng_rollout_index": r, "reward": 0.0, "mask_sample": True} for r in range(2)]
    perf = [
        {"_ng_task_index": t, "_ng_rollout_index": 0, "reward": 0.25 * t,
         "ng_perf": {"prompt_tokens": 100 + t, "completion_tokens": 7 * t + 1, "num_turns": t,
                     "total_latency_ms": 12.5 * (t + 1), "token_observability_coverage": 1.0 if t else 0.0}}
        for t in range(4)
    ]
    one_repeat = [{"_ng_task_index": t, "_ng_rollout_index": 0, "reward": float(t % 2), "score": t} for t in range(4)]
    return {"repeats": repeats, "masked": masked, "perf": perf, "one_repeat": one_repeat, "nemo_gym_row": [real],
            "all_masked": [{"_ng_task_index": 0, "_ng_rollout_index": 0, "reward": 1.0, "mask_sample": True}],
            "empty": []}


def main() -> None:
    mixin = AggregateMetricsMixin()
    corpus = {}
    for name, rows in cases().items():
        body = [_stripped(r) for r in rows]
        AggregateMetricsRequest(verify_responses=body)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            answer = compute_aggregate_metrics(body, compute_metrics_fn=mixin.compute_metrics,
                                               get_key_metrics_fn=mixin.get_key_metrics,
                                               compute_repeat_metrics_fn=mixin.compute_repeat_metrics)
        corpus[name] = {"verify_responses": body, "answer": answer.model_dump(mode="json")}
    (HERE / "nemo_gym_aggregate_metrics.json").write_text(json.dumps(corpus, indent=1) + "\n")


if __name__ == "__main__":
    main()
