"""The ``math`` built-in (it imports math-verify and sympy, so it loads lazily).

``math``: the final answer is parsed by math-verify (``\\boxed{}`` first, then the last expression in plain text)
and compared with ``expected_answer`` for mathematical equivalence, so ``\\boxed{1/2}`` earns 1.0 against
``0.5`` and ``\\boxed{1/3}`` earns 0.0. math-verify's own timeouts use ``SIGALRM``, which only works in the main
thread; the server runs this built-in in a worker thread (sympy must not block the event loop), so they are off.
"""

from __future__ import annotations

import logging
from typing import Any

from math_verify import parse, verify  # type: ignore[import-untyped]

from rollgate.verifier._text import final_answer
from rollgate.verifier.errors import InvalidTask

__all__ = ["math_verify"]

# With timeouts off, math-verify warns on every call; the reason is documented above.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _parse_gold(expected: str) -> list[Any]:
    # A bare reference such as "x+1" is not found by the plain-text extractor; as LaTeX it is.
    for text in (expected, f"${expected}$", f"\\boxed{{{expected}}}"):
        gold = parse(text, parsing_timeout=None)
        if gold:
            return list(gold)
    return []


def math_verify(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    expected = task.get("expected_answer")
    if expected is None or isinstance(expected, bool) or not isinstance(expected, (str, int, float)):
        raise InvalidTask("math needs the task field 'expected_answer' (a number or LaTeX expression)")
    gold = _parse_gold(str(expected))
    if not gold:
        raise InvalidTask(f"math: 'expected_answer' {expected!r} is not a mathematical expression math-verify reads")
    answer = final_answer(response)
    predicted = parse(answer, parsing_timeout=None) if answer else []
    ok = bool(predicted) and bool(verify(gold, predicted, timeout_seconds=None))
    extracted = str(predicted[-1]) if predicted else ""
    reward = 1.0 if ok else 0.0
    return {"reward": reward, "accuracy": reward, "extracted_answer": extracted}
