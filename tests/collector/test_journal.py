"""The completion journal (issue 14): no finished rollout is paid for twice after Ctrl-C or SIGKILL.

The collector runs as a real process against the fake gateway on 127.0.0.1; a few rollouts hang there (longer
than any test waits), so the ordered output stays short while the rest finish behind them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector import collect_main
from rollgate.collector.run._journal import read_journal
from rollgate.collector.run._resume import SourceStats
from rollgate.collector.run._tasks import iter_specs
from tests.collector.conftest import task, write_tasks
from tests.collector.fake_gateway import FakeGateway

ROOT = Path(__file__).resolve().parents[2]
TASKS, REPEATS = 250, 2  # 500 rollouts
# 2% of the rollouts hang at the gateway (an hour: the tests never wait it out).
HUNG = {(t, 0) for t in (3, 30, 55, 80, 105, 130, 155, 180, 205, 230)}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _args(gw: FakeGateway, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
            f"+gateway={gw.address}", f"+num_repeats={REPEATS}", "+num_samples_in_parallel=16", *extra]


def _start(args: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rollgate.collector", "collect", *args], cwd=ROOT, text=True,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ids(inp: Path) -> dict[tuple[int, int], str]:
    return {(s.task_index, s.repeat_index): s.rollout_id
            for s in iter_specs(inp, agent="my_agent", overrides={}, num_repeats=REPEATS, limit=None)}


def _complete_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def _journal_results(directory: Path) -> int:
    return sum(1 for p in directory.glob("o.jsonl*.journal") for e in _complete_lines(p) if "seq" in e)


def _finished_on_disk(directory: Path) -> set[str]:
    """Every rollout a resume may reuse: ok rows of the output, its sidecars, partial files and journals."""
    done: set[str] = set()
    for path in directory.glob("o.jsonl*"):
        if path.name.endswith(".manifest.json") or path.is_dir():
            continue
        for entry in _complete_lines(path):
            if path.name.endswith(".journal"):
                if entry.get("ok") is True:
                    done.add(entry["row"]["_rollout"]["id"])
            elif "error" not in entry and entry["_rollout"].get("status") != "failed":
                done.add(entry["_rollout"]["id"])
    return done


def _wait(condition: Any, proc: subprocess.Popen[str], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the collector ended before {what}: {proc.communicate()[1][-2000:]}"
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def _resume_to_the_end(inp: Path, out: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """A resume against a gateway that hangs on nothing: the rollout ids it had to run, and the process."""
    with FakeGateway(batch_results=True) as gw:
        done = subprocess.run([sys.executable, "-m", "rollgate.collector", "collect",
                               *_args(gw, inp, out, "+resume=true")],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        return [r.rollout_id for r in gw.received], done


def _assert_exactly_once(out: Path, ids: dict[tuple[int, int], str]) -> None:
    rows = _complete_lines(out)
    assert out.read_bytes().endswith(b"\n")
    assert [r["_rollout"]["id"] for r in rows] == [ids[(t, r)] for t in range(TASKS) for r in range(REPEATS)]
    assert not list(out.parent.glob("*.journal")) and not list(out.parent.glob("*.partial"))


def test_ctrl_c_behind_hung_rollouts_keeps_every_finished_one(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(TASKS)])
    out = tmp_path / "o.jsonl"
    ids = _ids(inp)
    with FakeGateway(hang=HUNG, latency_s=(0.0, 0.005), batch_results=True) as gw:
        proc = _start(_args(gw, inp, out))
        finished = TASKS * REPEATS - len(HUNG)
        _wait(lambda: _journal_results(tmp_path) >= finished, proc, "every unhung rollout is in the journal")
        time.sleep(0.2)
        assert len(out.read_bytes().splitlines()) == 6, "the output is held at the first hung rollout (task 3)"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        answered = len(gw.completed)
    assert answered == finished
    assert f"{finished - 6} more finished rollout(s)" in stderr and "o.jsonl.journal" in stderr
    assert _finished_on_disk(tmp_path) == set(ids.values()) - {ids[k] for k in HUNG}
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["finished_not_written"] == finished - 6 and manifest["journal"] == f"{out}.journal"

    rerun, done = _resume_to_the_end(inp, out)
    assert done.returncode == 0, done.stderr
    assert sorted(rerun) == sorted(ids[k] for k in HUNG)  # no finished rollout is paid for twice
    _assert_exactly_once(out, ids)
    assert json.loads(done.stdout) == {"reward": 0.5, "accuracy": 0.5}  # journaled rows count in the means


# (results in the first run's journal when it is killed, or "all": every unhung one; results in the resume's
# journal when that resume is killed too)
KILLS = [(40, None), (200, 40), ("all", None)]


@pytest.mark.parametrize(("first", "second"), KILLS, ids=["early", "mid+killed-resume", "late"])
def test_sigkill_then_resume_reruns_exactly_the_unfinished(
        tmp_path: Path, first: int | str, second: int | None) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(TASKS)])
    out = tmp_path / "o.jsonl"
    ids = _ids(inp)
    total = TASKS * REPEATS
    with FakeGateway(hang=HUNG, latency_s=(0.002, 0.02)) as gw:
        proc = _start(_args(gw, inp, out))
        target = total - len(HUNG) if first == "all" else int(first)
        _wait(lambda: _journal_results(tmp_path) >= target, proc, f"{target} results in the journal")
        if first == "all":
            time.sleep(0.2)  # nothing else can arrive: the kill finds the run idle behind its hung rollouts
        _kill(proc)
        answered = len(gw.completed)
    finished = _finished_on_disk(tmp_path)
    if first == "all":
        assert len(finished) == answered == total - len(HUNG)
    assert len(finished) >= target
    assert len(_complete_lines(out)) < len(finished), "most finished rollouts were only in the journal"

    if second is not None:
        with FakeGateway(hang=HUNG, latency_s=(0.002, 0.02)) as gw:
            resumed = _start(_args(gw, inp, out, "+resume=true"))
            want = min(second, total - len(HUNG) - len(finished))
            _wait(lambda: sum(1 for p in tmp_path.glob("o.jsonl.resume-*.journal")
                              for e in _complete_lines(p) if "seq" in e) >= want, resumed, "the resume's progress")
            _kill(resumed)
            sent = [r.rollout_id for r in gw.received]
        assert not set(sent) & finished, "the resume ran nothing that was finished"
        assert list(tmp_path.glob("o.jsonl.resume-*.partial")), "a killed resume leaves its partial file"
        finished = _finished_on_disk(tmp_path)

    rerun, done = _resume_to_the_end(inp, out)
    assert done.returncode == 0, done.stderr
    assert len(rerun) == len(set(rerun)) == total - len(finished)  # re-run: exactly those not finished
    assert set(rerun) == set(ids.values()) - finished
    _assert_exactly_once(out, ids)


def test_a_rollout_holding_the_output_is_named_on_stderr(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(20)])
    out = tmp_path / "o.jsonl"
    stuck = _ids(inp)[(0, 0)]
    with FakeGateway(hang={(0, 0)}) as gw:
        proc = _start(_args(gw, inp, out), ROLLGATE_HELD_REPORT_S="0.5")
        lines: list[str] = []
        assert proc.stderr is not None
        stderr = proc.stderr
        reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
        reader.start()
        started = time.monotonic()
        _wait(lambda: any(stuck in line for line in lines), proc, "the held-head message", timeout_s=30)
        time.sleep(1.6)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        elapsed = time.monotonic() - started
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    held = [line for line in lines if line.startswith("waiting for rollout")]
    assert held and all(stuck in line for line in held)
    assert "(task 0, repeat 0): running at the gateway 127.0.0.1:" in held[0]
    assert "39 finished one(s) waiting behind it" in held[-1]
    assert 2 <= len(held) <= elapsed / 0.5 + 1  # again while it holds, at most once per interval


def test_empty_input_is_an_error_and_moves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "t.jsonl"
    inp.write_text("\n\n")
    out = tmp_path / "o.jsonl"
    out.write_text('{"old": 1}\n')
    with FakeGateway() as gw:
        assert collect_main(_args(gw, inp, out)) == 2
        assert not gw.received
    assert f"error: {inp}: no rows" in capsys.readouterr().err
    assert out.read_text() == '{"old": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "t.jsonl"]


def test_a_completed_run_removes_its_journal_and_a_fresh_run_moves_an_old_one_aside(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(5)])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        assert collect_main(_args(gw, inp, out)) == 0
        assert not Path(f"{out}.journal").exists()
        Path(f"{out}.journal").write_text("left by a killed run\n")
        assert collect_main(_args(gw, inp, out)) == 0
    (backup,) = tmp_path.glob("o.jsonl.*.bak")
    assert (backup / "o.jsonl.journal").read_text() == "left by a killed run\n"
    assert not Path(f"{out}.journal").exists()


def test_reading_a_journal(tmp_path: Path) -> None:
    def entry(seq: int, t: int, ok: bool = True) -> str:
        row = {"x": seq, "_rollout": {"id": f"id{seq}", "task_index": t, "repeat_index": 0}}
        return json.dumps({"seq": seq, "id": f"id{seq}", "task_index": t, "repeat_index": 0, "ok": ok, "row": row})

    path = tmp_path / "o.jsonl.journal"
    lines = [entry(1, 1), entry(0, 0), entry(3, 3), '{"written":2}', entry(5, 5), entry(4, 4, ok=False), "{bad",
             entry(2, 2)]
    path.write_text("\n".join(lines) + "\n" + entry(6, 6)[:30])  # killed mid-write: a torn last line
    stats = SourceStats()
    got = list(read_journal(path, stats))
    # Below the watermark the rows are in the ordered output; failed ones are never reused; sorted by task.
    assert [(key, row["x"]) for key, _, row in got] == [((2, 0), 2), ((3, 0), 3), ((5, 0), 5)]
    assert stats.torn == 1 and stats.unreadable == 1
