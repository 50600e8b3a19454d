"""The installed ``ng_collect_rollouts`` as a user runs it: the lines the workflows show, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.collector.conftest import read_jsonl, task, write_tasks
from tests.collector.fake_gateway import FakeGateway

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "ng_collect_rollouts"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the package is not installed (pip install -e .)")
def test_console_script_output(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "dpo_prompts.jsonl", [task(i) for i in range(5)])
    out = tmp_path / "dpo_rollouts.jsonl"
    with FakeGateway(latency_s=(0.0, 0.01)) as gw:
        proc = subprocess.run(
            [str(SCRIPT), "+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
             "+responses_create_params.temperature=0.7", "+num_repeats=3", "+num_samples_in_parallel=10"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={**os.environ, "ROLLGATE_GATEWAY": gw.address, "PYTHONPATH": str(ROOT)},
        )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[:3] == [
        "Found 5 rows!",
        "Repeating rows (in a pattern of abc to aabbcc) from 5 to 15!",
        "Querying with 10 concurrent requests",
    ]
    assert "Collecting rollouts: 100%" in proc.stderr and "15/15" in proc.stderr
    assert json.loads(proc.stdout) == {"reward": pytest.approx(0.4), "accuracy": pytest.approx(0.4)}
    rows = read_jsonl(out)
    assert len(rows) == 15 and all(r["responses_create_params"]["temperature"] == 0.7 for r in rows)


def _without_timings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "_rollout": {k: v for k, v in r["_rollout"].items() if k != "timings"}} for r in rows]


@pytest.mark.skipif(not SCRIPT.exists(), reason="the package is not installed (pip install -e .)")
def test_nemo_gyms_gym_eval_run_flags_work_like_the_plus_form(tmp_path: Path) -> None:
    """``gym eval run``'s spellings (NeMo Gym's current CLI) on our command: the same run as the +key=value form."""
    write_tasks(tmp_path / "in.jsonl", [task(i, responses_create_params={"input": f"say: {i}", "seed": 7})
                                        for i in range(6)])
    runs = {
        "flags": ["--agent", "my_agent", "--input", "in.jsonl", "--output", "flags.jsonl", "--num-repeats", "2",
                  "--concurrency", "8", "--temperature", "0.5", "--top-p", "0.9", "--max-output-tokens", "64",
                  "--limit", "5"],
        "short": ["-a", "my_agent", "-i=in.jsonl", "-o", "short.jsonl", "--num-repeats=2", "--concurrency=8",
                  "--temperature=0.5", "--top-p=0.9", "--max-output-tokens=64", "--limit=5"],
        "plus": ["+agent_name=my_agent", "+input_jsonl_fpath=in.jsonl", "+output_jsonl_fpath=plus.jsonl",
                 "+num_repeats=2", "+num_samples_in_parallel=8", "+responses_create_params.temperature=0.5",
                 "+responses_create_params.top_p=0.9", "+responses_create_params.max_output_tokens=64", "+limit=5"],
    }
    outputs, configs = {}, {}
    with FakeGateway(latency_s=(0.0, 0.01)) as gw:
        for name, args in runs.items():
            proc = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "ROLLGATE_GATEWAY": gw.address, "PYTHONPATH": str(ROOT)})
            assert proc.returncode == 0, proc.stderr
            assert "Querying with 8 concurrent requests" in proc.stderr
            outputs[name] = _without_timings(read_jsonl(tmp_path / f"{name}.jsonl"))
            config = json.loads((tmp_path / f"{name}.jsonl.manifest.json").read_text())["config"]
            configs[name] = {k: v for k, v in config.items() if k != "output_jsonl_fpath"}
        # A rerun with --resume keeps what is there: nothing is sent again.
        before = len(gw.received)
        proc = subprocess.run([str(SCRIPT), *runs["flags"], "--resume"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "ROLLGATE_GATEWAY": gw.address, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        assert len(gw.received) == before
    assert outputs["flags"] == outputs["plus"] == outputs["short"]
    assert configs["flags"] == configs["plus"] == configs["short"]
    rows = outputs["flags"]
    assert len(rows) == 10 and [r["_ng_rollout_index"] for r in rows[:2]] == [0, 1]
    assert rows[1]["responses_create_params"] == {"agent_default": 1, "input": "say: 0", "seed": 8,  # the fake's
                                                  "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 64}


@pytest.mark.skipif(not SCRIPT.exists(), reason="the package is not installed (pip install -e .)")
def test_help_lists_nemo_gyms_flags_and_an_unknown_flag_names_the_valid_ones(tmp_path: Path) -> None:
    shown = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert shown.returncode == 0
    for flag in ("--agent/-a", "--input/-i", "--output/-o", "--concurrency", "--temperature", "--top-p",
                 "--max-output-tokens", "--resume-from-cache", "num_repeats", "limit", "resume"):
        assert flag in shown.stdout, flag
    wrong = subprocess.run([str(SCRIPT), "--agnet", "my_agent", "-i", "in.jsonl", "-o", "out.jsonl"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert wrong.returncode == 2
    assert "unknown key 'agnet' (did you mean 'agent'?)" in wrong.stderr
    assert "agent_name" in wrong.stderr and "--agent/-a" in wrong.stderr and "--concurrency" in wrong.stderr
    assert not (tmp_path / "out.jsonl").exists()
