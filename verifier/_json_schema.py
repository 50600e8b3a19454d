"""The ``json_schema`` built-in (it imports jsonschema, so it loads lazily).

The final answer (optionally inside a ```json fence) must parse as JSON and validate against the task's
``schema`` (an object, or JSON text). Adds ``json_valid`` and ``schema_valid`` and the first ``schema_error``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from rollgate.verifier._text import final_answer
from rollgate.verifier.errors import InvalidTask

__all__ = ["json_schema"]


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
