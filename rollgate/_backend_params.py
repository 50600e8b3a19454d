"""Per-request backend extras that NeMo Gym rows carry in ``responses_create_params.metadata``.

NeMo Gym's vLLM model server reads two keys of a request's ``metadata`` (OpenAI metadata values are strings, so each
holds JSON text): ``extra_body``, fields merged into the backend request (``'{"top_k": 20}'``), and
``chat_template_kwargs``, passed to the chat template (``'{"enable_thinking": false}'``). rollgate reads them the
same way, and takes a JSON object written in place of the string too. Shared by the collector (which checks every
row before a run) and the gateway (which applies them); nothing here imports either.

    metadata_objects({"metadata": {"extra_body": '{"top_k": 20}'}})  # {"extra_body": {"top_k": 20}}
    metadata_as_text({"metadata": {"extra_body": {"top_k": 20}}})  # {"metadata": {"extra_body": '{"top_k": 20}'}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["METADATA_KEYS", "metadata_as_text", "metadata_objects"]

METADATA_KEYS = ("extra_body", "chat_template_kwargs")


def metadata_objects(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: object}`` for each of ``METADATA_KEYS`` that ``params["metadata"]`` sets.

    Raises ``ValueError`` naming the field (``metadata.extra_body``) when one is not a JSON object."""
    metadata = params.get("metadata")
    if not isinstance(metadata, Mapping):
        return {}
    found: dict[str, dict[str, Any]] = {}
    for key in METADATA_KEYS:
        raw = metadata.get(key)
        if raw is None or raw == "":
            continue
        value = raw
        if isinstance(raw, str):
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"'metadata.{key}' is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"'metadata.{key}' must hold a JSON object, got {type(value).__name__}")
        found[key] = value
    return found


def metadata_as_text(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with any of ``METADATA_KEYS`` written as an object turned into JSON text (a new dict then).

    OpenAI's (and NeMo Gym's) ``metadata`` holds strings only: the params that go on to a verifier, the response
    and the row must keep to that, whichever way the user wrote them."""
    metadata = params.get("metadata")
    if not isinstance(metadata, dict) or not any(isinstance(metadata.get(k), dict) for k in METADATA_KEYS):
        return params
    text = {k: json.dumps(v, separators=(",", ":")) if k in METADATA_KEYS and isinstance(v, dict) else v
            for k, v in metadata.items()}
    return {**params, "metadata": text}
