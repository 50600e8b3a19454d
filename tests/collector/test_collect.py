"""``ng_collect_rollouts`` against an in-process fake gateway: order, flow control, failures, output files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector import collect_main
from rollgate.collector._outputs import backups_of
from tests.collector.conftest import read_jsonl, task, write_tasks
from tests.collector.fake_gateway import VERIFIER_VERSION, FakeGateway


def _argv(gw: FakeGateway, inp: Path, out: Path, *extra: str, agent: str = "my_agent") -> list[str]:
    return [f"+agent_name={agent}", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
            f"+gateway={gw.address}", *extra]


def _means(stdout: str) -> dict[str, Any]:
    parsed = json.loads(stdout)
    assert isinstance(parsed, dict)
    return parsed


def test_order_under_concurrency_and_printed_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "tasks.jsonl", [task(i) for i in range(12)])
    out = tmp_path / "nested" / "dir" / "rollouts.jsonl"
    with FakeGateway(latency_s=(0.0, 0.03), seed=7) as gw:
        status = collect_main(_argv(gw, inp, out, "+num_samples_in_parallel=8", "+num_repeats=3", "+limit=10"))
        sent = [(r.task_index, r.repeat_index) for r in gw.received]
        answered = list(gw.completed)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    rows = read_jsonl(out)
    assert [(r["_rollout"]["task_index"], r["_rollout"]["repeat_index"]) for r in rows] == [
        (t, k) for t in range(10) for k in range(3)
    ]
    for i in range(0, len(rows), 3):  # the workflows' positional grouping
        group = rows[i:i + 3]
        assert len({json.dumps(r["expected_answer"]) for r in group}) == 1
        assert len({r["responses_create_params"]["input"] for r in group}) == 1
    assert sent == sorted(sent)  # requests go out in order …
    assert answered != sorted(answered)  # … the answers race, and the file is still in order
    err = captured.err
    found = err.index("Found 12 rows!")
    repeating = err.index("Repeating rows (in a pattern of abc to aabbcc) from 10 to 30!")
    querying = err.index("Querying with 8 concurrent requests")
    assert found < repeating < querying
    assert "Collecting rollouts" in err
    assert _means(captured.out) == {"reward": 0.5, "accuracy": 0.5}
    assert captured.out == json.dumps({"reward": 0.5, "accuracy": 0.5}, indent=4) + "\n"


def test_output_row_contents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [
        {"responses_create_params": {"input": "say: hi", "seed": 42, "temperature": 0.9},
         "expected_answer": "hi", "category": "A", "reward_hint": 1},
    ])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        status = collect_main(_argv(gw, inp, out, "+responses_create_params.temperature=0.2", "+num_repeats=2"))
    assert status == 0
    rows = read_jsonl(out)
    first, second = rows
    # The input row as given; echoed task fields and reserved keys are never overwritten by the verifier.
    assert first["expected_answer"] == "hi" and first["category"] == "A" and first["reward_hint"] == 1
    assert first["responses_create_params"] == {
        "agent_default": 1, "input": "say: hi", "seed": 42, "temperature": 0.2,
    }
    assert second["responses_create_params"]["seed"] == 43
    assert first["reward"] == 1.0 and first["accuracy"] is True and first["note"] == "text"
    assert first["output"][0]["content"][0]["text"] == "answer 0/0"
    assert first["response"]["output"] == first["output"]
    meta = first["_rollout"]
    assert set(meta) == {"id", "task_index", "repeat_index", "agent", "model", "seed", "verifier_version",
                         "attempts", "truncated", "timings", "policy_versions"}
    assert meta["policy_versions"] == []  # this fake gateway reports no model calls
    assert meta["agent"] == "my_agent" and meta["seed"] == 42 and meta["model"] == "fake-model"
    assert meta["verifier_version"] == VERIFIER_VERSION and meta["attempts"] == 1 and meta["truncated"] is False
    assert set(meta["timings"]) == {"model_s", "tool_s", "verify_s", "total_s"}
    assert second["_rollout"]["seed"] == 43 and second["_rollout"]["id"] != meta["id"]
    # Only the verifier's added numeric fields count; the echoed reward_hint does not.
    assert _means(capsys.readouterr().out) == {"reward": 1.0, "accuracy": 1.0}


def test_request_fields_on_the_wire(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0, reward_hint=1)])
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, tmp_path / "o.jsonl", "+deadline_s=30",
                                  "+responses_create_params.top_p=0.5")) == 0
        (req,) = gw.received
    assert req.agent == "my_agent" and req.deadline_s == 30 and req.task_index == 0 and req.repeat_index == 0
    assert json.loads(req.task_json) == task(0, reward_hint=1)
    assert json.loads(req.params_json) == {"input": "say: 0", "top_p": 0.5}
    assert len(req.rollout_id) == 24


@pytest.mark.parametrize("parallel", [1, 3])
def test_flow_control_limits_in_flight(tmp_path: Path, parallel: int) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(20)])
    with FakeGateway(latency_s=(0.001, 0.01)) as gw:
        status = collect_main(_argv(gw, inp, tmp_path / "o.jsonl", f"+num_samples_in_parallel={parallel}",
                                    "+num_repeats=2"))
        assert status == 0
        assert gw.max_in_flight == parallel  # never more, and the slots are actually used
        assert set(gw.max_running.values()) == {0}  # a gateway that does not run ahead is never asked to
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 40


@pytest.mark.parametrize("parallel", [1, 3])
def test_a_gateway_that_runs_ahead_gets_twice_the_parallelism_and_is_told_to_run_only_it(
        tmp_path: Path, parallel: int) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(20)])
    with FakeGateway(latency_s=(0.001, 0.01), runs_ahead=True) as gw:
        status = collect_main(_argv(gw, inp, tmp_path / "o.jsonl", f"+num_samples_in_parallel={parallel}",
                                    "+num_repeats=2"))
        assert status == 0
        # This fake starts whatever arrives, so its peak is what the collector had sent: the running share and as
        # many again waiting for it.
        assert gw.max_in_flight == 2 * parallel
        assert gw.max_running == {0: parallel}
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 40


@pytest.mark.parametrize("parallel", [2, 6, 9])
def test_runs_ahead_over_several_streams_shares_the_parallelism_among_them(tmp_path: Path, parallel: int) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(60)])
    with FakeGateway(latency_s=(0.001, 0.01), runs_ahead=True) as gw:
        port = gw.address.rsplit(":", 1)[1]
        status = collect_main(["+agent_name=my_agent", f"+input_jsonl_fpath={inp}",
                               f"+output_jsonl_fpath={tmp_path / 'o.jsonl'}", f"+gateway=dns:///127.0.0.1:{port}",
                               f"+num_samples_in_parallel={parallel}"])
        assert status == 0
        assert gw.max_in_flight <= 2 * parallel
        # Four streams on a DNS name: the shares sum to the parallelism (a stream with no share sends nothing).
        shares = sorted(gw.max_running.values(), reverse=True)
        assert sum(shares) == parallel and shares[0] - shares[-1] <= 1 and len(shares) == min(parallel, 4)
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 60


def test_failed_rollout_sends_its_group_to_the_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i, reward_hint=1.0 if i == 1 else 0.0) for i in range(4)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.0, 0.01), fail={(1, 2)}) as gw:
        status = collect_main(_argv(gw, inp, out, "+num_repeats=3", "+num_samples_in_parallel=4"))
    captured = capsys.readouterr()
    assert status == 1
    rows = read_jsonl(out)
    assert [r["_rollout"]["task_index"] for r in rows] == [0, 0, 0, 2, 2, 2, 3, 3, 3]
    assert all("error" not in r for r in rows)
    side = read_jsonl(Path(f"{out}.failures"))
    assert [(r["_rollout"]["task_index"], r["_rollout"]["repeat_index"]) for r in side] == [(1, 0), (1, 1), (1, 2)]
    assert [r["_rollout"]["status"] for r in side] == ["completed", "completed", "failed"]
    failed = side[2]
    assert "reward" not in failed
    assert failed["error"] == {"stage": "model", "kind": "timeout", "message": "fake model timed out",
                               "http_status": None, "attempts": 3}
    assert side[0]["reward"] == 1.0
    # Means over every successful rollout: 9 with reward 0 in the main file and 2 with reward 1 in the sidecar.
    assert _means(captured.out)["reward"] == pytest.approx(2 / 11)
    assert "1 of 12 rollouts failed (model: 1)" in captured.err
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["counts"] == {"tasks": 4, "rollouts": 12, "succeeded": 11, "failed": 1}
    assert manifest["failures_by_stage"] == {"model": 1}


def test_no_sidecar_when_nothing_fails(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0)])
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, tmp_path / "o.jsonl")) == 0
    assert not Path(f"{tmp_path / 'o.jsonl'}.failures").exists()


def test_broken_stream_reconnects_and_resends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(10)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.01, 0.02), break_after=3, break_once=True) as gw:
        status = collect_main(_argv(gw, inp, out, "+num_samples_in_parallel=2"))
        resent = len(gw.received) - 10
    assert status == 0
    rows = read_jsonl(out)
    assert [r["_rollout"]["task_index"] for r in rows] == list(range(10))  # each once, in order
    assert resent >= 1  # what was in flight when the stream broke went out again
    assert not Path(f"{out}.failures").exists()
    assert "reconnecting" in capsys.readouterr().err
    assert json.loads(Path(f"{out}.manifest.json").read_text())["reconnects"] >= 1


def test_gateway_gone_for_good_fails_the_rest_without_hanging(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(10)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.01, 0.02), break_after=3) as gw:
        status = collect_main(_argv(gw, inp, out, "+num_samples_in_parallel=2", "+reconnect_timeout_s=1"))
    assert status == 1
    main, side = read_jsonl(out), read_jsonl(Path(f"{out}.failures"))
    assert len(main) + len(side) == 10
    assert {r["error"]["stage"] for r in side if "error" in r} == {"gateway"}
    assert "stayed unreachable" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["{oops", '"just a string"', '{"no_params": 1}'])
def test_malformed_input_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0), bad, task(2)], blank_after=1)
    out = tmp_path / "o.jsonl"
    out.write_text("previous run\n")
    with FakeGateway() as gw:
        status = collect_main(_argv(gw, inp, out))
        assert gw.received == []
    assert status == 2
    assert f"{inp}:3: " in capsys.readouterr().err
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "t.jsonl"]


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeGateway() as gw:
        status = collect_main(_argv(gw, tmp_path / "missing.jsonl", tmp_path / "o.jsonl"))
    assert status == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_agent_lists_the_gateways_agents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0)])
    with FakeGateway(agents=("my_agent", "model_v1")) as gw:
        status = collect_main(_argv(gw, inp, tmp_path / "o.jsonl", agent="my_agnet"))
        assert gw.received == []
    assert status == 2
    err = capsys.readouterr().err
    assert "unknown agent 'my_agnet'" in err and "my_agent, model_v1" in err and gw.address in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_unreachable_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0)])
    out = tmp_path / "o.jsonl"
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    status = collect_main(["+agent_name=a", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                           "+gateway=127.0.0.1:1"])
    assert status == 1
    assert "cannot reach the gateway at 127.0.0.1:1" in capsys.readouterr().err
    assert not out.exists()


def test_rerun_moves_the_old_output_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0), task(1)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(fail={(1, 0)}) as gw:
        assert collect_main(_argv(gw, inp, out)) == 1
    first_main, first_side = out.read_text(), Path(f"{out}.failures").read_text()
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out)) == 0
    err = capsys.readouterr().err
    # One backup per re-run: a folder with the output and its sidecars, under their own names.
    (bak,) = tmp_path.glob("*.bak")
    assert re.fullmatch(r"o\.jsonl\.\d{8}T\d{6}Z\.bak", bak.name) and bak.is_dir(), bak
    assert sorted(p.name for p in bak.iterdir()) == ["o.jsonl", "o.jsonl.failures", "o.jsonl.manifest.json"]
    assert (bak / "o.jsonl").read_text() == first_main
    assert (bak / "o.jsonl.failures").read_text() == first_side
    assert str(bak) in err
    assert not Path(f"{out}.failures").exists()  # this run had no failures
    assert len(read_jsonl(out)) == 2
    assert "warning:" in err and "already exists" in err


def test_three_reruns_leave_three_complete_backups_and_nothing_else(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0), task(1)])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        for _ in range(4):  # the first run and three re-runs of the same command
            assert collect_main(_argv(gw, inp, out)) == 0
    baks = backups_of(out)  # oldest first (runs within one second get .1, .2 … after the stamp)
    assert len(baks) == 3 and sorted(baks) == sorted(tmp_path.glob("*.bak"))
    for bak in baks:
        assert sorted(p.name for p in bak.iterdir()) == ["o.jsonl", "o.jsonl.manifest.json"]
        assert len(read_jsonl(bak / "o.jsonl")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["t.jsonl", "o.jsonl", "o.jsonl.manifest.json", *(b.name for b in baks)])
    # Keeping only the newest two: the oldest folder goes, the newest two stay.
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out, "+keep_backups=2")) == 0
    assert sorted(tmp_path.glob("*.bak")) == sorted(backups_of(out)) and len(backups_of(out)) == 2
    assert baks[0] not in backups_of(out) and baks[1] not in backups_of(out) and baks[2] in backups_of(out)


def test_manifest(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(3)])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out, "+num_repeats=2", "+limit=2")) == 0
    m = json.loads(Path(f"{out}.manifest.json").read_text())
    assert m["config"]["agent_name"] == "my_agent" and m["config"]["num_repeats"] == 2 and m["config"]["limit"] == 2
    import hashlib
    assert m["input"] == {"path": str(inp), "sha256": hashlib.sha256(inp.read_bytes()).hexdigest(), "rows": 3}
    assert m["counts"] == {"tasks": 2, "rollouts": 4, "succeeded": 4, "failed": 0}
    assert m["failures_by_stage"] == {}
    assert m["means"] == {"reward": 0.5, "accuracy": 0.5}
    assert m["verifier_versions"] == [VERIFIER_VERSION]
    assert m["gateway"] == {"address": gw.address}
    assert m["started_at"].endswith("Z") and m["finished_at"].endswith("Z")
    assert m["wall_s"] >= 0 and m["throughput_rollouts_per_s"] is not None


def test_empty_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "t.jsonl"
    inp.write_text("\n")
    with FakeGateway() as gw:
        # A file with no task rows is a mistake to report (issue 14), not a run of nothing that moves the old
        # output aside.
        assert collect_main(_argv(gw, inp, tmp_path / "o.jsonl")) == 2
    captured = capsys.readouterr()
    assert f"{inp}: no rows" in captured.err and captured.out == ""
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(("runs_ahead", "parallel"), [(False, 2), (True, 1)])
def test_rollouts_the_gateway_never_answers_are_given_up_and_the_rest_finish(
        tmp_path: Path, runs_ahead: bool, parallel: int) -> None:
    """The collector's own deadline (deadline_s plus a grace; twice deadline_s when rollouts wait at the gateway).
    Working ahead at parallelism 1, the two hung rollouts fill the stream's room: giving them up must free it."""
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(6)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(runs_ahead=runs_ahead, hang={(0, 0), (1, 0)}) as gw:
        status = collect_main(_argv(gw, inp, out, f"+num_samples_in_parallel={parallel}", "+deadline_s=0.2"))
    assert status == 1
    assert [r["_rollout"]["task_index"] for r in read_jsonl(out)] == [2, 3, 4, 5]
    failed = read_jsonl(Path(f"{out}.failures"))
    assert [r["_rollout"]["task_index"] for r in failed] == [0, 1]
    for row in failed:
        assert row["error"]["stage"] == "rollout" and row["error"]["kind"] == "timeout"
        assert row["error"]["message"].startswith("no answer from the gateway within")
