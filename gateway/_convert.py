"""Responses API <-> Chat Completions, as pure functions.

``responses_to_chat`` turns a Responses request into a ``/chat/completions`` body and names the parameters it
had to drop (the caller warns once per agent); ``chat_to_response`` turns the chat answer back into a Responses
object. Reasoning items are dropped going out (chat has no slot for them) and rebuilt coming back from
``reasoning_content`` / ``reasoning`` (vLLM, SGLang).

    body, dropped = responses_to_chat({"input": "hi", "temperature": 0.2}, model="m")
    response = chat_to_response(chat_answer)
"""

from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = ["VLLM_SAMPLING", "chat_to_response", "first_choice", "input_items", "responses_to_chat"]

# vLLM's (and SGLang's) extra sampling parameters, sent as they are on the chat and the completions path: a backend
# that does not know one says so (OpenAI answers 400), which beats sampling other than asked.
VLLM_SAMPLING = ("top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "stop_token_ids",
                 "ignore_eos", "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens")
# Responses params that Chat Completions takes under the same name and meaning.
_SAME = frozenset({
    "temperature", "top_p", "seed", "parallel_tool_calls", "top_logprobs", "logprobs", "stop",
    "frequency_penalty", "presence_penalty", "user", "logit_bias",
    # vLLM/SGLang extensions RL users ask for: token ids come back on the message part and the response.
    "return_token_ids", "return_tokens_as_token_ids", "prompt_logprobs",
    *VLLM_SAMPLING, "chat_template_kwargs",
})
# Consumed by the conversion itself, or meaningless for one non-streamed call.
# ``metadata`` is read for its backend extras (``_extras``), as NeMo Gym's vLLM server reads it, and not sent.
_HANDLED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "max_output_tokens",
                      "reasoning", "text", "include", "stream", "store", "metadata"})
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"})


def input_items(inp: Any) -> list[dict[str, Any]]:
    """The Responses ``input`` as a list of items: a string becomes one user message."""
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if isinstance(inp, list):
        return list(inp)
    raise ValueError(f"'input' must be a string or a list of items, got {type(inp).__name__}")


def _content(content: Any) -> Any:
    """Responses message content -> chat content: text-only becomes one string (vLLM joins parts with \\n)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    has_image = False
    for part in content:
        if isinstance(part, str):
            part = {"type": "input_text", "text": part}
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = str(part.get("text", part.get("refusal", "")))
            texts.append(text)
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            has_image = True
            url = part.get("image_url") or part.get("url") or ""
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts if has_image else "\n".join(texts)


def _tool_call(item: dict[str, Any]) -> dict[str, Any]:
    args = item.get("arguments", "{}")
    arguments = args if isinstance(args, str) else orjson.dumps(args).decode()
    return {
        "id": item.get("call_id") or item.get("id"),
        "type": "function",
        "function": {"name": item.get("name"), "arguments": arguments},
    }


def _messages(items: list[dict[str, Any]], dropped: set[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" and "role" in item:
            role = _ROLES.get(str(item["role"]))
            if role is None:
                dropped.add(f"input[role={item['role']}]")
                continue
            out.append({"role": role, "content": _content(item.get("content"))})
        elif kind == "function_call":
            # Consecutive calls (parallel tool calls) belong to one assistant turn, as does text just before them.
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
                last.setdefault("tool_calls", []).append(_tool_call(item))
                if last.get("content") == "":
                    last["content"] = None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [_tool_call(item)]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            out.append({
                "role": "tool",
                "tool_call_id": item.get("call_id"),
                "content": output if isinstance(output, str) else orjson.dumps(output).decode(),
            })
        elif kind == "reasoning":
            continue  # chat has no slot for reasoning; the model does not need its old thoughts back
        else:
            dropped.add(f"input[type={kind}]")
    return out


def _tools(tools: list[dict[str, Any]], dropped: set[str]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type") != "function":
            dropped.add(f"tools[type={tool.get('type')}]")
            continue
        if "function" in tool:  # already chat-shaped
            out.append(tool)
            continue
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(text: Any, dropped: set[str]) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    dropped.add(f"text.format[type={fmt.get('type')}]")
    return None


def responses_to_chat(params: dict[str, Any], *, model: str) -> tuple[dict[str, Any], list[str]]:
    """A Responses request -> a chat completions body, and the sorted names of what had to be dropped."""
    dropped: set[str] = set()
    messages: list[dict[str, Any]] = []
    if params.get("instructions"):
        messages.append({"role": "system", "content": str(params["instructions"])})
    messages.extend(_messages(input_items(params.get("input", "")), dropped))
    body: dict[str, Any] = {"model": model, "messages": messages}
    for key, value in params.items():
        if key in _SAME:
            body[key] = value
        elif key not in _HANDLED:
            dropped.add(key)
    if params.get("tools"):
        body["tools"] = _tools(params["tools"], dropped)
    if "tool_choice" in params:
        body["tool_choice"] = _tool_choice(params["tool_choice"])
    if params.get("max_output_tokens") is not None:
        body["max_tokens"] = params["max_output_tokens"]
    if body.get("top_logprobs") is not None or "message.output_text.logprobs" in (params.get("include") or []):
        body["logprobs"] = True
    effort = params.get("reasoning", {}).get("effort") if isinstance(params.get("reasoning"), dict) else None
    if effort:
        body["reasoning_effort"] = effort
    fmt = _response_format(params.get("text"), dropped)
    if fmt is not None:
        body["response_format"] = fmt
    return body, sorted(dropped)


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _usage(usage: Any) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    inp = int(usage.get("prompt_tokens") or 0)
    out = int(usage.get("completion_tokens") or 0)
    res: dict[str, Any] = {"input_tokens": inp, "output_tokens": out,
                           "total_tokens": int(usage.get("total_tokens") or inp + out)}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    res["input_tokens_details"] = {"cached_tokens": int(cached or 0)}
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    res["output_tokens_details"] = {"reasoning_tokens": int(reasoning or 0)}
    return res


def first_choice(answer: dict[str, Any], what: str) -> dict[str, Any]:
    """An OpenAI-style answer's ``choices[0]``; ``ValueError`` naming ``what`` when there is none."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError(f"{what} has no choices")
    return choices[0]


def chat_to_response(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat completions answer -> a Responses object. Raises ``ValueError`` when there is no choice."""
    choice = first_choice(chat, "chat completion")
    msg = choice.get("message")
    if not isinstance(msg, dict):
        raise ValueError("chat completion choice has no message")
    cid = str(chat.get("id") or f"chatcmpl-{time.time_ns()}")
    output: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning:
        output.append({"type": "reasoning", "id": f"rs_{cid}", "summary": [],
                       "content": [{"type": "reasoning_text", "text": str(reasoning)}]})
    content = msg.get("content")
    if content:
        part: dict[str, Any] = {"type": "output_text", "text": str(content), "annotations": []}
        logprobs = (choice.get("logprobs") or {}).get("content")
        if logprobs is not None:
            part["logprobs"] = logprobs
        if choice.get("token_ids") is not None:
            part["token_ids"] = choice["token_ids"]
        output.append({"type": "message", "id": f"msg_{cid}", "role": "assistant", "status": "completed",
                       "content": [part]})
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") or {}
        call_id = str(call.get("id") or f"call_{cid}_{i}")
        output.append({"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id,
                       "name": fn.get("name"), "arguments": fn.get("arguments") or "{}", "status": "completed"})
    reason = _INCOMPLETE.get(str(choice.get("finish_reason")))
    response: dict[str, Any] = {
        "id": f"resp_{cid}",
        "object": "response",
        "created_at": chat.get("created") or int(time.time()),
        "model": chat.get("model"),
        "output": output,
        "status": "incomplete" if reason else "completed",
        "incomplete_details": {"reason": reason} if reason else None,
        "usage": _usage(chat.get("usage")),
    }
    for key in ("prompt_token_ids", "prompt_logprobs"):  # vLLM puts these at the top level or on the choice
        value = chat.get(key, choice.get(key))
        if value is not None:
            response[key] = value
    return response
