"""Tool calls reach the resources server only for tools the request declared, by a plain name (issue 14, item 3).

A model that calls a protocol route (``close_session``, ``verify``), a path (``../x``), a query (``a?b``) or a tool
nobody declared gets an ``unknown tool`` output and the rollout goes on; the server never sees those requests.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from aiohttp import web

from rollgate.gateway._agent import PROTOCOL_ROUTES, callable_tools
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import make_config, req, running_gateway, task


class PathCountingServer(FakeResourcesServer):
    """The fake resources server, also counting every request by its raw path (unknown routes included)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths: Counter[str] = Counter()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.paths[request.raw_path] += 1
        return await super()._auth(request, handler)


_CALLS = ["close_session", "verify", "../x", "a?b", "nosuch", "aggregate_metrics", "add"]


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": {"type": "object"}}


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_undeclared_protocol_and_path_like_tool_names_never_reach_the_server(
        api: str, fake_model: FakeModelServer) -> None:
    lines = [f'tool: {name} {{"a": 1, "b": 2}}' for name in _CALLS]
    t = task("\n".join(lines), "tools said")
    # Declaring a protocol route or a path as a tool does not make it callable either; "nosuch" is not declared.
    t["responses_create_params"]["tools"] = [_tool(n) for n in ("add", "verify", "close_session", "../x", "a?b")]
    async with PathCountingServer() as rs:
        cfg = make_config(fake_model.base_url, rs.url, api=api)
        async with running_gateway(cfg) as (stub, _):
            res = await stub.Rollout(req("r1", t), timeout=30)
        paths = dict(rs.paths)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    # One session, one declared tool, one verify: nothing the model asked for besides "add".
    assert paths == {"/seed_session": 1, "/add": 1, "/verify": 1, "/close_session": 1}
    output = orjson.loads(res.output_json)
    calls = [i for i in output if i["type"] == "function_call"]
    outs = {i["call_id"]: orjson.loads(i["output"]) for i in output if i["type"] == "function_call_output"}
    assert [c["name"] for c in calls] == _CALLS
    by_name = {c["name"]: outs[c["call_id"]] for c in calls}
    assert by_name["add"] == {"sum": 3}
    for name in _CALLS[:-1]:
        assert f"unknown tool {name!r}" in by_name[name]["error"], by_name[name]
    # The model saw the outputs and answered; the verifier scored that answer.
    assert output[-1]["type"] == "message"
    assert res.HasField("reward") and res.verifier_version == "fake-1"


def test_callable_tools_reads_both_api_shapes_and_drops_unsafe_names() -> None:
    tools = [
        _tool("add"),
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},  # Chat Completions shape
        _tool("verify"), _tool("seed_session"), _tool("../x"), _tool("a/b"), _tool("a?b"), _tool("x" * 65),
        _tool(""), {"type": "web_search"}, "junk", {"type": "function", "name": 7},
    ]
    assert callable_tools(tools) == {"add", "get_weather"}
    assert callable_tools(None) == frozenset() and callable_tools("add") == frozenset()
    assert {"seed_session", "verify", "close_session", "aggregate_metrics", "verify_batch"} <= PROTOCOL_ROUTES
