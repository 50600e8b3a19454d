"""Rollout ids: stable across runs, distinct for every (task position, repeat).

The id hashes the task index as well as the row, so two identical rows are two rollouts; it hashes the effective
params and the agent, so changing either gives new ids (a resume never mixes them up).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from rollgate.collector._json import canonical

__all__ = ["ROLLOUT_ID_LENGTH", "rollout_id"]

ROLLOUT_ID_LENGTH = 24


def rollout_id(
    task_index: int, row: Mapping[str, Any], params: Mapping[str, Any], repeat_index: int, agent: str
) -> str:
    payload = canonical(
        {"task_index": task_index, "task": row, "params": params, "repeat_index": repeat_index, "agent": agent}
    )
    return hashlib.sha256(payload).hexdigest()[:ROLLOUT_ID_LENGTH]
