"""The ``math`` and ``json_schema`` built-ins (they import math-verify/sympy and jsonschema, so they load lazily).

``math``: the final answer is parsed by math-verify (``\\boxed{}`` first, then the last expression in plain text)
and compared with ``expected_answer`` for mathematical equivalence, so ``\\boxed{1/2}`` earns 1.0 against
``0.5`` and ``\\boxed{1/3}`` earns 0.0. math-verify's own timeouts use ``SIGALRM``, which only works in the main
thread; the server runs this built-in in a worker thread (sympy must not block the event loop), so they are off.

``json_schema``: the final answer (optionally inside a ```json fence) must parse as JSON and validate against the
task's ``schema`` (an object, or JSON text). Adds ``json_valid`` and ``schema_valid`` and the first
``schema_error``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import jsonschema
from math_verify import parse, verify  # type: ignore[import-untyped]

from rollgate.verifier._text import final_answer
from rollgate.verifier.errors import InvalidTask

__all__ = ["json_schema", "math_verify"]

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


_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def _schema_of(task: dict[str, Any]) -> dict[str, Any]:
    schema = task.get("schema")
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidTask(f"json_schema: the task's 'schema' is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidTask("json_schema needs the task field 'schema' (a JSON Schema object)")
    validator_cls = jsonschema.validators.validator_for(schema)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidTask(f"json_schema: the task's 'schema' is not a valid JSON Schema: {exc.message}") from None
    return schema


def json_schema(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    schema = _schema_of(task)
    answer = final_answer(response)
    fenced = _FENCE.search(answer)
    text = fenced.group(1) if fenced else answer
    try:
        value = json.loads(text)
    except ValueError as exc:
        return {"reward": 0.0, "json_valid": False, "schema_valid": False, "schema_error": f"not JSON: {exc}"}
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return {"reward": 0.0, "json_valid": True, "schema_valid": False, "schema_error": f"{where}: {error.message}"}
    return {"reward": 1.0, "json_valid": True, "schema_valid": True, "schema_error": None}
