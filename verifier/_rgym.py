"""The reasoning-gym bridge (optional extra ``rollgate[reasoning]``): score with reasoning-gym's own scorer, and
write reasoning-gym tasks as an input JSONL.

A task row written by ``rollgate verifier tasks reasoning_gym +dataset=NAME +size=N +seed=S
+output_jsonl_fpath=…`` carries ``question``, ``expected_answer`` (the dataset's answer) and ``metadata``
(including ``source_dataset``); the ``reasoning_gym`` built-in gives the final answer and that entry to
the dataset's own ``score_answer``, whose float is the reward.

The scorer is built once per dataset and cached for the life of the process. ``get_score_answer_fn`` would
build a full default-config dataset on every call (word lists, anagram tables, ARC boards: tens to hundreds of
ms, more on a cold disk); instead the registered dataset class is instantiated once with its default config at
``size=1`` and its bound ``score_answer`` is kept. ``score_answer`` reads no generated rows in reasoning-gym
0.1.25: it uses the entry it is given plus, for a few datasets, state derived from the *config* only
(``word_ladder``: the vocabulary for the default word lengths; ``arc_agi``/``rearc``: board format;
``decimal_arithmetic``, ``polynomial_equations``, ``puzzle24``, ``time_intervals``: config tolerances). Size and
seed never matter, and the tasks command writes default-config rows, so the cached scorer gives the same reward
as the generating dataset's own ``score_answer`` (``tests/verifier/test_rgym.py`` checks 30 datasets). Rows made
with a non-default config elsewhere are scored with the default config, as ``get_score_answer_fn`` would.

JSON has no tuples: ``arc_agi`` and ``rearc`` compare the parsed answer board (a tuple of tuples) with
``metadata["output"]`` by ``==``, so the built-in turns that grid (a list of lists after JSON) back into tuples
before scoring; every other dataset tested scores the JSON metadata as it is.

A scorer that raises on the model's answer (``prime_factorization`` on "I don't know") means the answer is wrong:
reward 0 and a ``score_error`` field ``"TypeName: message"``. An unknown dataset is ``InvalidTask``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, Field

from rollgate._cli import CliError, parse_cli
from rollgate.verifier._text import final_answer
from rollgate.verifier.errors import InvalidTask, VerifierLoadError

__all__ = ["TasksConfig", "reasoning_gym_verify", "scorer", "write_tasks", "tasks_main"]

INSTALL_HINT = "reasoning-gym is not installed; install the extra: pip install 'rollgate[reasoning]'"


def _rg() -> ModuleType:
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError:
        raise VerifierLoadError(INSTALL_HINT, spec="reasoning_gym") from None


ScoreFn = Callable[[Any, dict[str, Any]], Any]

_SCORERS: dict[str, ScoreFn] = {}
_BUILD_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()
_MAX_ERROR_CHARS = 300


# Metadata grids that reasoning-gym keeps as tuples of tuples and compares with ``==``.
_TUPLE_GRIDS: dict[str, tuple[str, ...]] = {"arc_agi": ("input", "output"), "rearc": ("input", "output")}


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _revived(name: str, metadata: dict[str, Any]) -> dict[str, Any]:
    keys = _TUPLE_GRIDS.get(name)
    if not keys:
        return metadata
    return {**metadata, **{k: _as_tuples(metadata[k]) for k in keys if isinstance(metadata.get(k), list)}}


def _build_scorer(rg: ModuleType, name: str) -> ScoreFn:
    registry = getattr(getattr(rg, "factory", None), "DATASETS", None)
    if not isinstance(registry, dict):  # a reasoning-gym without the registry we know: its public (slow) way
        return rg.get_score_answer_fn(name)  # type: ignore[no-any-return]
    if name not in registry:
        raise ValueError(f"Dataset '{name}' not registered")
    dataset_cls, config_cls = registry[name]
    try:
        config = config_cls(size=1, seed=0)  # size=1: datasets that generate eagerly make one row, not 500
    except TypeError:
        config = config_cls()
    return dataset_cls(config=config).score_answer  # type: ignore[no-any-return]


def scorer(name: str) -> ScoreFn:
    """The cached ``score_answer`` of reasoning-gym dataset ``name`` (built on first use, once even when threads
    ask together). Raises ``InvalidTask`` for a dataset reasoning-gym cannot build, ``VerifierLoadError`` when
    reasoning-gym is not installed."""
    fn = _SCORERS.get(name)
    if fn is not None:
        return fn
    rg = _rg()
    with _LOCKS_LOCK:
        lock = _BUILD_LOCKS.setdefault(name, threading.Lock())
    with lock:
        fn = _SCORERS.get(name)
        if fn is None:
            try:
                fn = _build_scorer(rg, name)
            except Exception as exc:  # reasoning-gym raises a plain error for an unknown dataset
                with _LOCKS_LOCK:  # no lock kept per bad name a task file happens to carry
                    _BUILD_LOCKS.pop(name, None)
                raise InvalidTask(f"reasoning_gym: no scorer for dataset {name!r}: {exc}") from None
            _SCORERS[name] = fn
    return fn


def reasoning_gym_verify(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    metadata = task.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("source_dataset"), str):
        raise InvalidTask(
            "reasoning_gym needs the task field 'metadata' with 'source_dataset' (as the tasks command writes)"
        )
    name = metadata["source_dataset"]
    score_fn = scorer(name)
    entry = {"question": task.get("question", ""), "answer": task.get("expected_answer"),
             "metadata": _revived(name, metadata)}
    answer = final_answer(response)
    try:
        reward = float(score_fn(answer, entry))
    except Exception as exc:  # the scorer could not make sense of the answer: a wrong answer, not a failed rollout
        message = f"{type(exc).__name__}: {exc}"
        if len(message) > _MAX_ERROR_CHARS:
            message = message[: _MAX_ERROR_CHARS - 1] + "…"
        return {"reward": 0.0, "accuracy": 0.0, "extracted_answer": answer, "score_error": message}
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
