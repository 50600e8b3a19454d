"""The daily loop, end to end and as a user runs it: a 5-line verify() served with ``--reload``, a collection
running through a real gateway, the file edited mid-run. Nothing restarts, no rollout is lost, every row's
reward matches the version recorded in it, and a later collection is scored by the edit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from tests.e2e.stack import BIN, ROOT, env_with, read_ready, stop

V1 = """\
def verify(task, response):
    text = response["output"][-1]["content"][0]["text"]
    return {"reward": float(text.strip() == task["expected_answer"]), "version_seen": 1}
"""
V2 = """\
def verify(task, response):
    text = response["output"][-1]["content"][0]["text"]
    return {"reward": 0.5 * float(text.strip() == task["expected_answer"]), "version_seen": 2}
"""


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback only)
        return str(resp.read().decode())


def _verify_count(url: str) -> float:
    for line in _get(f"{url}/metrics").splitlines():
        if line.startswith('rollgate_verifier_requests_total{endpoint="verify",outcome="ok"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _collect(work: Path, gateway: str, tasks: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "ng_collect_rollouts"), "+agent_name=a", f"+gateway={gateway}", f"+input_jsonl_fpath={tasks}",
         f"+output_jsonl_fpath={out}", "+num_samples_in_parallel=4"],
        cwd=work, env=env_with(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_edit_during_a_run_changes_rewards_and_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "my_verify.py").write_text(V1)
    n = 200  # 4 in flight x 40 ms: the run lasts ~2 s after the edit, ample for a reload to land mid-run
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(
        json.dumps({"responses_create_params": {"input": f"say: {i}"}, "expected_answer": str(i)}) + "\n"
        for i in range(n)
    ))
    procs: list[subprocess.Popen[str]] = []
    try:
        model = subprocess.Popen([sys.executable, "-m", "tests.fakes.model_server", "--port", "0",
                                  "--latency-ms", "40"], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env_with())
        procs.append(model)
        model_url = str(read_ready(model)["url"])
        verifier = subprocess.Popen([sys.executable, "-m", "rollgate.verifier", "serve", "my_verify:verify", "--reload",
                                     "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                                    env=env_with(PYTHONPATH=str(ROOT)))
        procs.append(verifier)
        verifier_url = str(read_ready(verifier)["url"])
        config = {"agents": {"a": {"kind": "single_turn", "verifier_url": verifier_url,
                                   "model": {"base_urls": [model_url], "name": "fake", "api": "chat_completions"}}}}
        (tmp_path / "gw.json").write_text(json.dumps(config))
        gw = subprocess.Popen([sys.executable, "-m", "rollgate.gateway", "serve", "--config", str(tmp_path / "gw.json"),
                               "--port", "0", "--metrics-port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=env_with())
        procs.append(gw)
        gateway = str(read_ready(gw)["address"])

        out = tmp_path / "run1.jsonl"
        run = _collect(tmp_path, gateway, tasks, out)
        deadline = time.monotonic() + 60
        while _verify_count(verifier_url) < 10 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "my_verify.py").write_text(V2)  # the edit lands while the run is in progress
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err

        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == n and not Path(f"{out}.failures").exists()  # no rollout lost
        assert [r["expected_answer"] for r in rows] == [str(i) for i in range(n)]
        by_version: dict[str, set[tuple[float, int]]] = {}
        for r in rows:
            by_version.setdefault(r["_rollout"]["verifier_version"], set()).add((r["reward"], r["version_seen"]))
        # Each row's reward is what the version recorded in it computes: nothing mixes old code and new label.
        assert all(len(v) == 1 for v in by_version.values()), by_version
        seen = Counter(r["version_seen"] for r in rows)
        assert seen[1] >= 10 and seen[2] >= 1, seen  # the edit took effect mid-run

        # A new run, after the edit, is scored by the new code without any restart.
        for _ in range(200):
            if json.loads(_get(f"{verifier_url}/healthz"))["reloads"] >= 1:
                break
            time.sleep(0.1)
        out2 = tmp_path / "run2.jsonl"
        run2 = _collect(tmp_path, gateway, tasks, out2)
        _, err2 = run2.communicate(timeout=120)
        assert run2.returncode == 0, err2
        rows2 = [json.loads(line) for line in out2.read_text().splitlines()]
        assert len(rows2) == n and {(r["reward"], r["version_seen"]) for r in rows2} == {(0.5, 2)}
        assert all(p.poll() is None for p in procs)  # nothing restarted
    finally:
        for p in reversed(procs):
            stop(p)


def test_reload_flag_is_in_the_usage() -> None:
    out = subprocess.run([sys.executable, "-m", "rollgate.verifier", "serve", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "--reload" in out.stdout and "--token-env" in out.stdout
