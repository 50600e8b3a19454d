"""Working ahead: a Collect stream's ``max_running`` bounds what runs; what was sent beyond it waits at the gateway.

The collector sends twice its parallelism so a finished rollout's successor starts in the gateway at once, without a
round trip to the collector; the model servers must still never see more than the parallelism.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import (
    live_gateway,
    make_config,
    req,
    results_until_unavailable,
    scrape,
    task,
    until,
    value,
)


async def test_list_agents_says_it_runs_ahead_and_its_stream_cap(fake_model: FakeModelServer,
                                                                 fake_resources: FakeResourcesServer) -> None:
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url), max_stream_rollouts=64) as live:
        answer = await live.stub.ListAgents(pb.ListAgentsRequest())
    assert answer.runs_ahead and answer.max_stream_rollouts == 64


@pytest.mark.parametrize("parallel", [4, 5])
async def test_the_collector_says_when_the_stream_cap_holds_back_its_parallelism(
        tmp_path: Path, fake_resources: FakeResourcesServer, parallel: int) -> None:
    async with FakeModelServer(latency_s=0.02) as model:
        tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: a{i}", f"a{i}") for i in range(12)])
        out = tmp_path / "out.jsonl"
        async with live_gateway(make_config(model.base_url, fake_resources.url), max_stream_rollouts=4) as live:
            proc = await start_collector(f"127.0.0.1:{live.port}", tasks, out, f"+num_samples_in_parallel={parallel}")
            code, _, err = await finish(proc)
        assert code == 0, err
        assert model.max_in_flight <= 4
    warning = "warning: a gateway stream runs at most 4 rollouts at once (gateway --max-stream-rollouts): 4 of the 5"
    assert (warning in err) == (parallel == 5), err


@pytest.mark.parametrize("max_running", [0, 1, 4])
async def test_at_most_max_running_run_and_every_rollout_is_answered(
        max_running: int, fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(latency_s=0.02) as model:
        reqs = [req(f"r{i}", task(f"say: a{i}", f"a{i}")) for i in range(24)]
        async with live_gateway(make_config(model.base_url, fake_resources.url)) as live:
            async def gen() -> AsyncIterator[pb.CollectRequest]:
                yield pb.CollectRequest(rollouts=reqs[:12], max_running=max_running)
                yield pb.CollectRequest(rollouts=reqs[12:], max_running=max_running)

            got: dict[str, pb.RolloutResult] = {}
            async with asyncio.timeout(30):
                async for msg in live.stub.Collect(gen()):
                    got.update((r.rollout_id, r) for r in msg.results)
        # 0 is an older client's stream: everything starts on arrival.
        assert model.max_in_flight == (max_running or 24)
    assert sorted(got) == sorted(r.rollout_id for r in reqs)
    assert all(r.status == pb.ROLLOUT_STATUS_OK and r.reward == 1.0 for r in got.values())


async def test_raising_max_running_starts_waiting_rollouts_and_lowering_it_holds_them(
        fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(latency_s=0.2) as model:
        reqs = [req(f"r{i}", task(f"say: a{i}", f"a{i}")) for i in range(14)]
        async with live_gateway(make_config(model.base_url, fake_resources.url)) as live:
            send: asyncio.Queue[pb.CollectRequest | None] = asyncio.Queue()

            async def gen() -> AsyncIterator[pb.CollectRequest]:
                while (msg := await send.get()) is not None:
                    yield msg

            call = live.stub.Collect(gen())
            await send.put(pb.CollectRequest(rollouts=reqs, max_running=2))
            await until(lambda: model.in_flight == 2)
            assert value(await scrape(live.metrics_url), "rollgate_gateway_rollouts_waiting") == 12
            await send.put(pb.CollectRequest(max_running=6))  # no rollouts: only the new limit
            await until(lambda: model.in_flight == 6)
            assert value(await scrape(live.metrics_url), "rollgate_gateway_rollouts_waiting") == 8
            await send.put(pb.CollectRequest(max_running=1))
            await send.put(None)
            # The six running finish; then the rest run one at a time.
            await until(lambda: model.in_flight <= 1)
            after_drop = 0
            got = []

            async def watch() -> None:
                nonlocal after_drop
                while True:
                    after_drop = max(after_drop, model.in_flight)
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            async with asyncio.timeout(30):
                async for msg in call:
                    got.extend(msg.results)
            watcher.cancel()
            assert model.max_in_flight == 6 and after_drop == 1
            assert value(await scrape(live.metrics_url), "rollgate_gateway_rollouts_waiting") == 0
    assert sorted(r.rollout_id for r in got) == sorted(r.rollout_id for r in reqs)


async def test_a_drain_answers_what_runs_and_gives_the_waiting_back_unstarted(
        fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(latency_s=0.5) as model:
        reqs = [req(f"r{i}", task(f"say: a{i}", f"a{i}")) for i in range(6)]
        async with live_gateway(make_config(model.base_url, fake_resources.url)) as live:
            async def gen() -> AsyncIterator[pb.CollectRequest]:
                yield pb.CollectRequest(rollouts=reqs, max_running=2)  # and the client is done writing

            call = live.stub.Collect(gen())
            await until(lambda: model.in_flight == 2)
            live.core.begin_drain()
            # UNAVAILABLE even though the client had sent everything: four of its rollouts were never run here.
            got = await results_until_unavailable(call)
        assert sorted(r.rollout_id for r in got) == ["r0", "r1"]
        assert sum(model.requests.values()) == 2


async def test_the_collector_runs_ahead_yet_the_model_sees_only_its_parallelism(
        tmp_path: Path, fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(latency_s=0.02) as model:
        tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: a{i}", f"a{i}") for i in range(40)])
        out = tmp_path / "out.jsonl"
        async with live_gateway(make_config(model.base_url, fake_resources.url)) as live:
            proc = await start_collector(f"127.0.0.1:{live.port}", tasks, out, "+num_samples_in_parallel=3")
            code, _, err = await finish(proc)
        assert code == 0, err
        assert model.max_in_flight == 3
    rows = read_rows(out)
    assert [r["_rollout"]["task_index"] for r in rows] == list(range(40))
    assert all(r["reward"] == 1.0 for r in rows)
