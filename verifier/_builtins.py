"""Verifiers that ship with rollgate, served by name (``rollgate verifier serve math``).

Each is a plain ``verify(task, response)`` function (``llm_judge`` is async). ``BUILTINS`` maps the served name
to a ``Builtin`` whose ``load()`` imports it, so heavy dependencies (sympy behind ``math``, reasoning-gym) are
only imported by the server that uses them. All of them judge the *final answer* (``verifier._text``): reasoning
items and ``<think>`` blocks are set aside.

- ``exact_match``: 1.0 when the answer equals ``expected_answer`` (a value or a list of accepted values) after
  trimming, case folding and whitespace collapsing. Adds ``accuracy`` and ``extracted_answer``.
- ``contains``: 1.0 when ``expected_answer`` (or any of a list) occurs in the answer, case-folded.
- ``regex``: 1.0 when the task's ``pattern`` matches the answer (``search``; ``ignore_case`` optional). Matched
  with the ``regex`` package (``re``'s syntax; ``re`` has no timeout), each (pattern, flags) compiled once (LRU),
  in the verify thread pool with ``timeout=`` the call's time left: a pattern that backtracks without end fails
  that rollout as ``timeout`` and frees its thread, and the event loop never runs a match.
- ``multiple_choice``: the option the answer chose ("Answer: C", "\\boxed{B}", "I'd go with C", "A. Paris", the
  option's text when the task lists ``options`` …; the rules in order are in ``verifier._choice``), compared with
  ``expected_answer`` (a letter, or an option's text).
- ``math``: ``math-verify`` equivalence of the answer (``\\boxed{}`` or plain) with ``expected_answer``. Runs in a
  worker process (``process=True``), killed past ``--verify-timeout-s``: such an answer (``9^{9^{9^{9}}}``) fails
  its rollout as ``timeout`` (504), it is not scored 0.
- ``json_schema``: the answer (fences allowed) parses as JSON and validates against the task's ``schema``.
- ``llm_judge``: asks an OpenAI-compatible model with a rubric and parses a score (``verifier._judge``).
- ``reasoning_gym``: reasoning-gym's own scorer for the task's ``metadata`` (optional extra ``rollgate[reasoning]``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import regex as _regex  # type: ignore[import-untyped]

from rollgate.verifier._isolation import WorkerFunction, time_left_s
from rollgate.verifier._text import final_answer, normalize
from rollgate.verifier.errors import InvalidTask, VerifyTimeout

__all__ = ["BUILTINS", "Builtin", "expected_values", "scored"]

VerifyFn = Callable[[dict[str, Any], dict[str, Any]], Any]


def expected_values(task: dict[str, Any], name: str) -> list[str]:
    if "expected_answer" not in task or task["expected_answer"] is None:
        raise InvalidTask(f"{name} needs the task field 'expected_answer' (the reference answer as text)")
    expected = task["expected_answer"]
    values = expected if isinstance(expected, list) else [expected]
    if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise InvalidTask(
            f"{name}: 'expected_answer' must be a string, a number or a non-empty list of them, got {expected!r}"
        )
    return [str(v) for v in values]


def scored(reward: float, answer: str, **extra: Any) -> dict[str, Any]:
    return {"reward": reward, "accuracy": reward, "extracted_answer": answer, **extra}


def exact_match(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    accepted = [normalize(v) for v in expected_values(task, "exact_match")]
    answer = final_answer(response)
    return scored(1.0 if normalize(answer) in accepted else 0.0, answer)


def contains(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    wanted = [normalize(v) for v in expected_values(task, "contains")]
    answer = final_answer(response)
    folded = normalize(answer)
    return scored(1.0 if any(w and w in folded for w in wanted) else 0.0, answer)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str, flags: int) -> Any:
    # A run's tasks reuse a few patterns: compile each once. A bad one raises every time (errors are not cached).
    return _regex.compile(pattern, flags)


def regex(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    pattern = task.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise InvalidTask("regex needs the task field 'pattern' (a Python regular expression, matched with re.search)")
    try:
        compiled = _compiled(pattern, _regex.IGNORECASE if task.get("ignore_case") else 0)
    except _regex.error as exc:
        raise InvalidTask(f"regex: 'pattern' {pattern!r} does not compile: {exc}") from None
    answer = final_answer(response)
    limit = time_left_s()
    try:
        # concurrent=True releases the GIL while matching, so a long match never stalls the event loop.
        found = compiled.search(answer, concurrent=True, timeout=limit)
    except TimeoutError:
        raise VerifyTimeout(f"regex: matching 'pattern' {pattern!r} ran past its time limit ({limit:.3g}s): it "
                            "backtracks without end on this answer") from None
    return scored(1.0 if found else 0.0, answer)


@dataclass(frozen=True)
class Builtin:
    """A built-in verifier: ``load()`` returns the callable. Where it runs: ``inline`` on the event loop (fast,
    pure code); ``process`` in a worker process killed past the time limit (CPU-heavy code that a thread could
    not stop, e.g. sympy); otherwise in the verify thread pool under the time limit.

        Builtin(_load_math, process=True)     # the loaded function is sent to workers by module:function name
    """

    loader: Callable[[], Callable[..., Any]]
    inline: bool = False
    process: bool = False

    def load(self) -> Callable[..., Any]:
        fn = self.loader()
        if self.process:
            return WorkerFunction(f"{fn.__module__}:{fn.__qualname__}")
        return fn


def _load_multiple_choice() -> Callable[..., Any]:
    from rollgate.verifier._choice import multiple_choice

    return multiple_choice


def _load_math() -> Callable[..., Any]:
    from rollgate.verifier._math import math_verify

    return math_verify


def _load_json_schema() -> Callable[..., Any]:
    from rollgate.verifier._json_schema import json_schema

    return json_schema


def _load_judge() -> Callable[..., Any]:
    from rollgate.verifier._judge import LLMJudge

    return LLMJudge.from_env()


def _load_reasoning_gym() -> Callable[..., Any]:
    from rollgate.verifier._rgym import _rg, reasoning_gym_verify

    _rg()  # the extra is imported lazily: without it, fail at load (serve exits 2 with the install hint)
    return reasoning_gym_verify


BUILTINS: dict[str, Builtin] = {
    "exact_match": Builtin(lambda: exact_match, inline=True),
    "contains": Builtin(lambda: contains, inline=True),
    # Off the loop: a task's pattern may backtrack for as long as its time limit lets it.
    "regex": Builtin(lambda: regex),
    "multiple_choice": Builtin(_load_multiple_choice, inline=True),
    # sympy can run forever in C code on a hostile answer (9^{9^{9^{9}}}): only killing its process stops it.
    "math": Builtin(_load_math, process=True),
    "json_schema": Builtin(_load_json_schema, inline=True),
    "llm_judge": Builtin(_load_judge),
    "reasoning_gym": Builtin(_load_reasoning_gym),
}
