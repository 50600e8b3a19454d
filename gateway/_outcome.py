"""What goes into and comes out of one rollout, as plain dataclasses (the core's side of the wire types).

    request = RolloutRequest.from_dicts("r1", "my_agent", {"responses_create_params": {"input": "hi"}})
    outcome.ok  # True when error is None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["RolloutErrorInfo", "RolloutOutcome", "RolloutRequest", "Timings"]


@dataclass(slots=True)
class RolloutRequest:
    """One rollout to run; task and params as JSON bytes, exactly as they arrive on the wire.

        task = {"responses_create_params": {"input": "What is 2 + 2?"}}
        request = RolloutRequest.from_dicts("r1", "my_agent", task, deadline_s=600)
    """

    rollout_id: str
    agent: str
    task_json: bytes
    params_json: bytes = b""
    task_index: int = 0
    repeat_index: int = 0
    deadline_s: float = 0.0
    # A response kept from an earlier run whose verify failed: re-verify it instead of calling the model.
    prior_response_json: bytes = b""
    # Training mode for this rollout alone (as the agent's ``training: true`` for all of its rollouts).
    training: bool = False

    @classmethod
    def from_dicts(cls, rollout_id: str, agent: str, task: dict[str, Any],
                   params: dict[str, Any] | None = None, *, deadline_s: float = 0.0) -> RolloutRequest:
        """Build a request from plain dicts (params default to the task's ``responses_create_params``)."""
        return cls(rollout_id, agent, orjson.dumps(task), orjson.dumps(params) if params is not None else b"",
                   deadline_s=deadline_s)


@dataclass(slots=True)
class Timings:
    """Seconds spent: model calls (retries included), tool phases (wall time), seed/verify/close, all of it.

        t = outcome.timings
        overhead_s = t.total_s - t.model_s - t.tool_s - t.verify_s  # the gateway's own share
    """

    model_s: float = 0.0
    tool_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0


@dataclass(slots=True)
class RolloutErrorInfo:
    """Where (stage) and how (kind) a rollout failed.

        err = outcome.error  # None when the rollout succeeded
        if err is not None:
            print(f"{err.stage}/{err.kind} after {err.attempts} attempt(s): {err.message}")
    """

    stage: str
    kind: str
    message: str
    http_status: int = 0
    attempts: int = 0


@dataclass(slots=True)
class RolloutOutcome:
    """The result of one rollout; ``error`` is None exactly when it succeeded.

        outcome = await core.run_rollout(request)
        if outcome.ok:
            print(outcome.reward, outcome.verifier_version)
    """

    rollout_id: str
    reward: float | None = None
    verifier_fields: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    error: RolloutErrorInfo | None = None
    timings: Timings = field(default_factory=Timings)
    verifier_version: str = ""
    model: str = ""
    attempts: int = 0
    truncated: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    policy_versions: list[str | None] = field(default_factory=list)  # per model call, in order

    @property
    def ok(self) -> bool:
        return self.error is None
