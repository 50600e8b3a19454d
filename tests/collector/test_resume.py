"""Exactly-once output: a killed collector resumes from its own output; failed groups are re-run in place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollgate.collector import collect_main
from rollgate.collector.run._tasks import iter_specs
from tests.collector.conftest import read_jsonl, task, write_tasks
from tests.collector.fake_gateway import FakeGateway

ROOT = Path(__file__).resolve().parents[2]


def _argv(gw: FakeGateway, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
            f"+gateway={gw.address}", *extra]


def _expected_ids(inp: Path, repeats: int) -> list[str]:
    return [s.rollout_id for s in iter_specs(inp, agent="my_agent", overrides={}, num_repeats=repeats, limit=None)]


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rollgate.collector", "collect", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(proc: subprocess.Popen[bytes], path: Path, min_bytes: int, timeout_s: float = 120.0) -> None:
    """SIGKILL ``proc`` once ``path`` holds at least ``min_bytes`` (or right away when that is 0)."""
    deadline = time.monotonic() + timeout_s
    while min_bytes and time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_size >= min_bytes:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _assert_exactly_once(out: Path, expected: list[str]) -> None:
    data = out.read_bytes()
    assert data.endswith(b"\n"), "no torn last line"
    rows = [json.loads(line) for line in data.splitlines()]
    assert [r["_rollout"]["id"] for r in rows] == expected  # every rollout once, in input order
    assert all("error" not in r and "status" not in r["_rollout"] for r in rows)


# (bytes written when the first run is killed, bytes of the resume's partial file when the resume is killed)
KILL_POINTS = [(0, None), (1, None), (900_000, None), (2_600_000, 300_000)]


@pytest.mark.parametrize(("first_kill", "resume_kill"), KILL_POINTS)
def test_sigkill_then_resume_gives_5000_rows_exactly_once(
        tmp_path: Path, first_kill: int, resume_kill: int | None) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(1000)])
    out = tmp_path / "o.jsonl"
    expected = _expected_ids(inp, 5)
    with FakeGateway(latency_s=(0.0, 0.004)) as gw:
        args = _argv(gw, inp, out, "+num_repeats=5", "+num_samples_in_parallel=32")
        _kill_after(_start(args), out, first_kill)
        if resume_kill is not None:
            resumed = _start([*args, "+resume=true"])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and resumed.poll() is None:
                if any(p.stat().st_size >= resume_kill for p in tmp_path.glob("o.jsonl.resume-*.partial")):
                    break
                time.sleep(0.005)
            assert resumed.poll() is None, "the resume finished before it could be killed"
            _kill_after(resumed, out, 0)
            assert list(tmp_path.glob("o.jsonl.resume-*.partial")), "a killed resume leaves its partial file"
        done = subprocess.run([sys.executable, "-m", "rollgate.collector", "collect", *args, "+resume_from_cache=true"],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_exactly_once(out, expected)
    assert not list(tmp_path.glob("*.partial")), "the resume's temporary files are gone"
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["counts"]["succeeded"] == 5000 and manifest["counts"]["failed"] == 0
    assert json.loads(done.stdout) == {"reward": 0.5, "accuracy": 0.5}  # reused rows count in the means


def test_torn_last_line_is_repaired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(6)])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out, "+num_repeats=2")) == 0
        lines = out.read_bytes().splitlines(keepends=True)
        out.write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])  # killed mid-write
        received = len(gw.received)
        assert collect_main(_argv(gw, inp, out, "+num_repeats=2", "+resume=true")) == 0
        rerun = [(r.task_index, r.repeat_index) for r in gw.received[received:]]
    assert "torn" in capsys.readouterr().err
    # Only the torn rollout and the rows after it run again; the four whole rows before are kept.
    assert rerun == [(2, 1), (3, 0), (3, 1), (4, 0), (4, 1), (5, 0), (5, 1)]
    _assert_exactly_once(out, _expected_ids(inp, 2))


def test_resume_reruns_failed_group_into_its_input_position(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(4)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(fail={(1, 2)}) as gw:
        assert collect_main(_argv(gw, inp, out, "+num_repeats=3")) == 1
    err = capsys.readouterr().err
    assert "+resume=true" in err  # the summary says how to re-run the failed ones
    assert [r["_rollout"]["task_index"] for r in read_jsonl(out)] == [0, 0, 0, 2, 2, 2, 3, 3, 3]
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out, "+num_repeats=3", "+resume=true")) == 0
        rerun = [(r.task_index, r.repeat_index) for r in gw.received]
    assert rerun == [(1, 2)]  # the completed members of the failed group were kept from the sidecar
    _assert_exactly_once(out, _expected_ids(inp, 3))
    assert not Path(f"{out}.failures").exists()
    assert not list(tmp_path.glob("*.bak")), "resume keeps the output; nothing is moved aside"


def test_changed_params_are_not_reused(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(3)])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out)) == 0
        before = len(gw.received)
        assert collect_main(_argv(gw, inp, out, "+responses_create_params.temperature=0.3", "+resume=true")) == 0
        assert len(gw.received) - before == 3  # a different parameter is a different rollout
    rows = read_jsonl(out)
    assert [r["responses_create_params"]["temperature"] for r in rows] == [0.3, 0.3, 0.3]


def test_tolerated_failure_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(10)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(fail={(4, 0)}) as gw:
        assert collect_main(_argv(gw, inp, out, "+max_failure_fraction=0.1")) == 0
        assert collect_main(_argv(gw, inp, out, "+max_failure_fraction=0.05")) == 1
    assert "within +max_failure_fraction=0.1" in capsys.readouterr().err
    assert len(read_jsonl(out)) == 9
