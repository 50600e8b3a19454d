"""Scale-out: deterministic shards collected separately, then ``rollgate merge`` equals one unsharded run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from rollgate.collector import collect_main, rollgate_main
from tests.collector.conftest import read_jsonl, task, write_tasks
from tests.collector.fake_gateway import FakeGateway


def _argv(gw: FakeGateway, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
            f"+gateway={gw.address}", "+num_repeats=2", *extra]


@pytest.mark.parametrize("shards", [2, 3])
def test_merged_shards_equal_one_run_row_for_row(tmp_path: Path, shards: int,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(11)])
    with FakeGateway(latency_s=(0.0, 0.005)) as gw:
        assert collect_main(_argv(gw, inp, tmp_path / "whole.jsonl", "+limit=10")) == 0
        for i in range(shards):
            assert collect_main(_argv(gw, inp, tmp_path / f"shard_{i}.jsonl", "+limit=10",
                                      f"+num_shards={shards}", f"+shard_index={i}")) == 0
    sizes = [len(read_jsonl(tmp_path / f"shard_{i}.jsonl")) for i in range(shards)]
    assert sum(sizes) == 20 and all(s > 0 for s in sizes)  # a real split, nothing twice
    capsys.readouterr()
    pattern = str(tmp_path / "shard_*.jsonl")
    assert rollgate_main(["merge", str(tmp_path / "merged.jsonl"), pattern]) == 0
    merged, whole = read_jsonl(tmp_path / "merged.jsonl"), read_jsonl(tmp_path / "whole.jsonl")
    assert [r["_rollout"]["id"] for r in merged] == [r["_rollout"]["id"] for r in whole]
    assert merged == whole
    assert json.loads(capsys.readouterr().out) == {"reward": 0.5, "accuracy": 0.5}
    manifest = json.loads((tmp_path / "merged.jsonl.manifest.json").read_text())
    assert manifest["counts"]["rollouts"] == 20 and manifest["counts"]["succeeded"] == 20


def test_merge_carries_the_failures_and_drops_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(6)])
    with FakeGateway(fail={(3, 1)}) as gw:
        for i in range(2):
            collect_main(_argv(gw, inp, tmp_path / f"s{i}.jsonl", "+num_shards=2", f"+shard_index={i}"))
    status = rollgate_main(["merge", "+output_jsonl_fpath=" + str(tmp_path / "m.jsonl"),
                            f"+inputs=[{tmp_path / 's0.jsonl'},{tmp_path / 's1.jsonl'},{tmp_path / 's1.jsonl'}]"])
    assert status == 0
    assert [r["_rollout"]["task_index"] for r in read_jsonl(tmp_path / "m.jsonl")] == [0, 0, 1, 1, 2, 2, 4, 4, 5, 5]
    side = read_jsonl(tmp_path / "m.jsonl.failures")
    assert [(r["_rollout"]["task_index"], r["_rollout"]["status"]) for r in side] == [(3, "completed"), (3, "failed")]
    manifest = json.loads((tmp_path / "m.jsonl.manifest.json").read_text())
    assert manifest["failures_by_stage"] == {"model": 1}


def test_merge_refuses_a_torn_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = tmp_path / "s.jsonl"
    shard.write_text('{"_rollout": {"id": "a", "task_index": 0, "repeat_index": 0}}\n{"_rollout": {"id"')
    assert rollgate_main(["merge", str(tmp_path / "m.jsonl"), str(shard)]) == 2
    err = capsys.readouterr().err
    assert f"{shard}:2: torn last line" in err and err.count("\n") == 1
    assert not (tmp_path / "m.jsonl").exists()


def test_shard_index_must_be_below_num_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = collect_main(["+agent_name=a", "+input_jsonl_fpath=x", "+output_jsonl_fpath=y",
                           "+num_shards=2", "+shard_index=2"])
    assert status == 2
    assert "shard_index must be below num_shards" in capsys.readouterr().err


def test_several_gateways_share_the_work(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(40)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.001, 0.01)) as a, FakeGateway(latency_s=(0.001, 0.01), seed=1) as b:
        assert collect_main(["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                             f"+gateway={a.address},{b.address}", "+num_samples_in_parallel=6"]) == 0
        assert len(a.received) > 0 and len(b.received) > 0 and len(a.received) + len(b.received) == 40
        assert max(a.max_in_flight, b.max_in_flight) <= 6  # the limit is shared, never per gateway
    assert [r["_rollout"]["task_index"] for r in read_jsonl(out)] == list(range(40))


def test_a_dead_replica_hands_its_rollouts_to_the_others(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(30)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.001, 0.01)) as good, FakeGateway(latency_s=(0.001, 0.01), break_after=2) as bad:
        assert collect_main(["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                             f"+gateway={bad.address},{good.address}", "+num_samples_in_parallel=4",
                             "+reconnect_timeout_s=1"]) == 0
    assert [r["_rollout"]["task_index"] for r in read_jsonl(out)] == list(range(30))


def test_dns_name_with_round_robin(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(10)])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        port = gw.address.rsplit(":", 1)[1]
        assert collect_main(["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                             f"+gateway=dns:///127.0.0.1:{port}"]) == 0
    assert len(read_jsonl(out)) == 10


@pytest.mark.parametrize("b_runs_ahead", [True, False])
def test_several_gateways_run_ahead_only_when_every_one_can(tmp_path: Path, b_runs_ahead: bool) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(40)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.001, 0.01), runs_ahead=True) as a, \
            FakeGateway(latency_s=(0.001, 0.01), seed=1, runs_ahead=b_runs_ahead) as b:
        assert collect_main(["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                             f"+gateway={a.address},{b.address}", "+num_samples_in_parallel=6"]) == 0
        shares = sorted([*a.max_running.values(), *b.max_running.values()])
        if b_runs_ahead:
            assert shares == [3, 3]  # the parallelism split between them, each sent up to twice its share
            assert max(a.max_in_flight, b.max_in_flight) <= 6
        else:  # b would run everything it is sent: nobody is sent more than the parallelism in total
            assert shares == [0, 0]
            assert max(a.max_in_flight, b.max_in_flight) <= 6
    assert [r["_rollout"]["task_index"] for r in read_jsonl(out)] == list(range(40))


def test_a_gateway_down_at_the_start_is_named_and_the_run_goes_on_without_running_ahead(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(20)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.001, 0.01), runs_ahead=True) as a:
        assert collect_main(["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                             f"+gateway={dead},{a.address}", "+num_samples_in_parallel=4",
                             "+reconnect_timeout_s=1"]) == 0
        # It answered ListAgents, but the silent one might be an older gateway: no rollouts are sent ahead.
        assert set(a.max_running.values()) == {0} and a.max_in_flight <= 4
    assert f"warning: gateway {dead}: UNAVAILABLE" in capsys.readouterr().err
    assert [r["_rollout"]["task_index"] for r in read_jsonl(out)] == list(range(20))
