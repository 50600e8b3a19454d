"""Responses <-> Chat Completions conversion, both ways, tool calls and reasoning included."""

from __future__ import annotations

import orjson
import pytest

from rollgate.gateway._convert import chat_to_response, responses_to_chat


def test_string_input_and_instructions_become_system_then_user() -> None:
    body, dropped = responses_to_chat({"input": "hi", "instructions": "be brief"}, model="m")
    assert body["model"] == "m"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert dropped == []


def test_message_list_with_parts_roles_tools_and_outputs() -> None:
    params = {
        "input": [
            {"role": "developer", "content": "dev note"},
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me"}]},
            {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a":1,"b":2}'},
            {"type": "function_call", "call_id": "c2", "name": "whoami", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": '{"sum":3}'},
            {"type": "function_call_output", "call_id": "c2", "output": {"session_id": "s1"}},
        ],
        "tools": [{"type": "function", "name": "add", "description": "adds", "parameters": {"type": "object"}},
                  {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "add"},
        "temperature": 0.3, "top_p": 0.9, "seed": 7, "max_output_tokens": 64, "parallel_tool_calls": True,
        "top_logprobs": 2, "truncation": "auto",
    }
    body, dropped = responses_to_chat(params, model="m")
    msgs = body["messages"]
    assert msgs[0] == {"role": "system", "content": "dev note"}
    assert msgs[1] == {"role": "user", "content": "a\nb"}
    # reasoning dropped; text and both parallel calls form one assistant turn
    assert msgs[2]["role"] == "assistant" and msgs[2]["content"] == "let me"
    assert [c["id"] for c in msgs[2]["tool_calls"]] == ["c1", "c2"]
    assert msgs[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a":1,"b":2}'}
    assert msgs[3] == {"role": "tool", "tool_call_id": "c1", "content": '{"sum":3}'}
    assert orjson.loads(msgs[4]["content"]) == {"session_id": "s1"}
    assert body["tools"] == [{"type": "function", "function": {"name": "add", "description": "adds",
                                                               "parameters": {"type": "object"}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["max_tokens"] == 64 and "max_output_tokens" not in body
    assert (body["temperature"], body["top_p"], body["seed"], body["parallel_tool_calls"]) == (0.3, 0.9, 7, True)
    assert body["top_logprobs"] == 2 and body["logprobs"] is True
    assert dropped == ["tools[type=web_search]", "truncation"]


def test_calls_without_text_get_their_own_assistant_message() -> None:
    body, _ = responses_to_chat({"input": [
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c1", "name": "t", "arguments": "{}"},
    ]}, model="m")
    assert body["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}]}


def test_chat_answer_with_reasoning_text_and_tool_calls_back_to_response() -> None:
    chat = {
        "id": "chatcmpl-9", "created": 123, "model": "served-name",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "calling", "reasoning_content": "think",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}],
        }}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    resp = chat_to_response(chat)
    assert resp["object"] == "response" and resp["model"] == "served-name" and resp["created_at"] == 123
    assert resp["status"] == "completed" and resp["id"]
    kinds = [i["type"] for i in resp["output"]]
    assert kinds == ["reasoning", "message", "function_call"]
    assert resp["output"][0]["content"][0]["text"] == "think"
    assert resp["output"][1] == {"type": "message", "id": "msg_chatcmpl-9", "role": "assistant",
                                 "status": "completed",
                                 "content": [{"type": "output_text", "text": "calling", "annotations": []}]}
    call = resp["output"][2]
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == ("call_1", "add", "{}", "completed")
    assert resp["usage"]["input_tokens"] == 5 and resp["usage"]["output_tokens"] == 3
    assert resp["usage"]["total_tokens"] == 8


def test_length_finish_is_incomplete_and_empty_content_has_no_message() -> None:
    resp = chat_to_response({"choices": [{"message": {"content": "cut"}, "finish_reason": "length"}]})
    assert resp["status"] == "incomplete"
    assert resp["incomplete_details"] == {"reason": "max_output_tokens"}
    resp = chat_to_response({"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]})
    assert resp["output"] == [] and resp["status"] == "completed"


def test_no_choices_is_an_error() -> None:
    with pytest.raises(ValueError, match="no choices"):
        chat_to_response({"choices": []})


def test_round_trip_of_a_converted_answer_feeds_the_next_request() -> None:
    resp = chat_to_response({"id": "x", "choices": [{"finish_reason": "tool_calls", "message": {
        "content": None, "tool_calls": [{"id": "k", "function": {"name": "add", "arguments": "{}"}}]}}]})
    items = [{"role": "user", "content": "q"}, *resp["output"],
             {"type": "function_call_output", "call_id": "k", "output": "3"}]
    body, dropped = responses_to_chat({"input": items}, model="m")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]
    assert body["messages"][2]["tool_call_id"] == "k" and dropped == []


def test_token_ids_and_logprobs_requests_pass_through_and_come_back() -> None:
    from rollgate.gateway._convert import chat_to_response, responses_to_chat

    body, dropped = responses_to_chat({"input": "hi", "top_logprobs": 2, "return_token_ids": True}, model="m")
    assert body["return_token_ids"] is True and body["logprobs"] is True and body["top_logprobs"] == 2
    assert dropped == []
    chat = {"id": "c1", "model": "served", "prompt_token_ids": [1, 2, 3],
            "choices": [{"message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop",
                         "token_ids": [7, 8], "logprobs": {"content": [{"token": "yo", "logprob": -0.1}]}}]}
    resp = chat_to_response(chat)
    part = resp["output"][0]["content"][0]
    assert part["token_ids"] == [7, 8] and part["logprobs"] == [{"token": "yo", "logprob": -0.1}]
    assert resp["prompt_token_ids"] == [1, 2, 3] and resp["model"] == "served"
