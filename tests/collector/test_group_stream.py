"""The trainers' Python API (issue 16, item 3): groups streamed as they complete, with backpressure, failures
apart, the all-equal filter and an exact count. Against the fake gateway (a real gRPC server on 127.0.0.1, its
own thread) and, end to end, a real gateway in front of the fake model and resources server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector.errors import UnknownAgentError
from rollgate.collector.train import Group, GroupStream
from tests.collector.conftest import task
from tests.collector.fake_gateway import FakeGateway
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import live_gateway, make_config

K = 8
ROOT = Path(__file__).resolve().parents[2]


def _mixed(i: int) -> dict[str, Any]:
    """Task i: every fifth one's rewards are all equal (no GRPO signal), the others differ."""
    rewards = [1.0] * K if i % 5 == 0 else [float(r % 2) for r in range(K)]
    return task(i, reward_by_repeat=rewards)


async def test_1000_groups_of_8_reach_a_slow_consumer_once_and_whole_with_bounded_memory() -> None:
    n, failing = 1000, {(7, 3), (500, 0), (500, 5)}
    with FakeGateway(latency_s=(0.0, 0.002), fail=failing) as gw:
        seen: list[Group] = []
        peak_ready = peak_running = 0
        async with GroupStream(gw.address, "my_agent", (_mixed(i) for i in range(n)), group_size=K,
                               max_in_flight=64, buffer_groups=4) as stream:
            async for group in stream:
                seen.append(group)
                peak_ready = max(peak_ready, len(stream._ready))
                peak_running = max(peak_running, len(stream._pending))
                await asyncio.sleep(0.001)  # the trainer is slower than the gateway
        assert len(gw.received) == n * K  # every rollout sent once: nothing lost, nothing resent
        assert gw.max_in_flight <= 64
    # Every task once: the groups that succeeded whole, in completion order; the two failed ones apart.
    assert sorted(g.task_index for g in seen) == [i for i in range(n) if i not in (7, 500)]
    for group in seen:
        assert [r["_rollout"]["repeat_index"] for r in group.rows] == list(range(K))
        assert {r["_rollout"]["task_index"] for r in group.rows} == {group.task_index}
        assert group.rewards == _mixed(group.task_index)["reward_by_repeat"]
        assert all("error" not in r for r in group.rows)
    assert [f.task_index for f in sorted(stream.failures, key=lambda f: f.task_index)] == [7, 500]
    failed = {f.task_index: f for f in stream.failures}
    assert len(failed[500].errors) == 2 and len(failed[500].rows) == K  # the whole group, failures marked
    assert all("reward" not in r for r in failed[7].rows if "error" in r)  # a failure is never a reward of 0
    assert (stream.stats.kept, stream.stats.failed, stream.stats.rollouts) == (n - 2, 2, n * K)
    # Bounded: the consumer's buffer never passed its size, and no more groups ran than the slots allow.
    assert peak_ready <= 4
    assert peak_running <= 64  # each group partly done holds at least one of the 64 slots


async def test_the_all_equal_filter_refills_to_exactly_the_groups_asked_for() -> None:
    with FakeGateway(latency_s=(0.0, 0.003), fail={(13, 2)}) as gw:
        endless: Iterator[dict[str, Any]] = (_mixed(i) for i in itertools.count())
        async with GroupStream(gw.address, "my_agent", endless, group_size=K, want=40, drop_uniform=True,
                               max_in_flight=32) as stream:
            kept = [group async for group in stream]
        sent = len(gw.received)
    assert len(kept) == 40
    assert all(len(set(g.rewards)) > 1 for g in kept)
    stats = stream.stats
    assert stats.kept == 40 and stats.dropped_uniform >= 8 and stats.failed == 1
    # No rollout was run for a group that could not be used: every started task ended kept, dropped or failed.
    assert stats.tasks_started == stats.kept + stats.dropped_uniform + stats.failed
    assert sent == stats.tasks_started * K == stats.rollouts


async def test_a_consumer_that_stops_early_ends_the_stream_without_waiting_for_the_rest() -> None:
    with FakeGateway(latency_s=(0.001, 0.01)) as gw:
        async with asyncio.timeout(30):
            async with GroupStream(gw.address, "my_agent", (_mixed(i) for i in itertools.count()), group_size=K,
                                   max_in_flight=16) as stream:
                async for _group in stream:
                    if stream.stats.kept >= 3:
                        break
        assert len(gw.received) < 200  # the endless task list was not run to the end


async def test_an_unknown_agent_and_a_bad_task_are_clear_errors() -> None:
    with FakeGateway() as gw:
        with pytest.raises(UnknownAgentError, match="unknown agent 'nope'.*serves: my_agent"):
            async with GroupStream(gw.address, "nope", [task(0)], group_size=2):
                pass
        with pytest.raises(ValueError, match=r"task 1: 'responses_create_params' must be an object"):
            async with GroupStream(gw.address, "my_agent", [task(0), {"input": "x"}], group_size=2) as stream:
                async for _group in stream:
                    pass


async def test_through_a_real_gateway_groups_carry_the_rows_the_cli_writes() -> None:
    # The fake model picks one of the options by a hash of (seed, prompt); repeat r gets seed 7 + r, so a group
    # mixes right and wrong answers, reproducibly.
    tasks = [{"responses_create_params": {"input": "choose: yes|no"}, "expected_answer": "yes", "id": i}
             for i in range(30)]
    async with FakeModelServer() as model, FakeResourcesServer() as rs:
        cfg = make_config(model.base_url, rs.url, kind="single_turn")
        async with live_gateway(cfg) as gw:
            async with GroupStream(f"127.0.0.1:{gw.port}", "a", tasks, group_size=4, want=5, drop_uniform=True,
                                   overrides={"seed": 7}) as stream:
                groups = [g async for g in stream]
    assert len(groups) == 5
    for group in groups:
        assert sorted(set(group.rewards)) == [0.0, 1.0]
        for r, row in enumerate(group.rows):
            assert row["id"] == group.task["id"] and row["responses_create_params"]["seed"] == 7 + r
            assert row["_rollout"]["agent"] == "a" and row["_rollout"]["repeat_index"] == r
            assert row["output"] and row["response"]["output"]


def test_the_grpo_example_writes_a_batch_with_group_normalised_advantages(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(_mixed(i)) + "\n" for i in range(5)))  # task 0: all-equal rewards
    out = tmp_path / "batch.jsonl"
    with FakeGateway(latency_s=(0.0, 0.002)) as gw:
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "grpo_batch.py"), "--gateway", gw.address, "--agent",
             "my_agent", "--tasks", str(tasks), "--group-size", str(K), "--groups", "6", "--out", str(out)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "48 records from 6 groups" in done.stderr and "dropped as all-equal" in done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 * K
    by_group: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_group.setdefault(record["task_index"], []).append(record)
    assert len(by_group) == 6 and all(len(g) == K for g in by_group.values())
    for group in by_group.values():
        assert abs(sum(r["advantage"] for r in group)) < 1e-6
        assert {r["completion"].split()[0] for r in group} == {"answer"}
        assert all((r["advantage"] > 0) == (r["reward"] == 1.0) for r in group)


async def test_groups_from_a_policy_older_than_allowed_are_dropped_as_stale_and_refilled() -> None:
    tasks = [{"responses_create_params": {"input": "choose: yes|no"}, "expected_answer": "yes", "id": i}
             for i in range(200)]
    async with FakeModelServer(latency_s=0.005) as model, FakeResourcesServer() as rs:
        cfg = make_config(model.base_url, rs.url, kind="single_turn", model={"version": "iter_001"})
        async with live_gateway(cfg) as gw:
            async with GroupStream(f"127.0.0.1:{gw.port}", "a", tasks, group_size=4, want=6, max_in_flight=8,
                                   policy_ok=lambda v: v == "iter_002") as stream:
                async with asyncio.timeout(30):
                    while stream.stats.dropped_stale < 2:  # groups of the old policy come back and are dropped
                        await asyncio.sleep(0.01)
                await gw.core.set_route("a", {"model": {"version": "iter_002"}})  # the new checkpoint
                groups = [g async for g in stream]
    assert len(groups) == 6
    assert all(r["_rollout"]["policy_versions"] == ["iter_002"] for g in groups for r in g.rows)
    stats = stream.stats
    assert stats.kept == 6 and stats.dropped_stale >= 2
    assert stats.tasks_started == stats.kept + stats.dropped_stale + stats.dropped_uniform + stats.failed
