"""The gateway speaks NeMo Gym 0.7's resources-server protocol as its ``simple_agent`` does (issue 13).

Against a recording resources server on loopback that is as strict as NeMo Gym's ``SimpleResourcesServer``
where it matters: ``/close_session`` is validated as ``ResourcesCloseSessionRequest`` (no other field, an
``EpisodeId`` whose ``rollout_id`` matches NeMo Gym's pattern) and answered 422 otherwise, as NeMo Gym does to
``{}``. What it received is compared with what ``simple_agent`` sends: the task row at ``/seed_session``, the
parsed arguments at ``/<tool>`` (its body text, as written, handed to the model), the row plus ``response`` at
``/verify``, all in the cookie session the seed opened. ``tests/compat`` runs NeMo Gym's own servers.
"""

from __future__ import annotations

import re
from typing import Any, Self

import orjson
import pytest
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rollgate.gateway._resources import episode_rollout_id
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer
from tests.fakes.resources_server import final_text
from tests.gateway.gw_helpers import make_config, req, running_gateway

# The tool's answer, spaced and ordered as a server might write it: the model must see exactly these bytes.
RAW_TOOL_BODY = b'{"sum": 3,   "note": "caf\\u00e9"}'


class EpisodeId(BaseModel):
    """NeMo Gym 0.7's ``nemo_gym.episode_types.EpisodeId`` (fields and constraints as it declares them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    attempt: int = Field(default=0, ge=0)

    @field_validator("rollout_id")
    @classmethod
    def reserve_attempt_suffix(cls, rollout_id: str) -> str:
        if re.search(r"-a[1-9][0-9]*$", rollout_id):
            raise ValueError("rollout_id must not end with the reserved attempt suffix '-a<N>'")
        return rollout_id


class CloseSessionRequest(BaseModel):
    """NeMo Gym 0.7's ``ResourcesCloseSessionRequest``: what its ``SimpleResourcesServer`` validates."""

    model_config = ConfigDict(extra="forbid")

    resources_session_id: str
    episode_id: EpisodeId


class RecordingServer:
    """Records every POST (path, JSON body, session cookie) and every status it answered."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any, str | None]] = []
        self.statuses: list[tuple[str, int]] = []
        self._runner: web.AppRunner | None = None
        self._sessions = 0
        self.url = ""

    def bodies(self, path: str) -> list[Any]:
        return [body for p, body, _ in self.posts if p == path]

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/{route}", self._route)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.posts.append((request.path, await request.json(), request.cookies.get("session")))
        resp: web.StreamResponse = await handler(request)
        self.statuses.append((request.path, resp.status))
        return resp

    async def _route(self, request: web.Request) -> web.Response:
        route = request.match_info["route"]
        body = self.posts[-1][1]
        if route == "seed_session":
            self._sessions += 1
            resp = web.json_response({})
            resp.set_cookie("session", f"s{self._sessions}")
            return resp
        if route == "add":
            return web.Response(body=RAW_TOOL_BODY, content_type="application/json")
        if route == "verify":
            return web.json_response({**body, "reward": float(final_text(body["response"]) == "done")})
        if route == "close_session":
            try:
                CloseSessionRequest.model_validate(body)
            except ValidationError as exc:
                return web.json_response({"detail": exc.errors(include_url=False)}, status=422)
            return web.json_response({"resources_session_id": body["resources_session_id"]})
        return web.json_response({"detail": "Not Found"}, status=404)


TOOLS = [{"type": "function", "name": "add", "strict": False, "parameters": {"type": "object", "properties": {}}}]


def _row(prompt: str) -> dict[str, Any]:
    """A task row with task fields a NeMo Gym server reads at seed and verify (as ``initial_count``)."""
    return {"responses_create_params": {"input": prompt, "tools": TOOLS, "temperature": 0.25},
            "initial_count": 5, "expected_answer": "done", "category": {"nested": [1, 2]}}


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_seed_tool_verify_and_close_bodies_are_simple_agents(api: str, fake_model: FakeModelServer) -> None:
    row = _row('tool: add {"a": 1, "b": 2}\nsay: done')
    async with RecordingServer() as rs:
        async with running_gateway(make_config(fake_model.base_url, rs.url, api=api)) as (stub, _):
            res = await stub.Rollout(req("0123abcd", row), timeout=30)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert res.reward == 1.0
    # Nothing the server answered was a 4xx: NeMo Gym's servers would have taken every body.
    assert rs.statuses == [("/seed_session", 200), ("/add", 200), ("/verify", 200), ("/close_session", 200)]

    # /seed_session: the task row as sent, with the effective params (the agent's model name filled in).
    params = {**row["responses_create_params"], "model": "fake-model"}
    seed_row = {"initial_count": 5, "expected_answer": "done", "category": {"nested": [1, 2]},
                "responses_create_params": params}
    assert rs.bodies("/seed_session") == [seed_row]
    # /<tool>: the parsed arguments, in the seeded session; the model got the body text as the server wrote it.
    assert rs.posts[1] == ("/add", {"a": 1, "b": 2}, "s1")
    output = orjson.loads(res.output_json)
    tool_outputs = [i["output"] for i in output if i["type"] == "function_call_output"]
    assert tool_outputs == [RAW_TOOL_BODY.decode()]
    # /verify: the same row plus the response, in the same session.
    (verify_body,) = rs.bodies("/verify")
    assert verify_body == {**seed_row, "response": orjson.loads(res.response_json)}
    assert rs.posts[2][2] == "s1"
    # /close_session: NeMo Gym's ResourcesCloseSessionRequest, both ids the rollout's.
    assert rs.posts[3] == ("/close_session",
                           {"resources_session_id": "0123abcd", "episode_id": {"rollout_id": "0123abcd"}}, "s1")


@pytest.mark.parametrize("rollout_id", ["task 7/repeat#2", "-leading-dash", "r-a3", "", "ü"])
async def test_a_rollout_id_nemo_gym_refuses_as_an_episode_id_is_closed_under_a_valid_one(
        rollout_id: str, fake_model: FakeModelServer) -> None:
    async with RecordingServer() as rs:
        async with running_gateway(make_config(fake_model.base_url, rs.url, kind="single_turn")) as (stub, _):
            res = await stub.Rollout(req(rollout_id, _row("say: done")), timeout=30)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert ("/close_session", 200) in rs.statuses
    (close,) = rs.bodies("/close_session")
    assert close["resources_session_id"] == rollout_id
    assert close["episode_id"]["rollout_id"] == episode_rollout_id(rollout_id) != rollout_id


def test_episode_rollout_id_keeps_valid_ids_and_maps_others_apart() -> None:
    for valid in ("0123abcd", "r1", "a.b_c-d", "x-a0", "x-ab3", "a" * 64):
        assert episode_rollout_id(valid) == valid
        EpisodeId(rollout_id=valid)
    mapped = {episode_rollout_id(i) for i in ("a b", "a/b", "x-a1", "x-a12", "_x", "")}
    assert len(mapped) == 6  # distinct ids stay distinct
    for m in mapped:
        EpisodeId(rollout_id=m)
    with pytest.raises(ValidationError):
        CloseSessionRequest.model_validate({})  # what the gateway sent before issue 13: NeMo Gym's 422


async def test_sampler_params_outside_the_responses_api_stay_out_of_the_servers_bodies(
        fake_model: FakeModelServer) -> None:
    # A seed per repeat (reproducible evaluation) and a vLLM extra: NeMo Gym's servers validate
    # responses_create_params with extra="forbid" and would answer 422 to both.
    row = {"responses_create_params": {"input": "say: done", "seed": 42, "return_token_ids": True, "temperature": 0.5},
           "expected_answer": "done"}
    async with RecordingServer() as rs:
        async with running_gateway(make_config(fake_model.base_url, rs.url, kind="single_turn")) as (stub, _):
            res = await stub.Rollout(req("0123abcd", row), timeout=30)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    sent = {"input": "say: done", "temperature": 0.5, "model": "fake-model"}
    assert rs.bodies("/seed_session")[0]["responses_create_params"] == sent
    assert rs.bodies("/verify")[0]["responses_create_params"] == sent
    # The model got them, and the row keeps what was sent to it.
    assert fake_model.bodies[-1]["seed"] == 42 and fake_model.bodies[-1]["return_token_ids"] is True
    assert orjson.loads(res.params_json)["seed"] == 42
