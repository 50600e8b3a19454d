"""End to end over real gRPC: Collect streams, the tool loop, sessions, health, ListAgents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import make_config, running_gateway, task


def _req(rid: str, t: dict[str, Any], agent: str = "a", deadline_s: float = 0.0) -> pb.RolloutRequest:
    return pb.RolloutRequest(rollout_id=rid, agent=agent, task_json=orjson.dumps(t),
                             params_json=orjson.dumps(t["responses_create_params"]), deadline_s=deadline_s)


async def _collect(stub: Any, reqs: list[pb.RolloutRequest]) -> dict[str, pb.RolloutResult]:
    async def gen() -> AsyncIterator[pb.CollectRequest]:
        for r in reqs:
            yield pb.CollectRequest(rollouts=[r])

    results: dict[str, pb.RolloutResult] = {}
    async with asyncio.timeout(30):
        async for msg in stub.Collect(gen()):
            assert msg.results  # one or several per message (the gateway batches what finished together)
            for res in msg.results:
                results[res.rollout_id] = res
    return results


def _tools(t: dict[str, Any], *names: str) -> dict[str, Any]:
    """``t`` with ``names`` declared as the request's tools (only declared tools are called)."""
    t["responses_create_params"]["tools"] = [{"type": "function", "name": n, "parameters": {}} for n in names]
    return t


def _outputs(res: pb.RolloutResult) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = orjson.loads(res.output_json)
    return items


async def test_two_parallel_tool_calls_run_concurrently(fake_model: FakeModelServer) -> None:
    async with FakeResourcesServer(tool_latency_s=0.2) as rs:
        async with running_gateway(make_config(fake_model.base_url, rs.url)) as (stub, _):
            # The model sees each tool's body text as the server wrote it (aiohttp's json.dumps spacing).
            res = await stub.Rollout(_req("r1", _tools(task('tool: add {"a": 2, "b": 3}\ntool: add {"a": 1, "b": 1}',
                                                            'tools said: {"sum": 5}|{"sum": 2}'), "add")))
        assert rs.max_in_flight == 2
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert res.reward == 1.0 and res.attempts == 2 and not res.truncated
    kinds = [i["type"] for i in _outputs(res)]
    assert kinds == ["function_call", "function_call", "function_call_output", "function_call_output", "message"]
    response = orjson.loads(res.response_json)
    assert response["output"] == _outputs(res)
    assert response["usage"]["total_tokens"] > 0
    assert res.timings.tool_s > 0 and res.timings.model_s > 0 and res.timings.total_s >= res.timings.tool_s
    assert orjson.loads(res.verifier_fields_json) == {"reward": 1.0, "accuracy": True}
    assert res.verifier_version == "fake-1" and res.model == "fake-model"


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_unknown_tool_and_tool_500_reach_the_model_as_error_text(
        api: str, fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url, api=api)
    async with running_gateway(cfg) as (stub, _):
        res = await stub.Rollout(_req("r1", _tools(task("tool: nosuch {}\ntool: boom {}"), "nosuch", "boom")))
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    outs = [orjson.loads(i["output"]) for i in _outputs(res) if i["type"] == "function_call_output"]
    assert "unknown tool 'nosuch'" in outs[0]["error"]
    assert "HTTP 500" in outs[1]["error"] and "boom" in outs[1]["error"]
    final = _outputs(res)[-1]
    assert final["type"] == "message" and final["content"][0]["text"].startswith("tools said: ")
    assert res.reward == 0.0


async def test_max_steps_truncates_and_still_verifies(fake_model: FakeModelServer,
                                                      fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url, max_steps=3)
    async with running_gateway(cfg) as (stub, _):
        res = await stub.Rollout(_req("r1", _tools(task('tool: add {"a": 1, "b": 2}\nloop_tools'), "add")))
    assert res.status == pb.ROLLOUT_STATUS_OK and res.truncated
    assert res.attempts == 3 and fake_model.requests["/v1/chat/completions"] == 3
    assert fake_resources.requests["add"] == 2  # the last call's request is recorded, not run
    assert fake_resources.requests["verify"] == 1 and res.HasField("reward")


async def test_session_cookies_stay_with_their_rollout(fake_model: FakeModelServer) -> None:
    async with FakeResourcesServer(tool_latency_s=0.02) as rs:
        async with running_gateway(make_config(fake_model.base_url, rs.url)) as (stub, _):
            results = await _collect(stub, [_req(f"r{i}", _tools(task("tool: whoami {}"), "whoami"))
                                               for i in range(12)])
        assert len(rs.verified) == 12
        seen_by_verify = {}
        for sid, body in rs.verified:
            outs = [orjson.loads(i["output"]) for i in body["response"]["output"]
                    if i["type"] == "function_call_output"]
            assert outs == [{"session_id": sid}]
            seen_by_verify[sid] = body
        assert len(seen_by_verify) == 12 and None not in seen_by_verify
        assert sorted(str(sid) for _, sid in rs.calls) == sorted(map(str, seen_by_verify))
        assert sorted(map(str, rs.closed)) == sorted(map(str, seen_by_verify))
    assert all(r.status == pb.ROLLOUT_STATUS_OK for r in results.values())


async def test_collect_keeps_going_after_failures(fake_model: FakeModelServer,
                                                  fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url)
    bad = task("fail_seed: 1\nsay: x")
    bad["responses_create_params"]["seed"] = 1
    reqs = [_req("ok1", task("say: a", "a")), _req("bad", bad), _req("who", task("say: b"), agent="nope"),
            _req("slow", task("sleep: 3\nsay: c"), deadline_s=0.1), _req("ok2", task("say: d", "d"))]
    async with running_gateway(cfg) as (stub, _):
        results = await _collect(stub, reqs)
    assert set(results) == {"ok1", "bad", "who", "slow", "ok2"}
    assert results["ok1"].reward == 1.0 and results["ok2"].reward == 1.0
    bad_res = results["bad"]
    assert bad_res.status == pb.ROLLOUT_STATUS_FAILED and not bad_res.HasField("reward")
    assert (bad_res.error.stage, bad_res.error.kind, bad_res.error.http_status, bad_res.error.attempts) == (
        "model", "http_error", 400, 1)
    assert (results["who"].error.stage, results["who"].error.kind) == ("gateway", "unknown_agent")
    assert (results["slow"].error.stage, results["slow"].error.kind) == ("rollout", "timeout")


async def test_collect_results_arrive_as_they_finish(fake_model: FakeModelServer,
                                                     fake_resources: FakeResourcesServer) -> None:
    reqs = [_req("slow", task("sleep: 0.5\nsay: s")), _req("fast", task("say: f"))]
    async with running_gateway(make_config(fake_model.base_url, fake_resources.url)) as (stub, _):
        order = list(await _collect(stub, reqs))
    assert order == ["fast", "slow"]


async def test_client_cancel_cancels_outstanding_rollouts(fake_model: FakeModelServer,
                                                          fake_resources: FakeResourcesServer) -> None:
    async with running_gateway(make_config(fake_model.base_url, fake_resources.url)) as (stub, _):
        gate = asyncio.Event()

        async def gen() -> AsyncIterator[pb.CollectRequest]:
            yield pb.CollectRequest(rollouts=[_req("long", task("sleep: 2\nsay: x"))])
            await gate.wait()

        call = stub.Collect(gen())
        while fake_model.requests["/v1/chat/completions"] == 0:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        gate.set()
        # the gateway drops its model call: the fake sees the request cancelled, and nothing is verified
        async with asyncio.timeout(5):
            while fake_model.cancelled == 0:
                await asyncio.sleep(0.01)
        assert fake_resources.requests["verify"] == 0


async def test_list_agents_health_and_reflection(fake_model: FakeModelServer,
                                                 fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url, max_steps=4)
    async with running_gateway(cfg) as (stub, port):
        agents = (await stub.ListAgents(pb.ListAgentsRequest())).agents
        assert [(a.name, a.model, a.api, list(a.model_base_urls), a.verifier_url, a.max_steps) for a in agents] == [
            ("a", "fake-model", "chat_completions", [fake_model.base_url], fake_resources.url, 4)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "rollgate.v1.Gateway"):
                ans = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert ans.status == health_pb2.HealthCheckResponse.SERVING


async def test_create_server_without_core_closes_its_own(fake_model: FakeModelServer,
                                                         fake_resources: FakeResourcesServer) -> None:
    from rollgate.gateway import create_server

    server, port = await create_server(make_config(fake_model.base_url, fake_resources.url))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc

        res = await pb_grpc.GatewayStub(channel).Rollout(_req("r", task("say: z", "z")), timeout=10)
        assert res.reward == 1.0
    await server.stop(None)
    await asyncio.sleep(0.05)  # the owned core closes once the server has terminated


async def test_batched_stream_both_ways_with_the_collector_client(fake_model: FakeModelServer,
                                                                  fake_resources: FakeResourcesServer) -> None:
    """Under load the collector sends many rollouts per message and the gateway answers many per message; every
    result still reaches the spec with its id (the answer text and reward are that task's own)."""
    from rollgate.collector.run._gateway_client import GatewayClient
    from rollgate.collector.run._tasks import RolloutSpec

    n = 300
    specs = []
    for i in range(n):
        row = task(f"say: A{i}", f"A{i}")
        specs.append(RolloutSpec(seq=i, task_index=i, repeat_index=0, rollout_id=f"id{i}", row=row,
                                 params=row["responses_create_params"]))
    got: dict[str, tuple[RolloutSpec, pb.RolloutResult]] = {}

    def on_result(spec: RolloutSpec, result: pb.RolloutResult) -> None:
        assert spec.rollout_id not in got
        got[spec.rollout_id] = (spec, result)

    async with running_gateway(make_config(fake_model.base_url, fake_resources.url)) as (_, port):
        async with GatewayClient(f"127.0.0.1:{port}") as client:
            async with asyncio.timeout(60):
                await client.collect(specs, agent="a", deadline_s=30, max_in_flight=200, on_result=on_result)
    assert len(got) == n
    for rid, (spec, result) in got.items():
        assert result.rollout_id == rid and result.status == pb.ROLLOUT_STATUS_OK, result.error
        assert _outputs(result)[-1]["content"][0]["text"] == spec.row["expected_answer"]
        assert result.reward == 1.0
    # Batches happened in both directions: far fewer messages than rollouts.
    assert client.messages_sent < n / 2
    assert client.messages_received < n


async def test_one_request_message_with_many_rollouts_and_batched_results(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    """A client may put every rollout in one message; results come back batched and matched by id, a bad one
    (unknown agent) among them answered on its own without ending the stream."""
    n = 200
    reqs = [_req(f"r{i}", task(f"say: A{i}", f"A{i}")) for i in range(n)] + [_req("who", task("say: x"), agent="no")]
    sizes: list[int] = []
    results: dict[str, pb.RolloutResult] = {}

    async def gen() -> AsyncIterator[pb.CollectRequest]:
        yield pb.CollectRequest(rollouts=reqs)

    async with running_gateway(make_config(fake_model.base_url, fake_resources.url)) as (stub, _):
        async with asyncio.timeout(60):
            async for msg in stub.Collect(gen()):
                sizes.append(len(msg.results))
                for res in msg.results:
                    assert res.rollout_id not in results
                    results[res.rollout_id] = res
    assert len(results) == n + 1
    assert all(results[f"r{i}"].reward == 1.0 for i in range(n))
    assert all(_outputs(results[f"r{i}"])[-1]["content"][0]["text"] == f"A{i}" for i in range(n))
    assert results["who"].error.kind == "unknown_agent"
    assert max(sizes) > 1 and len(sizes) < n


async def test_older_client_one_rollout_per_message_gets_every_answer(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    reqs = [_req(f"r{i}", task(f"say: A{i}", f"A{i}")) for i in range(100)]
    async with running_gateway(make_config(fake_model.base_url, fake_resources.url)) as (stub, _):
        results = await _collect(stub, reqs)
    assert sorted(results) == sorted(f"r{i}" for i in range(100))
    assert all(_outputs(results[f"r{i}"])[-1]["content"][0]["text"] == f"A{i}" for i in range(100))


def test_outcome_bytes_equal_a_plain_encoding_of_the_outcome() -> None:
    """The trajectory is encoded once and spliced into the response: the bytes are still exactly orjson's."""
    from rollgate.gateway._outcome import RolloutErrorInfo, RolloutOutcome, Timings
    from rollgate.gateway._servicer import outcome_to_pb

    output = [{"type": "message", "content": [{"type": "output_text", "text": "héllo ✓", "logprobs": [-0.25]}]}]
    response = {"id": "resp_1", "output": output, "usage": {"total_tokens": 3}, "temperature": 0.1}
    out = RolloutOutcome(rollout_id="x", reward=0.5, verifier_fields={"reward": 0.5, "ok": True},
                         response=response, output=output, timings=Timings(0.1, 0.2, 0.3, 0.6),
                         params={"input": "hi"}, attempts=2)
    res = outcome_to_pb(out)
    assert res.response_json == orjson.dumps(response) and res.output_json == orjson.dumps(output)
    assert (res.status, res.reward, res.attempts, res.params_json) == (pb.ROLLOUT_STATUS_OK, 0.5, 2, b'{"input":"hi"}')
    assert (res.timings.model_s, res.timings.total_s) == (0.1, 0.6) and not res.HasField("error")
    failed = outcome_to_pb(RolloutOutcome(rollout_id="y", error=RolloutErrorInfo("model", "timeout", "slow", 0, 3)))
    assert failed.status == pb.ROLLOUT_STATUS_FAILED and failed.response_json == b"" and not failed.HasField("reward")
    assert (failed.error.stage, failed.error.kind, failed.error.message, failed.error.attempts) == (
        "model", "timeout", "slow", 3)
