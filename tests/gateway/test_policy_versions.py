"""Policy versions (issue 16, item 2): each model call records the agent's ``model.version`` that served it.

The documented RL loop's step 4 ("update agent configuration to use new checkpoint") as ``rollgate gateway set
AGENT +model.version=…`` between two iterations of the real ``ng_collect_rollouts``, and a tool-calling rollout
in flight during such a set: its calls before the swap record the old version, those after it the new one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from rollgate import gateway
from rollgate.gateway import Security
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, make_config, req, task

ADMIN = "admin-secret-for-policy-versions"


async def _set_version(port: int, version: str) -> None:
    code = await asyncio.to_thread(
        gateway.main, ["set", "a", f"+model.version={version}", f"+gateway=127.0.0.1:{port}"])
    assert code == 0


async def test_two_rl_iterations_with_a_new_checkpoint_between_record_their_versions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLGATE_ADMIN_TOKEN", ADMIN)
    n = 30
    async with FakeModelServer() as model, FakeResourcesServer() as rs:
        cfg = make_config(model.base_url, rs.url, kind="single_turn")
        async with live_gateway(cfg, security=Security(admin_token=ADMIN)) as gw:
            tasks = write_tasks(tmp_path / "rl_tasks.jsonl", [task(f"say: {i}", str(i)) for i in range(n)])
            outputs = []
            for iteration in ("001", "002"):
                await _set_version(gw.port, f"iter_{iteration}")  # step 4 of the loop (before iteration 1: the base)
                out = tmp_path / f"rl_iter_{iteration}.jsonl"
                code, _, stderr = await finish(await start_collector(
                    f"127.0.0.1:{gw.port}", tasks, out, "+responses_create_params.temperature=0.5",
                    "+num_samples_in_parallel=15"))
                assert code == 0, stderr
                outputs.append(read_rows(out))
    first, second = outputs
    assert [r["_rollout"]["policy_versions"] for r in first] == [["iter_001"]] * n
    assert [r["_rollout"]["policy_versions"] for r in second] == [["iter_002"]] * n
    assert all(r["reward"] == 1.0 for r in first + second)


async def test_a_rollout_in_flight_during_a_swap_records_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLGATE_ADMIN_TOKEN", ADMIN)
    row = task('tool: add {"a": 1, "b": 2}\nsay: done', "done")
    row["responses_create_params"]["tools"] = [{"type": "function", "name": "add", "parameters": {}}]
    async with FakeModelServer() as model, FakeResourcesServer(tool_latency_s=1.0) as rs:
        cfg = make_config(model.base_url, rs.url, model={"version": "iter_001"})
        async with live_gateway(cfg, security=Security(admin_token=ADMIN)) as gw:
            rollout = asyncio.ensure_future(gw.stub.Rollout(req("r1", row), timeout=30))
            async with asyncio.timeout(10):
                while not rs.calls:  # the first model call is done, the tool call is running
                    await asyncio.sleep(0.01)
            await _set_version(gw.port, "iter_002")
            res = await rollout
            after = await gw.stub.Rollout(req("r2", row), timeout=30)
    assert res.status == pb.ROLLOUT_STATUS_OK, res.error
    assert list(res.policy_versions) == ["iter_001", "iter_002"]
    assert list(after.policy_versions) == ["iter_002", "iter_002"]
    # The same rollout's resources session carried on: one seed, the tool and verify in it.
    assert orjson.loads(res.output_json)[-1]["content"][0]["text"] == "done"


async def test_an_agent_without_a_version_records_null_per_call(tmp_path: Path) -> None:
    async with FakeModelServer() as model, FakeResourcesServer() as rs:
        async with live_gateway(make_config(model.base_url, rs.url, kind="single_turn")) as gw:
            tasks = write_tasks(tmp_path / "t.jsonl", [task("say: x", "x")])
            out = tmp_path / "o.jsonl"
            code, _, stderr = await finish(await start_collector(f"127.0.0.1:{gw.port}", tasks, out))
    assert code == 0, stderr
    (row,) = read_rows(out)
    assert row["_rollout"]["policy_versions"] == [None]
