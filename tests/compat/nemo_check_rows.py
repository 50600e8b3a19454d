"""Validate rollout rows with NeMo Gym's and OpenAI's own models; run by the compatibility suite in NeMo Gym's venv.

    .nemo-gym-venv/0.7.0/bin/python tests/compat/nemo_check_rows.py ROWS.jsonl [...]

Prints one JSON object on stdout: ``{path: [{check: error or null, ...} per row]}``, the checks being
- ``NeMoGymResponse``: ``nemo_gym.openai_utils.NeMoGymResponse.model_validate(row["response"])``, what NeMo Gym's
  agents and servers parse every response with;
- ``openai.Response``: ``openai.types.responses.Response.model_validate(row["response"])``;
- ``BaseVerifyRequest``: NeMo Gym's ``/verify`` body model on the row's ``responses_create_params`` and
  ``response``, so NeMo Gym's servers can score the row again (``gym eval reverify``).
Imports go through importlib so that this file type-checks where NeMo Gym is not installed.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import Any


def _checks() -> dict[str, Callable[[dict[str, Any]], object]]:
    nemo_response: Any = importlib.import_module("nemo_gym.openai_utils").NeMoGymResponse
    verify_request: Any = importlib.import_module("nemo_gym.base_resources_server").BaseVerifyRequest
    openai_response: Any = importlib.import_module("openai.types.responses").Response
    return {
        "NeMoGymResponse": lambda row: nemo_response.model_validate(row["response"]),
        "openai.Response": lambda row: openai_response.model_validate(row["response"]),
        "BaseVerifyRequest": lambda row: verify_request.model_validate(
            {"responses_create_params": row["responses_create_params"], "response": row["response"]}),
    }


def _error(check: Callable[[dict[str, Any]], object], row: dict[str, Any]) -> str | None:
    try:
        check(row)
    except Exception as exc:  # a validation error, or a row without the key: both are findings
        return f"{type(exc).__name__}: {exc}"[:3000]
    return None


def main(paths: list[str]) -> int:
    checks = _checks()
    report: dict[str, list[dict[str, str | None]]] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        report[path] = [{name: _error(check, row) for name, check in checks.items()} for row in rows]
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
