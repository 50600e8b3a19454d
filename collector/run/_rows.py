"""Output rows: the input row as given, plus what the rollout produced (DESIGN "Rollouts out").

The verifier answers the task fields back along with what it added; only the *added* fields are written (an
echoed task field or a reserved key is never overwritten) and only those count towards the means.

The response and trajectory are the bulk of a row and the collector never looks inside them: their JSON bytes from
the gateway (compact, as an encoder wrote them) are spliced into the output line as they are (``RawJSON``) rather
than parsed and serialised again. Bytes that do not look like one JSON object / array take the parsing path, so
the row written is the same JSON as when everything was parsed.

Every row (failures sidecar included) also carries NeMo Gym's bookkeeping, so code written for NeMo Gym's output
reads ours: ``_ng_task_index`` (the task's position in the input, the ``_rollout.task_index``), ``_ng_rollout_index``
(the repeat, 0..num_repeats-1: NeMo Gym numbers each task's rollouts from 0) and ``agent_ref: {"name": agent}``.
Each (task, rollout) pair is unique in a file, as NeMo Gym's readers require.

An input row may be an earlier output fed back in (ours or NeMo Gym's). What a rollout produces is never taken from
the input: ``_tasks.task_fields`` drops ``response``, ``output``, ``reward``, ``error``, ``_rollout``, ``agent_ref``
and every ``_ng_*`` key (NeMo Gym's collector-owned prefix) when the task is read, and this run's are written; a
failed rollout has no ``reward``. Any other field passes through as a task field, so a previous verifier's extra
fields stay as they were (``rollgate reverify`` re-scores a file instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rollgate.collector._json import RawJSON, loads
from rollgate.collector.run._tasks import RolloutSpec
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb

__all__ = ["NG_KEYS", "RESERVED_KEYS", "BuiltRow", "MeansAccumulator", "added_fields", "build_row", "failed_result",
           "stamp_bookkeeping"]

# NeMo Gym's names (nemo_gym/global_config.py: TASK_INDEX_KEY_NAME, ROLLOUT_INDEX_KEY_NAME, AGENT_REF_KEY_NAME).
NG_TASK_INDEX, NG_ROLLOUT_INDEX, AGENT_REF = "_ng_task_index", "_ng_rollout_index", "agent_ref"
NG_KEYS = frozenset({NG_TASK_INDEX, NG_ROLLOUT_INDEX, AGENT_REF})
# Written by the collector on every row; a verifier field never overwrites them.
RESERVED_KEYS = frozenset({"responses_create_params", "response", "output", "_rollout", "error"}) | NG_KEYS


@dataclass
class BuiltRow:
    row: dict[str, Any]
    ok: bool
    # The verifier's added fields (for the means); empty for a failed rollout.
    added: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None


def _json_field(raw: bytes, default: Any) -> Any:
    if not raw:
        return default
    try:
        return loads(raw)
    except ValueError:
        return default


def _spliced(raw: bytes, first: int, last: int) -> RawJSON | None:
    """``raw`` as a ``RawJSON`` when it is framed like one JSON object/array (``first`` … ``last``), else None."""
    if len(raw) >= 2 and raw[0] == first and raw[-1] == last:
        return RawJSON(raw)
    return None


def failed_result(rollout_id: str, stage: str, kind: str, message: str) -> pb.RolloutResult:
    """A result for a rollout the gateway never answered (e.g. the stream broke)."""
    return pb.RolloutResult(
        rollout_id=rollout_id,
        status=pb.ROLLOUT_STATUS_FAILED,
        error=pb.RolloutError(stage=stage, kind=kind, message=message),
    )


def stamp_bookkeeping(row: dict[str, Any], spec: RolloutSpec, agent: str) -> dict[str, Any]:
    """``row`` with NeMo Gym's bookkeeping keys set for ``spec``'s rollout (in place; returned for chaining)."""
    row[NG_TASK_INDEX] = spec.task_index
    row[NG_ROLLOUT_INDEX] = spec.repeat_index
    row[AGENT_REF] = {"name": agent}
    return row


def added_fields(row: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The fields of a written row that its verifier added (what the means count): not task fields, not ours."""
    return {k: v for k, v in row.items()
            if k not in RESERVED_KEYS and not k.startswith("_ng_") and (k == "reward" or k not in task)}


def build_row(spec: RolloutSpec, result: pb.RolloutResult, agent: str) -> BuiltRow:
    row: dict[str, Any] = dict(spec.row)  # a task row: what an earlier rollout produced is gone (task_fields)
    sent = _json_field(result.params_json, None)
    row["responses_create_params"] = sent if isinstance(sent, dict) and sent else spec.params
    response: Any = _spliced(result.response_json, 0x7B, 0x7D)  # {…}
    if response is None:
        response = _json_field(result.response_json, None)
    output: Any = _spliced(result.output_json, 0x5B, 0x5D)  # […]
    if output is None:
        output = _json_field(result.output_json, None)
        if output is None:
            # No trajectory of its own (a third-party gateway): the response's output list stands in for it.
            whole = response.value() if isinstance(response, RawJSON) else response
            if isinstance(whole, dict) and isinstance(whole.get("output"), list):
                output = whole["output"]
    ok = result.status == pb.ROLLOUT_STATUS_OK
    if response is not None or ok:
        row["response"] = response
        row["output"] = output if output is not None else []

    added: dict[str, Any] = {}
    if ok:
        fields = _json_field(result.verifier_fields_json, {})
        if not isinstance(fields, dict):
            fields = {}
        if "reward" not in fields and result.HasField("reward"):
            fields["reward"] = result.reward
        for key, value in fields.items():
            # The reward is the rollout's own, even where the input row had one; a task field is never replaced.
            if key != "reward" and (key in spec.row or key in RESERVED_KEYS or key in row or key.startswith("_ng_")):
                continue
            added[key] = value
            row[key] = value
    else:
        err = result.error
        row["error"] = {
            "stage": err.stage or "rollout",
            "kind": err.kind or "exception",
            "message": err.message,
            "http_status": err.http_status or None,
            "attempts": err.attempts or result.attempts,
        }

    seed = row["responses_create_params"].get("seed") if isinstance(row["responses_create_params"], dict) else None
    t = result.timings
    row["_rollout"] = {
        "id": spec.rollout_id,
        "task_index": spec.task_index,
        "repeat_index": spec.repeat_index,
        "agent": agent,
        "model": result.model or None,
        "seed": seed,
        "verifier_version": result.verifier_version or ("unknown" if ok else None),
        "attempts": result.attempts,
        "truncated": result.truncated,
        # One per model call: the policy version that served it (null: the agent's model had none).
        "policy_versions": [v or None for v in result.policy_versions],
        "timings": {"model_s": t.model_s, "tool_s": t.tool_s, "verify_s": t.verify_s, "total_s": t.total_s},
    }
    stamp_bookkeeping(row, spec, agent)
    return BuiltRow(row=row, ok=ok, added=added, stage=None if ok else row["error"]["stage"])


class MeansAccumulator:
    """Means of every numeric (bool as 0/1) added field, in the order the fields were first seen."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, fields: Mapping[str, Any]) -> None:
        for key, value in fields.items():
            if isinstance(value, bool):
                number = float(value)
            elif isinstance(value, (int, float)):
                number = float(value)
                if math.isnan(number):
                    continue
            else:
                continue
            self._sums[key] = self._sums.get(key, 0.0) + number
            self._counts[key] = self._counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: self._sums[key] / self._counts[key] for key in self._sums}
