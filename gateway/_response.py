"""A rollout's ``response``: always a complete Responses API object, whichever API the backend spoke.

Verifiers and NeMo Gym's own servers validate ``response`` with OpenAI's ``Response`` model
(``NeMoGymResponse`` is a subclass of it), which *requires* ``id``, ``created_at``, ``model``, ``object``,
``output``, ``parallel_tool_calls``, ``tool_choice`` and ``tools``, and a ``usage`` (when there is one) with both
token-detail objects. A ``chat_completions`` backend's answer, converted, has none of the request echoes; a
``responses`` backend (vLLM, SGLang, a proxy) may leave some out. ``complete_response`` fills what is missing:

- the request echoes (``tools``, ``tool_choice``, ``parallel_tool_calls``, ``instructions``, ``metadata``,
  ``temperature``, ``top_p``; ``max_output_tokens``, ``reasoning`` … when the request set them) from the rollout's
  effective params, or the API's default (``tools: []``, ``tool_choice: "auto"``, ``parallel_tool_calls: true``,
  ``metadata: {}``, else null), as the Responses API itself echoes them;
- ``id``, ``object``, ``created_at``, ``model``, ``status``, ``error``, ``incomplete_details``;
- ``usage`` summed over the rollout's model calls, its token details filled with 0 where the backend gave none;
- the ``id`` and ``status`` of each ``function_call_output`` item the gateway appended (OpenAI's output-item model
  requires both; NeMo Gym accepts either shape).

What the backend did return is kept as it is: only absent (or, for the required fields, null) values are filled.
The cost is one dict copy and a pass over the output items per rollout, not per model call.

    response = complete_response(last_model_answer, params, output=trajectory, usage=summed_usage)
    assert {"tools", "tool_choice", "parallel_tool_calls", "usage"} <= response.keys()
"""

from __future__ import annotations

import time
import uuid
from typing import Any

__all__ = ["RESPONSES_CREATE_PARAMS", "complete_response", "verifier_params"]

# The Responses API's create parameters, exactly the fields of NeMo Gym 0.7's ``NeMoGymResponseCreateParams-
# NonStreaming`` (a copy of OpenAI's, ``extra="forbid"``; the keys of its real /verify bodies). NeMo Gym's servers
# answer 422 to any other key in ``responses_create_params``.
RESPONSES_CREATE_PARAMS = frozenset({
    "background", "context_management", "conversation", "include", "input", "instructions", "max_output_tokens",
    "max_tool_calls", "metadata", "model", "moderation", "parallel_tool_calls", "previous_response_id", "prompt",
    "prompt_cache_key", "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store",
    "stream", "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
    "truncation", "user"})


def verifier_params(params: dict[str, Any]) -> dict[str, Any]:
    """The effective params as a resources server gets them (``/seed_session``, ``/verify``): the Responses API's
    fields only. Backend extras (``seed`` per repeat, vLLM's ``top_k``, ``return_token_ids`` …) steer sampling and
    stay in the row; a verifier has no use for them and NeMo Gym's servers refuse them."""
    if params.keys() <= RESPONSES_CREATE_PARAMS:
        return params
    return {k: v for k, v in params.items() if k in RESPONSES_CREATE_PARAMS}

# Request fields the Responses API echoes on its answer as they were sent. Only fields whose request and response
# shapes are the same (``conversation`` is not: an id string goes in, an object comes back), so an echo never turns
# a request the backend accepted into an invalid response. The first three are always there (null when unset), as
# in every answer of the API and every NeMo Gym row; the rest only when the request set them: a missing optional
# field validates as null does, and ~300 bytes of nulls on every row, serialised three times and parsed twice on
# its way to disk, cost the collector and the gateway measurably (bench/RESULTS.md, issue 13).
_ECHOED_ALWAYS = ("instructions", "temperature", "top_p")
_ECHOED_WHEN_SET = frozenset({"max_output_tokens", "max_tool_calls", "previous_response_id", "reasoning", "text",
                              "top_logprobs", "truncation", "user", "service_tier", "background", "prompt",
                              "prompt_cache_key", "prompt_cache_retention", "safety_identifier"})


def complete_response(last: dict[str, Any], params: dict[str, Any], *, output: list[dict[str, Any]],
                      usage: dict[str, Any] | None) -> dict[str, Any]:
    """``last`` (the final model answer, as a Responses object) with the rollout's ``output`` and ``usage``, and
    every field the Responses API requires or echoes filled from ``params`` or the API's defaults.

    ``output`` is placed as it is (the same list object: the servicer serialises it once for both the response
    and the row's top-level ``output``); its ``function_call_output`` items get an ``id`` and ``status`` in place.
    """
    response = {**last, "output": output, "usage": _complete_usage(usage)}
    response["object"] = "response"
    if not isinstance(response.get("id"), str):
        response["id"] = f"resp_{uuid.uuid4().hex}"
    created = response.get("created_at")
    if isinstance(created, bool) or not isinstance(created, int | float):
        response["created_at"] = time.time()
    if not isinstance(response.get("model"), str):
        response["model"] = str(params.get("model") or "")
    if response.get("status") is None:
        response["status"] = "incomplete" if response.get("incomplete_details") else "completed"
    response.setdefault("error", None)
    response.setdefault("incomplete_details", None)
    if not isinstance(response.get("parallel_tool_calls"), bool):
        parallel = params.get("parallel_tool_calls")
        response["parallel_tool_calls"] = parallel if isinstance(parallel, bool) else True
    if response.get("tool_choice") is None:
        response["tool_choice"] = _tool_choice(params.get("tool_choice"))
    if not isinstance(response.get("tools"), list):
        response["tools"] = _tools(params.get("tools"))
    if "metadata" not in response:
        metadata = params.get("metadata")
        response["metadata"] = metadata if isinstance(metadata, dict) else {}
    for key in _ECHOED_ALWAYS:
        response.setdefault(key, params.get(key))
    for key in _ECHOED_WHEN_SET.intersection(params):
        response.setdefault(key, params[key])
    for item in output:
        if item.get("type") == "function_call_output":
            if not isinstance(item.get("id"), str):
                call_id = item.get("call_id")
                item["id"] = f"fco_{call_id}" if isinstance(call_id, str) else f"fco_{uuid.uuid4().hex}"
            if item.get("status") is None:
                item["status"] = "completed"
    return response


def _complete_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Usage with every field OpenAI's ``ResponseUsage`` requires; None when no call reported any (an unknown
    count is not 0 tokens, and ``usage`` may be null)."""
    if not usage:
        return None
    done = dict(usage)
    inp = done.setdefault("input_tokens", 0)
    out = done.setdefault("output_tokens", 0)
    done.setdefault("total_tokens", inp + out)
    for key, count in (("input_tokens_details", "cached_tokens"), ("output_tokens_details", "reasoning_tokens")):
        details = done.get(key)
        if not isinstance(details, dict):
            done[key] = {count: 0}
        elif not isinstance(details.get(count), int):
            done[key] = {**details, count: 0}
    return done


def _tool_choice(choice: Any) -> Any:
    """The request's ``tool_choice`` in the Responses shape; the API's default ``auto`` when it set none."""
    if choice is None:
        return "auto"
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):  # Chat Completions' shape
        return {"type": "function", "name": choice["function"].get("name")}
    return choice


def _tools(tools: Any) -> list[Any]:
    """The request's ``tools`` in the Responses shape (a Chat Completions ``{"function": {...}}`` flattened)."""
    if not isinstance(tools, list):
        return []
    out: list[Any] = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        out.append({"type": "function", **fn} if isinstance(fn, dict) else tool)
    return out
