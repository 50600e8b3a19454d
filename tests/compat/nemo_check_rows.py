"""Validate rollout rows with NeMo Gym's and OpenAI's own models; run by the compatibility suite in NeMo Gym's venv.

    .nemo-gym-venv/0.7.0/bin/python tests/compat/nemo_check_rows.py ROWS.jsonl [...]

Prints one JSON object on stdout: ``{path: [{check: error or null, ...} per row]}``, the checks being
- ``NeMoGymResponse``: ``nemo_gym.openai_utils.NeMoGymResponse.model_validate(row["response"])``, what NeMo Gym's
  agents and servers parse every response with;
- ``openai.Response``: ``openai.types.responses.Response.model_validate(row["response"])``;
- ``BaseVerifyRequest``: NeMo Gym's ``/verify`` body model on the row's ``responses_create_params`` and
  ``response``, so NeMo Gym's servers can score the row again (``gym eval reverify``);
- ``token fields kept``: every output item that carries training-mode token fields (``prompt_token_ids``,
  ``generation_token_ids``, ``generation_log_probs``) still has them, equal, once ``NeMoGymResponse`` has parsed
  the response (its training item models), so NeMo Gym's readers see the tokens we wrote.
Imports go through importlib so that this file type-checks where NeMo Gym is not installed.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

_TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")


def _checks() -> dict[str, Callable[[dict[str, Any]], object]]:
    nemo_response: Any = importlib.import_module("nemo_gym.openai_utils").NeMoGymResponse
    verify_request: Any = importlib.import_module("nemo_gym.base_resources_server").BaseVerifyRequest
    openai_response: Any = importlib.import_module("openai.types.responses").Response

    def token_fields_kept(row: dict[str, Any]) -> None:
        parsed = nemo_response.model_validate(row["response"]).model_dump()["output"]
        for i, (item, back) in enumerate(zip(row["response"]["output"], parsed, strict=True)):
            for field in _TOKEN_FIELDS:
                if field in item and back.get(field) != item[field]:
                    raise ValueError(f"output item {i}: {field} lost or changed by NeMoGymResponse")

    return {
        "NeMoGymResponse": lambda row: nemo_response.model_validate(row["response"]),
        "token fields kept": token_fields_kept,
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
