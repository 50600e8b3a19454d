"""The built-in exact_match verifier, over HTTP with NeMo Gym's own /verify body, and its text helpers."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollgate.verifier._text import final_answer, normalize, strip_think
from tests.verifier.verifier_helpers import answer_response

DATA = Path(__file__).resolve().parent / "data"


async def _verify(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/verify", data=json.dumps(body)) as resp:
        assert resp.headers.get("X-Verifier-Version", "").startswith("exact_match@")
        return resp.status, await resp.json()


async def test_nemo_gym_fixture_is_accepted_and_scored(serve: Any, http: aiohttp.ClientSession,
                                                       nemo_request: dict[str, Any]) -> None:
    server = await serve("exact_match")
    status, answer = await _verify(http, server.url, nemo_request)
    assert status == 200
    assert answer["reward"] == 1.0
    assert answer["accuracy"] == 1.0
    assert answer["extracted_answer"] == "42"
    assert answer["expected_answer"] == "42"
    assert answer["task_id"] == 0
    assert answer["agent_ref"] == {"name": "bench_simple_agent"}
    # The request is echoed whole, as NeMo Gym's own server does.
    assert answer["responses_create_params"] == nemo_request["responses_create_params"]
    assert answer["response"] == nemo_request["response"]
    # Same reward and extracted answer as NeMo Gym's exact-match server wrote for this row.
    nemo_answer = json.loads((DATA / "nemo_gym_verify_response.json").read_text())
    assert (answer["reward"], answer["extracted_answer"]) == (nemo_answer["reward"], nemo_answer["extracted_answer"])


async def test_wrong_answer_scores_zero(serve: Any, http: aiohttp.ClientSession,
                                       nemo_request: dict[str, Any]) -> None:
    server = await serve("exact_match")
    body = copy.deepcopy(nemo_request)
    body["response"]["output"][0]["content"][0]["text"] = "41"
    status, answer = await _verify(http, server.url, body)
    assert status == 200
    assert (answer["reward"], answer["accuracy"], answer["extracted_answer"]) == (0.0, 0.0, "41")


@pytest.mark.parametrize(
    ("expected", "said", "reward"),
    [
        ("Paris", "  paris \n", 1.0),
        ("New York", "new   YORK", 1.0),
        ("STRASSE", "straße", 1.0),  # casefold, not lower
        (42, " 42 ", 1.0),  # a numeric expected answer is compared as text
        (["Paris", "Paris, France"], "paris, france", 1.0),
        ("Paris", "Paris.", 0.0),
    ],
)
async def test_case_and_whitespace_folding(serve: Any, http: aiohttp.ClientSession,
                                           expected: Any, said: str, reward: float) -> None:
    server = await serve("exact_match")
    body = {"responses_create_params": {"input": "q"}, "response": answer_response(said), "expected_answer": expected}
    status, answer = await _verify(http, server.url, body)
    assert status == 200
    assert answer["reward"] == reward


async def test_reasoning_and_think_blocks_are_set_aside(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match")
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Paris"}]}
    earlier = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris"}]}
    # The answer is the LAST assistant message, minus <think>: here it is "Lyon", so the reward is 0.
    response = answer_response("<think>It could be Paris.</think>Lyon", extra_items=[reasoning, earlier])
    body = {"responses_create_params": {"input": "q"}, "response": response, "expected_answer": "Paris"}
    status, answer = await _verify(http, server.url, body)
    assert (status, answer["reward"], answer["extracted_answer"]) == (200, 0.0, "Lyon")

    response = answer_response("<think>\nhmm, Lyon?\n</think>\n\nParis", extra_items=[reasoning])
    body["response"] = response
    status, answer = await _verify(http, server.url, body)
    assert (status, answer["reward"], answer["extracted_answer"]) == (200, 1.0, "Paris")


async def test_missing_expected_answer_is_invalid_task(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match")
    body = {"responses_create_params": {"input": "q"}, "response": answer_response("42")}
    status, answer = await _verify(http, server.url, body)
    assert status == 500
    assert answer["error"]["kind"] == "invalid_task"
    assert "expected_answer" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("<think>a</think>b<think>c</think>d", "bd"),
        ("reasoning without an opening tag</think>answer", "answer"),  # opening tag was in the template
        ("answer<think>cut off mid-thought", "answer"),
        ("<THINK>x</THINK>y", "y"),
        ("plain", "plain"),
    ],
)
def test_strip_think(text: str, kept: str) -> None:
    assert strip_think(text) == kept


def test_final_answer_joins_output_text_parts_and_skips_other_items() -> None:
    response = {
        "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "old"}]},
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
            {"type": "function_call_output", "call_id": "c", "output": "tool says 7"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "4"}, {"type": "refusal", "refusal": "no"},
                {"type": "output_text", "text": "2"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "99"}]},
        ]
    }
    assert final_answer(response) == "42"
    assert final_answer({"output": []}) == ""
    assert final_answer({}) == ""
    assert normalize("  A\tB \n") == "a b"


async def test_bodies_match_the_protocol_field_for_field(serve: Any, http: aiohttp.ClientSession,
                                                         nemo_request: dict[str, Any]) -> None:
    from rollgate.verifier.protocol import ErrorBody, VerifyRequest, VerifyResponse

    # The typed request model reads NeMo Gym's real body and writes it back unchanged, field for field.
    request = VerifyRequest.model_validate(nemo_request)
    assert request.model_dump() == nemo_request
    # NeMo Gym's own /verify answer (its collector's _ng_* bookkeeping aside) is a valid VerifyResponse.
    nemo_answer = json.loads((DATA / "nemo_gym_verify_response.json").read_text())
    nemo_verify = {k: v for k, v in nemo_answer.items() if not k.startswith("_ng_")}
    assert VerifyResponse.model_validate(nemo_verify).model_dump() == nemo_verify

    server = await serve("exact_match")
    async with http.post(f"{server.url}/verify", data=request.model_dump_json()) as resp:
        answer = VerifyResponse.model_validate(await resp.json())
    ours = answer.model_dump()
    # Every request field echoed unchanged, and every field NeMo Gym's server answered that we compute agrees.
    assert {k: ours[k] for k in nemo_request} == nemo_request
    assert set(nemo_verify) - set(ours) == {"mask_sample", "failure_kind", "failure_reason"}  # NeMo Gym's own extras
    computed = ("reward", "extracted_answer")
    assert {k: ours[k] for k in computed} == {k: nemo_verify[k] for k in computed}

    broken = {**nemo_request, "response": "not an object"}
    async with http.post(f"{server.url}/verify", json=broken) as resp:
        assert resp.status == 400
        assert ErrorBody.model_validate(await resp.json()).error.kind == "invalid_request"
