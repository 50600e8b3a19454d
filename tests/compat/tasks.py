"""The suite's tasks: rows in each NeMo Gym server's own data format, prompts the fake model acts on.

The fake model answers the last user message's ``say: TEXT`` and calls the tools of its ``tool: NAME {json}``
lines (``tests/fakes/model_server.py``), so each task fixes the model output and its expected reward. Every server
gets tasks that score 1 and tasks that score 0, so equal rewards on both sides mean something.

``SERVERS`` names, per server, its resources server and agent as NeMo Gym's shipped configs call them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SERVERS", "NemoServer", "ROLLGATE_VERIFIER"]

Row = dict[str, Any]


def _tool(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    # The tool definitions of NeMo Gym's own example data (resources_servers/*/data/example.jsonl).
    return {"type": "function", "name": name, "description": "", "strict": True,
            "parameters": {"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False}}


def _calls(*calls: tuple[str, dict[str, Any]]) -> str:
    return "\n".join(f"tool: {name} {json.dumps(args)}" for name, args in calls)


def _user(text: str, system: str | None = None) -> list[dict[str, Any]]:
    messages = [{"role": "developer", "content": system}] if system else []
    return [*messages, {"role": "user", "content": text}]


def _string_match() -> list[Row]:
    def row(inp: Any, expected: str, mode: str, **extra: Any) -> Row:
        return {"responses_create_params": {"input": inp}, "expected_answer": expected, "extraction_mode": mode,
                **extra}

    return [
        row("say: \\boxed{Paris}", "Paris", "boxed"),
        row("say: \\boxed{Lyon}", "Paris", "boxed"),
        # NeMo Gym's example rows carry typed content parts.
        row([{"role": "user", "type": "message",
              "content": [{"type": "input_text", "text": "say: Final answer: 80"}]}], "80", "final_answer"),
        row(_user("say: Final answer: 81"), "80", "final_answer"),
        row(_user("say: PARIS", system="Answer in one word."), "Paris", "full_response", case_sensitive=False),
        row(_user("say: PARIS", system="Answer in one word."), "Paris", "full_response", case_sensitive=True),
        row("say: 7", "7", "last_line", metadata={"source": "rollgate-compat"}),
        row("say: \\boxed{\\text{Rome}}", "Rome", "boxed"),
    ]


_WEATHER = [_tool("get_weather", {"city": {"type": "string", "description": ""}}, ["city"])]


def _single_tool_call() -> list[Row]:
    def row(inp: Any) -> Row:
        return {"responses_create_params": {"input": inp, "tools": _WEATHER}}

    system = "You are a helpful personal assistant that aims to be helpful and reduce any pain points the user has."
    return [
        row(_user(_calls(("get_weather", {"city": "sf"})), system=system)),
        row(_user("say: It is sunny in sf.", system=system)),
        row(_user(_calls(("get_weather", {"city": "sf"}), ("get_weather", {"city": "nyc"})))),
        row(_user(_calls(("get_weather", {"city": "nyc"})) + "\nsay: Bring a coat.")),
        row("say: I cannot check the weather."),
        row(_calls(("get_weather", {"city": "paris"}))),
    ]


_COUNTER = [_tool("increment_counter", {"count": {"type": "integer", "description": ""}}, ["count"]),
            _tool("get_counter_value", {}, [])]


def _session_state() -> list[Row]:
    def row(increments: list[int], initial: int, expected: int, read: bool = False) -> Row:
        calls = [("increment_counter", {"count": n}) for n in increments]
        if read:
            calls.append(("get_counter_value", {}))
        text = _calls(*calls) if calls else "say: nothing to add"
        return {"responses_create_params": {"input": _user(text), "tools": _COUNTER},
                "expected_count": expected, "initial_count": initial}

    return [
        row([1, 2], initial=3, expected=6),
        row([1, 2], initial=3, expected=7),
        row([5], initial=0, expected=5),
        row([4, 5], initial=10, expected=19, read=True),
        row([], initial=2, expected=2),
        # Scores 1 only when the seed carried initial_count: a server that defaulted it to 0 would count 1.
        row([1], initial=7, expected=8),
        row([1], initial=7, expected=1),
        row([2, 2], initial=4, expected=8),
    ]


def _rollgate_verifier() -> list[Row]:
    return [{"responses_create_params": {"input": f"say: {answer}"}, "expected_answer": expected}
            for answer, expected in [("42", "42"), ("41", "42"), ("Paris", "Paris"), ("Lyon", "Paris"),
                                     ("seven", "seven"), ("eight", "8")]]


@dataclass(frozen=True)
class NemoServer:
    """One NeMo Gym resources server of the stack: its config names and the suite's tasks for it."""

    key: str
    resources: str
    agent: str
    tasks: tuple[Row, ...] = field(repr=False)
    num_repeats: int = 1


SERVERS = {
    s.key: s for s in [
        NemoServer("string_match", "string_match", "string_match_simple_agent", tuple(_string_match()),
                   num_repeats=2),
        NemoServer("single_tool_call", "example_single_tool_call", "example_single_tool_call_simple_agent",
                   tuple(_single_tool_call())),
        NemoServer("session_state", "example_session_state_mgmt_resources_server",
                   "example_session_state_mgmt_simple_agent", tuple(_session_state())),
    ]
}

# The rollgate verifier that NeMo Gym starts from nemo_root/ (exact_match), with NeMo Gym's simple_agent in front.
ROLLGATE_VERIFIER = NemoServer("rollgate_verifier", "rollgate_verifier", "rollgate_verifier_simple_agent",
                               tuple(_rollgate_verifier()))
