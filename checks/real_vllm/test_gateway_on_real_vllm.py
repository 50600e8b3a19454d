"""The gateway's training mode against a real vLLM: what ``tests/`` proves against the fake, once for real.

- start-up: a training agent's probe (``/tokenize``, a one-token chat call with token ids) passes;
- ``ng_collect_rollouts +training=true``: every row's call carries ``prompt_token_ids`` equal to vLLM's own
  ``/tokenize`` of the conversation, and as many log-probs as generated ids; vLLM's sampling knobs (``top_k``,
  ``min_p``; ``chat_template_kwargs`` from the row's metadata) are accepted; ``rollgate export +format=rl`` turns
  the rows into token records; the same ``seed`` gives the same tokens;
- a two-call tool rollout (the first call asked for ``add`` by a named ``tool_choice``; greedy, SmolLM2 then
  writes a Hermes-style call that vLLM's parser reads): on the chat path the second prompt re-renders the history
  and the rollout is marked not token-exact; with ``model.token_prompts`` the second call continues the first's
  ids on ``/v1/completions`` and is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from checks.real_vllm.conftest import SERVED_MODEL
from rollgate.collector import rollgate_main
from rollgate.gateway._training import MISMATCH_KEY, TOKEN_FIELDS
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, make_config, req, task

MODEL = {"name": SERVED_MODEL}
SLOW = {"timeouts": {"model_s": 120, "rollout_s": 600}}  # CPU inference; the first call also warms vLLM up
ADD_TOOL = [{"type": "function", "name": "add", "description": "Add two integers",
             "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                            "required": ["a", "b"], "additionalProperties": False}}]


def _carriers(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in response["output"] if any(k in i for k in TOKEN_FIELDS)]


async def _tokenize(base_url: str, messages: list[dict[str, Any]]) -> list[int]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base_url.removesuffix('/v1')}/tokenize", json={"model": SERVED_MODEL, "messages": messages}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return list(body["tokens"])


async def test_training_rows_from_a_real_vllm(real_vllm: str, tmp_path: Path) -> None:
    questions = ["What is 2+3?", "Name a color.", "Say hello."]
    rows = [task(q, "5") for q in questions]
    for row in rows:
        row["responses_create_params"].update(
            max_output_tokens=12, temperature=1.0, top_k=50, min_p=0.01,
            metadata={"chat_template_kwargs": json.dumps({"enable_thinking": False})})
    async with FakeResourcesServer() as rs:
        async with live_gateway(make_config(real_vllm, rs.url, kind="single_turn", model=MODEL, **SLOW)) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", rows)
            out = tmp_path / "rows.jsonl"
            code, _, stderr = await finish(await start_collector(
                f"127.0.0.1:{gw.port}", tasks, out, "+training=true", "+num_repeats=2",
                "+num_samples_in_parallel=2"), timeout_s=600)
    assert code == 0, stderr
    got = read_rows(out)
    assert len(got) == 6
    for row in got:
        (call,) = _carriers(row["response"])
        messages = [{"role": "user", "content": row["responses_create_params"]["input"]}]
        assert call["prompt_token_ids"] == await _tokenize(real_vllm, messages)
        assert 0 < len(call["generation_token_ids"]) == len(call["generation_log_probs"]) <= 12
        assert all(lp <= 0.0 for lp in call["generation_log_probs"])
    assert rollgate_main(["export", str(out), str(tmp_path / "batch.jsonl"), "+format=rl"]) == 0
    batch = [json.loads(line) for line in (tmp_path / "batch.jsonl").read_text().splitlines()]
    assert len(batch) == 6
    for row, rec in zip(got, batch, strict=True):
        (call,) = _carriers(row["response"])
        assert rec["token_ids"] == call["prompt_token_ids"] + call["generation_token_ids"]
        assert sum(rec["loss_mask"]) == len(call["generation_token_ids"])


async def test_the_same_seed_gives_the_same_tokens(real_vllm: str) -> None:
    async with FakeResourcesServer() as rs:
        config = make_config(real_vllm, rs.url, kind="single_turn", training=True, model=MODEL, **SLOW)
        async with live_gateway(config) as gw:
            def one(rid: str, seed: int) -> pb.RolloutRequest:
                row = task("Tell me a story.", "")
                row["responses_create_params"].update(temperature=1.0, max_output_tokens=16, seed=seed)
                return req(rid, row)

            results = [await gw.stub.Rollout(one(f"r{i}", seed), timeout=300) for i, seed in enumerate([11, 11, 12])]
    tokens = []
    for res in results:
        assert res.status == pb.ROLLOUT_STATUS_OK, res.error
        (call,) = _carriers(orjson.loads(res.response_json))
        tokens.append(call["generation_token_ids"])
    assert tokens[0] == tokens[1]
    assert tokens[0] != tokens[2]


async def _tool_rollout(base_url: str, **model: Any) -> dict[str, Any]:
    row = task("Add 2 and 3 with the add tool.", "5")
    row["responses_create_params"].update(tools=ADD_TOOL, tool_choice={"type": "function", "name": "add"},
                                          temperature=0.0, max_output_tokens=100)
    async with FakeResourcesServer() as rs:
        config = make_config(base_url, rs.url, training=True, max_steps=2, model=MODEL | model, **SLOW)
        async with live_gateway(config) as gw:
            res = await gw.stub.Rollout(req("tool", row), timeout=600)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    response: dict[str, Any] = orjson.loads(res.response_json)
    return response


async def test_token_prompts_keep_a_real_tool_rollout_exact_where_the_chat_path_is_marked(real_vllm: str) -> None:
    chat = await _tool_rollout(real_vllm)
    calls = _carriers(chat)
    assert len(calls) == 2 and calls[0]["type"] == "function_call"
    # vLLM renders the history again: the tool call as the template writes it, not the ids the model generated.
    assert chat["metadata"][MISMATCH_KEY] == "2"

    exact = await _tool_rollout(real_vllm, token_prompts=True, tool_call_format="hermes")
    calls = _carriers(exact)
    assert len(calls) == 2 and calls[0]["type"] == "function_call"
    assert MISMATCH_KEY not in exact["metadata"]
    first, second = calls
    head = first["prompt_token_ids"] + first["generation_token_ids"]
    assert second["prompt_token_ids"][:len(head)] == head
    # What follows the first call's ids is the template's glue, the tool's turn and the generation prompt.
    async with aiohttp.ClientSession() as http, http.post(
            f"{real_vllm.removesuffix('/v1')}/detokenize",
            json={"model": SERVED_MODEL, "tokens": second["prompt_token_ids"][len(head):]}) as resp:
        suffix = (await resp.json())["prompt"]
    assert suffix.startswith("\n<|im_start|>tool\n") and suffix.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert len(second["generation_token_ids"]) == len(second["generation_log_probs"]) > 0
