"""Backend extras: vLLM/SGLang sampling knobs reach the model, as NeMo Gym's vLLM server sends them.

Three sources, lowest first: the agent's ``model.extra_body`` / ``model.chat_template_kwargs``, the request's own
fields (``top_k`` … in ``responses_create_params``), and the row's ``metadata.extra_body`` /
``metadata.chat_template_kwargs`` (JSON text, as NeMo Gym rows carry them). Checked here at the fake model through
a real gateway; ``tests/compat/test_backend_extras_with_nemo.py`` compares with NeMo Gym's own vLLM server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from rollgate import gateway
from rollgate._backend_params import metadata_as_text, metadata_objects
from rollgate.gateway import Security
from rollgate.gateway._config import ModelEndpoint
from rollgate.gateway._convert import responses_to_chat
from rollgate.gateway._extras import with_extras
from rollgate.gateway._token_prompts import completions_body
from rollgate.gateway.errors import InputError
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import collect, live_gateway, make_config, req, running_gateway, task

VLLM_SAMPLING = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2, "stop_token_ids": [7],
                 "ignore_eos": False, "skip_special_tokens": False}


def _model(**fields: Any) -> ModelEndpoint:
    return ModelEndpoint(base_urls=["http://127.0.0.1:1/v1"], name="m", **fields)


def test_vllm_sampling_parameters_go_to_the_chat_backend_as_they_are() -> None:
    body, dropped = responses_to_chat({"input": "hi", "temperature": 0.3, **VLLM_SAMPLING,
                                       "chat_template_kwargs": {"enable_thinking": False},
                                       "metadata": {"extra_body": "{}"}}, model="m")
    assert {k: body[k] for k in VLLM_SAMPLING} == VLLM_SAMPLING
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "metadata" not in body  # read for its extras, not sent (NeMo Gym's vLLM server does the same)
    assert dropped == []


def test_completions_calls_carry_the_sampling_parameters_too() -> None:
    chat = {"model": "m", "messages": [], "temperature": 0.3, **VLLM_SAMPLING, "chat_template_kwargs": {"a": 1}}
    body = completions_body(chat, [1, 2, 3], max_model_len=100)
    assert {k: body[k] for k in VLLM_SAMPLING} == VLLM_SAMPLING
    assert "chat_template_kwargs" not in body  # a completions prompt is already rendered


def test_precedence_agent_then_request_then_metadata_and_the_body_wins_over_every_extra() -> None:
    model = _model(extra_body={"top_k": 5, "min_p": 0.1, "temperature": 0.9,
                               "chat_template_kwargs": {"from_extra": 1, "enable_thinking": True}},
                   chat_template_kwargs={"enable_thinking": False, "agent": 1})
    params = {"metadata": {"extra_body": json.dumps({"min_p": 0.2, "seed": 3}),
                           "chat_template_kwargs": json.dumps({"meta": 1, "agent": 2})}}
    body = {"model": "m", "temperature": 0.2, "chat_template_kwargs": {"enable_thinking": True, "row": 1}}
    merged = with_extras(body, params, model)
    assert merged["temperature"] == 0.2  # the request's own field
    assert (merged["top_k"], merged["min_p"], merged["seed"]) == (5, 0.2, 3)  # metadata over the agent's
    # Key by key: the agent's, the request's, the metadata's; an extra_body's own are replaced (as NeMo Gym does).
    assert merged["chat_template_kwargs"] == {"enable_thinking": True, "agent": 2, "row": 1, "meta": 1}
    alone = with_extras({"model": "m"}, {}, _model(extra_body={"chat_template_kwargs": {"from_extra": 1}}))
    assert alone["chat_template_kwargs"] == {"from_extra": 1}
    assert with_extras(body, {}, _model()) is body  # nothing to merge: the body as it was


@pytest.mark.parametrize(("metadata", "problem"), [
    ({"extra_body": "{top_k: 20}"}, "'metadata.extra_body' is not valid JSON"),
    ({"chat_template_kwargs": "[1]"}, "'metadata.chat_template_kwargs' must hold a JSON object, got list"),
])
def test_bad_metadata_is_an_input_error_naming_the_field(metadata: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        metadata_objects({"metadata": metadata})
    with pytest.raises(InputError, match=problem):
        with_extras({}, {"metadata": metadata}, _model())


def test_a_json_object_is_taken_in_place_of_the_string_and_passed_on_as_text() -> None:
    params = {"input": "x", "metadata": {"extra_body": {"top_k": 1}, "other": "x"}}
    assert metadata_objects(params) == {"extra_body": {"top_k": 1}}
    assert metadata_objects({"metadata": {"extra_body": ""}}) == {}
    # What goes on to the verifier, the response and the row keeps to metadata's strings (NeMo Gym validates them).
    assert metadata_as_text(params) == {"input": "x", "metadata": {"extra_body": '{"top_k":1}', "other": "x"}}
    plain = {"input": "x", "metadata": {"extra_body": "{}"}}
    assert metadata_as_text(plain) is plain


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_the_model_gets_the_extras_through_the_gateway(fake_model: FakeModelServer,
                                                             fake_resources: FakeResourcesServer, api: str) -> None:
    config = make_config(fake_model.base_url, fake_resources.url, api=api,
                         model={"extra_body": {"top_k": 5, "repetition_penalty": 1.05},
                                "chat_template_kwargs": {"enable_thinking": False}})
    row = task("say: 4", "4")
    row["responses_create_params"] |= {"temperature": 0.2, "min_p": 0.01,
                                       "metadata": {"extra_body": '{"top_k": 40, "temperature": 1.0}',
                                                    "chat_template_kwargs": '{"enable_thinking": true}'}}
    as_object = task("say: 6", "6")
    as_object["responses_create_params"]["metadata"] = {"extra_body": {"top_k": 3}}
    bad = task("say: 5", "5")
    bad["responses_create_params"]["metadata"] = {"extra_body": "not json"}
    async with running_gateway(config) as (stub, _):
        results = await collect(stub, [req("good", row), req("bad", bad), req("object", as_object)], window=1)
    good = results["good"]
    assert good.status == pb.ROLLOUT_STATUS_OK, good.error
    assert good.reward == 1.0
    sent = fake_model.bodies[0]
    assert (sent["temperature"], sent["top_k"], sent["min_p"], sent["repetition_penalty"]) == (0.2, 40, 0.01, 1.05)
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert fake_model.bodies[-1]["top_k"] == 3
    assert orjson.loads(results["object"].params_json)["metadata"] == {"extra_body": '{"top_k":3}'}
    failed = results["bad"]
    assert (failed.error.stage, failed.error.kind) == ("input", "invalid_request")
    assert "'metadata.extra_body' is not valid JSON" in failed.error.message
    assert len(fake_model.bodies) == 2  # the bad row never reached the model ...
    assert fake_resources.requests["seed_session"] == 2  # ... nor opened a session


async def test_gateway_set_changes_an_agents_extras_live(monkeypatch: pytest.MonkeyPatch,
                                                        fake_model: FakeModelServer,
                                                        fake_resources: FakeResourcesServer) -> None:
    admin = "admin-secret-for-backend-extras"
    monkeypatch.setenv("ROLLGATE_ADMIN_TOKEN", admin)
    config = make_config(fake_model.base_url, fake_resources.url, model={"extra_body": {"top_k": 5}})
    async with live_gateway(config, security=Security(admin_token=admin)) as gw:
        await collect(gw.stub, [req("before", task("say: 1", "1"))])
        code = await asyncio.to_thread(gateway.main, [
            "set", "a", "+model.extra_body.top_k=33", "+model.chat_template_kwargs.enable_thinking=false",
            f"+gateway=127.0.0.1:{gw.port}"])
        assert code == 0
        await collect(gw.stub, [req("after", task("say: 2", "2"))])
    before, after = fake_model.bodies[-2:]
    assert before["top_k"] == 5 and "chat_template_kwargs" not in before
    assert after["top_k"] == 33 and after["chat_template_kwargs"] == {"enable_thinking": False}
