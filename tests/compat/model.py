"""The compatibility suite's model: ``tests.fakes.model_server``'s answers, on two ports of one process.

- ``url``: the fake as every other test uses it (its Responses objects carry only what it decides: id, output,
  status, usage), the backend of rollgate's gateway in this suite;
- ``complete_url``: the same answers with each Responses object completed from its request (``tools``,
  ``tool_choice``, ``parallel_tool_calls`` … as the OpenAI API and vLLM return them), the backend of NeMo Gym's
  ``openai_model`` proxy, which refuses (500) any answer that ``NeMoGymResponse`` does not validate.

Both answer a conversation identically (the prompt conventions in ``tests/fakes/model_server.py``), so NeMo Gym's
agent and rollgate's gateway get the same model output for the same task.

    python -m tests.compat.model --port 0
    # {"event": "ready", "service": "fake_model", "url": "http://127.0.0.1:P/v1", "complete_url": "…/v1"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiohttp import web

from tests.fakes.model_server import FakeModelServer

__all__ = ["CompleteResponsesModel", "complete_response"]


def complete_response(answer: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """``answer`` with the Responses object's required and echoed fields filled from ``request``."""
    echoed = ("instructions", "max_output_tokens", "previous_response_id", "reasoning", "temperature", "text",
              "top_p", "truncation", "user", "top_logprobs", "max_tool_calls", "service_tier")
    filled: dict[str, Any] = {key: request.get(key) for key in echoed}
    filled.update({
        "error": None,
        "incomplete_details": None,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "metadata": request.get("metadata") or {},
    })
    completed = filled | answer
    usage = completed.get("usage")
    if isinstance(usage, dict):
        completed["usage"] = {"input_tokens_details": {"cached_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 0}} | usage
    return completed


class CompleteResponsesModel(FakeModelServer):
    """The fake model whose ``/v1/responses`` answers are complete Responses objects."""

    async def _responses(self, request: web.Request) -> web.Response:
        answer = await super()._responses(request)
        if answer.status != 200 or not isinstance(answer.body, bytes):
            return answer
        sent: dict[str, Any] = await request.json()  # aiohttp keeps the body it read: no second read
        return web.json_response(complete_response(json.loads(answer.body), sent))


async def _serve(port: int) -> None:
    async with FakeModelServer(port=port) as plain, CompleteResponsesModel() as complete:
        print(json.dumps({"event": "ready", "service": "fake_model", "url": plain.base_url,
                          "complete_url": complete.base_url}), flush=True)
        await asyncio.Future()  # serves until SIGTERM ends the process: a fake has nothing to finish first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compat.model")
    parser.add_argument("--port", type=int, default=0, help="the plain fake's port (the complete one takes any)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
