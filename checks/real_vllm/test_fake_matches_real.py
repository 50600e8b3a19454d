"""The fake vLLM server (``tests/fakes/vllm_server.py``) against the real one, on the same requests.

Every test of training mode runs against the fake; these check that it says what vLLM says where the gateway
reads it: the same token ids for the same conversation (both use SmolLM2's tokenizer and, with the fake's
``template="gguf"``, the same chat template), and answers whose every field the fake sends is one vLLM sends too,
with the same JSON type (``missing_in_real``). The text generated differs (the fake scripts it), never the shapes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from checks.real_vllm.conftest import SERVED_MODEL
from tests.fakes.vllm_server import FakeVLLMServer

MESSAGES: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Café naïve 你好 😀, and {\"a\": 1}"}],
    [{"role": "user", "content": "add 2 and 3"},
     {"role": "assistant", "content": "", "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
     {"role": "tool", "tool_call_id": "call_1", "content": "{\"sum\": 5}"}],
]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeVLLMServer]:
    async with FakeVLLMServer(template="gguf") as server:
        yield server


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


def _root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


# Objects whose keys are data (a completion's top log-probs: {token text: log-prob}), not fields.
_MAPS = frozenset({".choices[0].logprobs.top_logprobs[0]"})


def missing_in_real(fake: Any, real: Any, path: str = "") -> list[str]:
    """Where the fake's answer has a field the real one lacks, or a value of another JSON type (null on either
    side is not compared: an optional field)."""
    if fake is None or real is None:
        return []
    if _kind(fake) != _kind(real):
        return [f"{path or '.'}: fake {_kind(fake)}, real {_kind(real)}"]
    if isinstance(fake, dict) and path in _MAPS:  # keyed by token text: compare the values' types only
        return [m for v in list(fake.values())[:1] for w in list(real.values())[:1]
                for m in missing_in_real(v, w, f"{path}{{token}}")]
    if isinstance(fake, dict):
        found = [f"{path}.{k}: not in the real answer" for k in fake if k not in real]
        return found + [m for k in fake if k in real for m in missing_in_real(fake[k], real[k], f"{path}.{k}")]
    if isinstance(fake, list) and fake and real:
        return missing_in_real(fake[0], real[0], f"{path}[0]")
    return []


@pytest.mark.parametrize("messages", MESSAGES, ids=["one turn", "system", "multi-turn unicode", "tool turn"])
async def test_the_same_conversation_is_the_same_token_ids(
        real_vllm: str, fake: FakeVLLMServer, http: aiohttp.ClientSession, messages: list[dict[str, Any]]) -> None:
    for generation_prompt in (True, False):
        body = {"model": SERVED_MODEL, "messages": messages, "add_generation_prompt": generation_prompt}
        real_status, real = await post(http, f"{_root(real_vllm)}/tokenize", body)
        fake_status, mine = await post(http, f"{fake.root_url}/tokenize", body)
        assert real_status == fake_status == 200, (real, mine)
        assert mine["tokens"] == real["tokens"]
        assert mine["count"] == real["count"] and mine["max_model_len"] > 0 and real["max_model_len"] == 2048


async def test_text_tokenizes_the_same(real_vllm: str, fake: FakeVLLMServer, http: aiohttp.ClientSession) -> None:
    for text in ["Hello world", "  spaces\n\nand\ttabs ", "<|im_start|>user\nhi<|im_end|>", "Emoji 😀👍🏽 ß"]:
        _, real = await post(http, f"{_root(real_vllm)}/tokenize", {"prompt": text})
        _, mine = await post(http, f"{fake.root_url}/tokenize", {"prompt": text})
        assert mine["tokens"] == real["tokens"], text


async def test_a_training_chat_answer_has_the_real_shape(
        real_vllm: str, fake: FakeVLLMServer, http: aiohttp.ClientSession) -> None:
    messages = MESSAGES[0]
    body = {"model": SERVED_MODEL, "messages": messages, "max_tokens": 8, "logprobs": True, "top_logprobs": 2,
            "return_token_ids": True, "seed": 1}
    real_status, real = await post(http, f"{real_vllm}/chat/completions", body)
    fake_status, mine = await post(http, f"{fake.base_url}/chat/completions", body)
    assert real_status == fake_status == 200, (real, mine)
    assert missing_in_real(mine, real) == []
    _, tokens = await post(http, f"{_root(real_vllm)}/tokenize", {"model": SERVED_MODEL, "messages": messages})
    for answer in (real, mine):
        choice = answer["choices"][0]
        assert answer["prompt_token_ids"] == tokens["tokens"]  # the prompt as rendered, ids at the top level
        assert len(choice["token_ids"]) == len(choice["logprobs"]["content"]) <= 8
        assert all(len(c["top_logprobs"]) == 2 for c in choice["logprobs"]["content"])


async def test_a_token_id_completion_has_the_real_shape(
        real_vllm: str, fake: FakeVLLMServer, http: aiohttp.ClientSession) -> None:
    _, tokens = await post(http, f"{_root(real_vllm)}/tokenize", {"model": SERVED_MODEL, "messages": MESSAGES[0]})
    body = {"model": SERVED_MODEL, "prompt": tokens["tokens"], "max_tokens": 8, "logprobs": 0, "return_token_ids": True}
    real_status, real = await post(http, f"{real_vllm}/completions", body)
    fake_status, mine = await post(http, f"{fake.base_url}/completions", body)
    assert real_status == fake_status == 200, (real, mine)
    assert missing_in_real(mine, real) == []
    for answer in (real, mine):
        choice = answer["choices"][0]
        assert choice["prompt_token_ids"] == tokens["tokens"]  # per choice on this endpoint
        assert len(choice["token_ids"]) == len(choice["logprobs"]["token_logprobs"]) <= 8


async def test_a_refused_request_has_the_real_error_shape(
        real_vllm: str, fake: FakeVLLMServer, http: aiohttp.ClientSession) -> None:
    body = {"model": SERVED_MODEL, "messages": MESSAGES[0], "max_tokens": 4, "logprobs": True, "top_logprobs": 50}
    real_status, real = await post(http, f"{real_vllm}/chat/completions", body)
    fake_status, mine = await post(http, f"{fake.base_url}/chat/completions", body)
    assert real_status == fake_status == 400
    assert missing_in_real(mine, real) == []
    assert real["error"]["code"] == mine["error"]["code"] == 400


async def test_a_model_not_served_is_the_same_404(
        real_vllm: str, fake: FakeVLLMServer, http: aiohttp.ClientSession) -> None:
    body = {"model": "not-served", "messages": MESSAGES[0], "max_tokens": 4}
    real_status, real = await post(http, f"{real_vllm}/chat/completions", body)
    fake_status, mine = await post(http, f"{fake.base_url}/chat/completions", body)
    assert real_status == fake_status == 404
    assert missing_in_real(mine, real) == []
    assert real["error"]["message"].startswith(mine["error"]["message"])


async def test_the_models_list_has_the_real_shape(
        real_vllm: str, fake: FakeVLLMServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{real_vllm}/models") as resp:
        real = await resp.json()
    async with http.get(f"{fake.base_url}/models") as resp:
        mine = await resp.json()
    assert missing_in_real(mine, real) == []
    assert real["data"][0]["id"] == mine["data"][0]["id"]
    assert real["data"][0]["max_model_len"] == 2048
