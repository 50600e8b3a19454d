"""Token-id prompts in training mode (a model's ``token_prompts: true``): the next prompt built, never re-rendered.

On the chat path the backend re-renders the whole conversation for every call, and re-tokenizing the model's own
text is not always the tokens it generated (a sampled, non-canonical tokenization; a template that drops
``<think>`` or trims history), so the trajectory goes off-policy (``_training`` marks it). With ``token_prompts``
every training-mode call after a rollout's first is sent to ``/v1/completions`` with a token-id prompt built as

    previous call's prompt ids + its generated ids + glue + the new turns' tokens

where the new turns' tokens come from the backend's own tokenizer and chat template (vLLM's ``POST /tokenize``):
the full conversation rendered with ``add_generation_prompt: true`` must begin with the conversation up to and
including the last assistant turn rendered without it (``prefix``); the new turns are what follows. The end of
turn is the previous call's last generated token (its EOS, e.g. SmolLM2's ``<|im_end|>``); the ``glue`` is what
the template writes after that token in ``prefix`` (SmolLM2's ``\\n``). ``build_prompt`` answers why not instead of
guessing when any of that does not hold (the call then goes to the chat path, whose prompt the check marks):
the previous call did not end its turn (cut by ``max_output_tokens``), the prefix is not a prefix of the full
render, the end-of-turn token is not in it (or only once: it must end the other turns too), or the glue is long.

The completions answer is raw text: ``chat_answer`` turns it into a chat-shaped answer (so ``chat_to_response`` and
``attach_token_fields`` handle it as any other), with tool calls parsed by ``parse_tool_calls`` in the model's
declared ``tool_call_format``: ``smollm2`` (``<tool_call>[{"name": …, "arguments": {…}}, …]</tool_call>``) or
``hermes`` (Hermes/Qwen: one ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` per call). Text that does
not parse as calls stays the message's text (as vLLM's tool parsers do). With the model's ``reasoning_parser:
think``, ``<think>…</think>`` is split off first (``split_reasoning``) into the reasoning item the chat path makes.

    prompt = build_prompt(previous, ended, full_ids, prefix_ids)   # list of ids, or a str saying why not
    chat = chat_answer(completions_answer, tools=True, fmt="smollm2", top_logprobs=None)
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from rollgate.gateway._convert import VLLM_SAMPLING, first_choice

__all__ = ["MAX_GLUE_TOKENS", "ReasoningParser", "ToolCallFormat", "build_prompt", "chat_answer", "completions_body",
           "parse_tool_calls", "prefix_messages", "split_reasoning", "tokenize_body"]

ToolCallFormat = Literal["smollm2", "hermes"]
ReasoningParser = Literal["think"]
_THINK_START, _THINK_END = "<think>", "</think>"
# Templates write a newline or two after a turn's end-of-turn token; more than this is not glue but content.
MAX_GLUE_TOKENS = 4
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
# Sampling parameters a chat body shares with /v1/completions under the same name and meaning.
_SAMPLING = ("temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty", "user", "logit_bias",
             "return_tokens_as_token_ids", *VLLM_SAMPLING)


def prefix_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The chat messages up to and including the last assistant turn (None when there is none)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    return None if last is None else messages[:last + 1]


def tokenize_body(chat: dict[str, Any], messages: list[dict[str, Any]], *, generation_prompt: bool) -> dict[str, Any]:
    """A ``POST /tokenize`` body rendering ``messages`` as the chat call ``chat`` would (same tools, template)."""
    body: dict[str, Any] = {"model": chat["model"], "messages": messages,
                            "add_generation_prompt": generation_prompt}
    for key in ("tools", "chat_template", "chat_template_kwargs"):
        if chat.get(key):
            body[key] = chat[key]
    return body


def build_prompt(previous: list[int], ended: bool, full: list[int], prefix: list[int]) -> list[int] | str:
    """The next prompt: ``previous`` (prompt + generated ids of the last call) + glue + the new turns' tokens.

    ``full`` and ``prefix`` are the template's renders (see the module docstring); ``ended`` says the last call
    ended its turn itself. Returns why not (a str) instead of guessing."""
    if not ended or not previous:
        return "the previous call did not end its turn (no end-of-turn token to continue from)"
    if full[:len(prefix)] != prefix:
        return "the template's render of the conversation does not begin with its render of the history"
    eot = previous[-1]
    at = [i for i, t in enumerate(prefix) if t == eot]
    if len(at) < 2:
        return f"the previous call's last token ({eot}) does not end the template's turns"
    glue = prefix[at[-1] + 1:]
    if len(glue) > MAX_GLUE_TOKENS:
        return (f"the template writes {len(glue)} tokens after the last assistant turn's end-of-turn token "
                f"(more than {MAX_GLUE_TOKENS}: not glue)")
    return previous + glue + full[len(prefix):]


def completions_body(chat: dict[str, Any], prompt: list[int], max_model_len: int | None) -> dict[str, Any]:
    """A ``/v1/completions`` body for ``prompt`` carrying the chat body's sampling parameters.

    ``max_tokens`` is always sent (vLLM's completions default is 16): the request's ``max_output_tokens``, else
    the room the context leaves (``max_model_len`` from ``/tokenize``), as vLLM's chat default is."""
    body: dict[str, Any] = {"model": chat["model"], "prompt": prompt, "return_token_ids": True}
    for key in _SAMPLING:
        if key in chat:
            body[key] = chat[key]
    limit = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if limit is None:
        if max_model_len is None:
            raise ValueError("/tokenize answered no max_model_len, and the request has no max_output_tokens")
        limit = max(max_model_len - len(prompt), 1)
    body["max_tokens"] = limit
    top = chat.get("top_logprobs")
    body["logprobs"] = top if isinstance(top, int) and not isinstance(top, bool) else 0
    return body


def parse_tool_calls(text: str, fmt: ToolCallFormat) -> tuple[str | None, list[dict[str, Any]]] | None:
    """``text``'s tool calls as chat ``tool_calls`` and the text before them (None when empty); None when the
    text holds no well-formed calls in ``fmt`` (then it is all the message's text)."""
    blocks = list(_BLOCK.finditer(text))
    calls: list[dict[str, Any]] = []
    for block in blocks:
        try:
            data = json.loads(block.group(1))
        except ValueError:
            return None
        if fmt == "smollm2":
            if not isinstance(data, list):
                return None
            items = data
        else:
            items = [data]
        for item in items:
            call = _call(item)
            if call is None:
                return None
            calls.append(call)
    if not calls:
        return None
    return text[:blocks[0].start()].strip() or None, calls


def _call(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return None
    args = item.get("arguments", {})
    if isinstance(args, dict):
        arguments = json.dumps(args, ensure_ascii=False)
    elif isinstance(args, str):
        arguments = args
    else:
        return None
    return {"id": f"call_{uuid.uuid4().hex}", "type": "function",
            "function": {"name": item["name"], "arguments": arguments}}


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``text`` as (reasoning, the rest) by ``<think>…</think>``, as vLLM's reasoning parsers split it.

    Reasoning ends at the first ``</think>`` (its opening tag, when the model wrote one, is dropped: a template
    may have put it in the prompt instead). Without ``</think>`` a text that opens with ``<think>`` was cut off
    mid-thought (all reasoning); any other is all answer."""
    head, sep, tail = text.partition(_THINK_END)
    if not sep:
        if text.lstrip().startswith(_THINK_START):
            return text.lstrip()[len(_THINK_START):].strip(), ""
        return None, text
    head = head.lstrip()
    if head.startswith(_THINK_START):
        head = head[len(_THINK_START):]
    return head.strip(), tail.lstrip()


def chat_answer(data: dict[str, Any], *, tools: bool, fmt: ToolCallFormat | None,
                top_logprobs: int | None, reasoning: ReasoningParser | None = None) -> dict[str, Any]:
    """A ``/v1/completions`` answer (``return_token_ids``, ``logprobs``) as a chat completions answer.

    ``reasoning``: how the text marks reasoning (``split_reasoning``); it goes to ``reasoning_content``, as vLLM's
    chat answers carry it, and tool calls are looked for in the rest only. Raises ``ValueError`` naming what is
    missing."""
    choice = first_choice(data, "the completion")
    text = choice.get("text")
    if not isinstance(text, str):
        raise ValueError("the completion's choices[0] has no text")
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("token_logprobs"), list):
        raise ValueError("training mode: the completion has no choices[0].logprobs.token_logprobs (asked for with "
                         "logprobs: 0)")
    tokens = logprobs.get("tokens") or []
    tops = logprobs.get("top_logprobs") or []
    content = []
    for i, lp in enumerate(logprobs["token_logprobs"]):
        entry: dict[str, Any] = {"token": tokens[i] if i < len(tokens) else "", "logprob": lp}
        alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        entry["top_logprobs"] = ([{"token": t, "logprob": v} for t, v in alternatives.items()][:top_logprobs]
                                 if top_logprobs else [])
        content.append(entry)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning == "think":
        thought, text = split_reasoning(text)
        if thought is not None:
            message["reasoning_content"], message["content"] = thought, text or None
    finish = choice.get("finish_reason")
    parsed = parse_tool_calls(text, fmt) if tools and fmt is not None else None
    if parsed is not None:
        message["content"], message["tool_calls"] = parsed
        finish = "tool_calls" if finish == "stop" else finish
    return {"id": data.get("id"), "object": "chat.completion", "created": data.get("created"),
            "model": data.get("model"), "usage": data.get("usage"),
            "prompt_token_ids": choice.get("prompt_token_ids"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "token_ids": choice.get("token_ids"),
                         "logprobs": {"content": content}}]}
