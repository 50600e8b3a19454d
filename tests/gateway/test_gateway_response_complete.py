"""A rollout's ``response`` is a complete Responses API object on both API paths (issue 13).

NeMo Gym's servers validate ``response`` as ``NeMoGymResponse`` (a subclass of OpenAI's ``Response``) and
answered 422 to what the ``chat_completions`` path sent before. Through a real gateway in front of the fake model
(whose ``/responses`` answer, like many servers', leaves out the request echoes and the usage details), the
result's ``response`` carries every field those models require, echoing the request's effective params, and
OpenAI's own ``Response`` model (the ``openai`` package of the dev extra) validates it; ``tests/compat`` does the
same with NeMo Gym's model in its own venv.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import Response

from rollgate.gateway import GatewayCore, RolloutRequest
from rollgate.gateway._response import complete_response
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import make_config, req, running_gateway

TOOLS = [{"type": "function", "name": "add", "description": "a + b", "strict": False,
          "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}]
# What OpenAI's ``Response`` (openai 2.44, which NeMo Gym 0.7 pins) requires, and the type each must have.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str, "created_at": (int, float), "model": str, "object": str, "output": list,
    "parallel_tool_calls": bool, "tool_choice": (str, dict), "tools": list,
}
# Optional there but always present in ours (as in the API's own answers and NeMo Gym's rows), and their value when
# the request did not set them.
ECHOED_DEFAULTS: dict[str, Any] = {"error": None, "incomplete_details": None, "instructions": None, "metadata": {},
                                   "top_p": None, "status": "completed"}


async def _rollouts(api: str, fake_model: FakeModelServer) -> list[dict[str, Any]]:
    """The responses of a tool-calling rollout (tools declared, temperature set) and a plain one."""
    with_tool = {"responses_create_params": {"input": 'tool: add {"a": 1, "b": 2}', "tools": TOOLS,
                                             "temperature": 0.25, "max_output_tokens": 50},
                 "expected_answer": 'tools said: {"sum": 3}'}
    plain = {"responses_create_params": {"input": "say: 4"}, "expected_answer": "4"}
    async with FakeResourcesServer() as rs:
        async with running_gateway(make_config(fake_model.base_url, rs.url, api=api)) as (stub, _):
            results = [await stub.Rollout(req(f"r{i}", t), timeout=30) for i, t in enumerate((with_tool, plain))]
    for res in results:
        assert res.status == pb.ROLLOUT_STATUS_OK, res.error
        assert res.reward == 1.0
    return [orjson.loads(res.response_json) for res in results]


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_the_response_has_every_field_the_responses_api_requires(
        api: str, fake_model: FakeModelServer) -> None:
    with_tool, plain = await _rollouts(api, fake_model)
    for response in (with_tool, plain):
        for key, kind in REQUIRED.items():
            assert isinstance(response.get(key), kind), (key, response.get(key))
        assert response["object"] == "response" and response["model"] == "fake-model"
        for key, default in ECHOED_DEFAULTS.items():
            assert key in response and response[key] == default, (key, response.get(key))
        usage = response["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
        assert isinstance(usage["input_tokens_details"]["cached_tokens"], int)
        assert isinstance(usage["output_tokens_details"]["reasoning_tokens"], int)
    # The request's effective params are echoed; the API's defaults where it set none.
    assert with_tool["tools"] == TOOLS and with_tool["temperature"] == 0.25
    assert (with_tool["tool_choice"], with_tool["parallel_tool_calls"]) == ("auto", True)
    assert (plain["tools"], plain["temperature"]) == ([], None)
    # An optional echo the request did not set is left out (it validates as null does), one it set is there.
    assert with_tool["max_output_tokens"] == 50 and "max_output_tokens" not in plain
    # The tool loop's usage is the sum of its two model calls.
    assert with_tool["usage"]["output_tokens"] > plain["usage"]["output_tokens"]
    # Each tool output the gateway appended is a full output item (OpenAI's model requires id and status).
    (tool_output,) = [i for i in with_tool["output"] if i["type"] == "function_call_output"]
    assert tool_output["id"].startswith("fco_") and tool_output["status"] == "completed"
    assert [i["type"] for i in with_tool["output"]] == ["function_call", "function_call_output", "message"]


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_openais_own_response_model_accepts_the_response(api: str, fake_model: FakeModelServer) -> None:
    for response in await _rollouts(api, fake_model):
        validated = Response.model_validate(response)
        assert validated.output[-1].type == "message"
        assert validated.usage is not None and validated.usage.input_tokens_details.cached_tokens == 0


async def test_a_stored_response_verified_again_is_completed_like_a_fresh_one(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    # A row written before issue 13 (chat_completions path): none of the request echoes, usage without details.
    stored = {"id": "resp_old", "object": "response", "created_at": 1, "model": "fake-model", "status": "completed",
              "output": [{"type": "message", "id": "msg_old", "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": "4", "annotations": []}]}],
              "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}
    row = {"responses_create_params": {"input": "say: 4", "temperature": 0.5}, "expected_answer": "4"}
    request = RolloutRequest.from_dicts("r1", "a", row)
    request.prior_response_json = orjson.dumps(stored)
    async with GatewayCore(make_config(fake_model.base_url, fake_resources.url, kind="single_turn")) as core:
        out = await core.run_rollout(request)
    assert out.ok and out.reward == 1.0, out.error
    assert sum(fake_model.requests.values()) == 0  # re-verified, not regenerated
    ((_, body),) = fake_resources.verified
    sent = body["response"]
    assert sent == out.response
    assert (sent["id"], sent["output"], sent["created_at"]) == ("resp_old", stored["output"], 1)  # kept as stored
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"], sent["temperature"]) == (
        [], "auto", True, 0.5)
    assert sent["usage"]["input_tokens_details"] == {"cached_tokens": 0}


def test_what_the_backend_returned_is_kept_and_only_the_missing_is_filled() -> None:
    params = {"model": "m", "input": "hi", "temperature": 0.5, "metadata": {"k": "v"}, "tool_choice": "required",
              "parallel_tool_calls": False, "tools": TOOLS}
    backend = {"id": "resp_1", "object": "response", "created_at": 7, "model": "served-name", "temperature": 0.9,
               "tools": [], "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    output: list[dict[str, Any]] = []
    done = complete_response(backend, params, output=output, usage=None)
    # The backend's own values win; the request fills only what it left out.
    assert (done["id"], done["created_at"], done["model"], done["temperature"]) == ("resp_1", 7, "served-name", 0.9)
    assert done["tools"] == [] and done["status"] == "incomplete"
    assert (done["metadata"], done["tool_choice"], done["parallel_tool_calls"]) == ({"k": "v"}, "required", False)
    assert done["output"] is output  # the same list: the servicer serialises it once for response and row
    assert done["usage"] is None  # no call reported usage: unknown, not zero
    assert backend.keys() < done.keys() and "top_p" not in backend  # the backend's dict is not changed


def test_chat_completions_shaped_tools_and_tool_choice_are_echoed_in_the_responses_shape() -> None:
    chat_tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    params = {"model": "m", "tools": chat_tools, "tool_choice": {"type": "function", "function": {"name": "add"}}}
    done = complete_response({}, params, output=[], usage={"input_tokens": 3, "output_tokens": 2})
    assert done["tools"] == [{"type": "function", "name": "add", "parameters": {"type": "object"}}]
    assert done["tool_choice"] == {"type": "function", "name": "add"}
    assert done["id"].startswith("resp_") and isinstance(done["created_at"], float) and done["model"] == "m"
    assert done["usage"] == {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5,
                             "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}
