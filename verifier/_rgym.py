"""The reasoning-gym bridge (optional extra ``rollgate[reasoning]``): score with reasoning-gym's own scorer, and
write reasoning-gym tasks as an input JSONL.

A task row written by ``rollgate verifier tasks reasoning_gym +dataset=NAME +size=N +seed=S
+output_jsonl_fpath=…`` carries ``question``, ``expected_answer`` (the dataset's answer) and ``metadata``
(including ``source_dataset``); the ``reasoning_gym`` built-in gives the final answer and that entry to
``reasoning_gym.get_score_answer_fn(metadata["source_dataset"])``, whose float is the reward.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, Field

from rollgate._cli import CliError, parse_cli
from rollgate.verifier._text import final_answer
from rollgate.verifier.errors import InvalidTask, VerifierLoadError

__all__ = ["TasksConfig", "reasoning_gym_verify", "write_tasks", "tasks_main"]

INSTALL_HINT = "reasoning-gym is not installed; install the extra: pip install 'rollgate[reasoning]'"


def _rg() -> ModuleType:
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError:
        raise VerifierLoadError(INSTALL_HINT, spec="reasoning_gym") from None


def reasoning_gym_verify(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    metadata = task.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("source_dataset"), str):
        raise InvalidTask(
            "reasoning_gym needs the task field 'metadata' with 'source_dataset' (as the tasks command writes)"
        )
    rg = _rg()
    try:
        score_fn = rg.get_score_answer_fn(metadata["source_dataset"])
    except Exception as exc:  # reasoning-gym raises a plain error for an unknown dataset
        raise InvalidTask(f"reasoning_gym: no scorer for dataset {metadata['source_dataset']!r}: {exc}") from None
    entry = {"question": task.get("question", ""), "answer": task.get("expected_answer"), "metadata": metadata}
    answer = final_answer(response)
    reward = float(score_fn(answer, entry))
    return {"reward": reward, "accuracy": reward, "extracted_answer": answer}


class TasksConfig(BaseModel):
    """``rollgate verifier tasks reasoning_gym`` arguments."""

    source: str
    """Where the tasks come from; only ``reasoning_gym`` for now."""
    dataset: str
    """The reasoning-gym dataset name, e.g. basic_arithmetic, leg_counting, chain_sum."""
    size: int = Field(100, ge=1)
    """How many tasks to write."""
    seed: int = 0
    """The dataset's seed: the same seed writes the same tasks."""
    output_jsonl_fpath: str
    """The input JSONL to write (one task per line)."""
    system_prompt: str | None = None
    """Optional developer message put before each question."""


def _jsonable(value: Any) -> Any:
    # reasoning-gym metadata holds tuples and sometimes sets; JSON has lists.
    return json.loads(json.dumps(value, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


def write_tasks(cfg: TasksConfig) -> int:
    """Write ``cfg.size`` tasks; returns how many were written."""
    rg = _rg()
    try:
        dataset = rg.create_dataset(cfg.dataset, size=cfg.size, seed=cfg.seed)
    except Exception as exc:
        raise CliError(f"reasoning-gym cannot create dataset {cfg.dataset!r}: {exc}") from None
    out = Path(cfg.output_jsonl_fpath)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for entry in dataset:
            messages: list[dict[str, str]] = []
            if cfg.system_prompt:
                messages.append({"role": "developer", "content": cfg.system_prompt})
            messages.append({"role": "user", "content": str(entry["question"])})
            row = {
                "responses_create_params": {"input": messages},
                "question": str(entry["question"]),
                "expected_answer": entry["answer"],
                "metadata": _jsonable(entry["metadata"]),
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += 1
    os.replace(tmp, out)  # a half-written task file is never left under the real name
    return written


def tasks_main(argv: list[str]) -> int:
    cfg = parse_cli(argv, TasksConfig, positional=["source"])
    if cfg.source != "reasoning_gym":
        raise CliError(f"unknown task source {cfg.source!r}; sources: reasoning_gym")
    try:
        n = write_tasks(cfg)
    except VerifierLoadError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {n} {cfg.dataset} tasks to {cfg.output_jsonl_fpath}", file=sys.stderr)
    print(json.dumps({"tasks": n, "dataset": cfg.dataset, "output_jsonl_fpath": cfg.output_jsonl_fpath}))
    return 0
