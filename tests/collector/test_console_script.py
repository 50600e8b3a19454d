"""The installed ``ng_collect_rollouts`` as a user runs it: the lines the workflows show, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
