"""The real trio end to end: ``ng_collect_rollouts`` → ``rollgate up`` (gateway + a user's verifier) → fake model.

What a user would notice: tool calls executed against their own resources server with per-rollout state,
rewards from their ``verify()``, a failing repeat sending its whole group to ``.failures``, and bad input
stopping the run with ``FILE:LINE`` before anything is written.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import BIN, env_with, running_stack

USER_VERIFIER = '''
from rollgate.verifier import ResourcesServer, Session, tool


class Calculator(ResourcesServer):
    version = "calc-1"

    def seed_session(self, session: Session, body: dict) -> None:
        session.state["calls"] = 0

    @tool
    def add(self, session: Session, a: int, b: int) -> dict:
        session.state["calls"] += 1
        return {"sum": a + b}

    def verify(self, task: dict, response: dict, session: Session) -> dict:
        text = response["output"][-1]["content"][0]["text"]
        return {"reward": float(str(task["expected_sum"]) in text), "tool_calls": session.state["calls"]}
'''


def _task(i: int, *, fail_seed: int | None = None) -> dict[str, Any]:
    lines = [f"Add {i} and {i + 1}.", f'tool: add {{"a": {i}, "b": {i + 1}}}', f'tool: add {{"a": {i}, "b": 0}}']
    if fail_seed is not None:
        lines.append(f"fail_seed: {fail_seed}")
    return {
        "responses_create_params": {
            "input": "\n".join(lines),
            "tools": [{"type": "function", "name": "add", "description": "a + b",
                       "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                                       "b": {"type": "integer"}}}}],
        },
        "expected_sum": 2 * i + 1,
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("trio")
    (work / "calc_verifier.py").write_text(USER_VERIFIER)
    return work


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[dict[str, Any]]:
    with running_stack(verifier="calc_verifier:Calculator", agents=["tool_agent"], cwd=workdir) as ready:
        yield ready


@pytest.fixture(scope="module")
def gateway(stack: dict[str, Any]) -> str:
    return str(stack["address"])


def _collect(workdir: Path, gateway: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ng_collect_rollouts"), "+agent_name=tool_agent", f"+gateway={gateway}", *args],
        cwd=workdir, env=env_with(), capture_output=True, text=True, timeout=120,
    )


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_tool_rollouts_with_user_resources_server(workdir: Path, gateway: str) -> None:
    _write(workdir / "tools.jsonl", [_task(i) for i in range(6)])
    done = _collect(workdir, gateway, "+input_jsonl_fpath=tools.jsonl", "+output_jsonl_fpath=out/tools.jsonl",
                    "+num_samples_in_parallel=4", "+num_repeats=2", "+responses_create_params.seed=7")
    assert done.returncode == 0, done.stderr
    means = json.loads(done.stdout)
    assert means == {"reward": 1.0, "tool_calls": 2.0}
    rows = [json.loads(line) for line in (workdir / "out/tools.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for n, row in enumerate(rows):
        i, r = divmod(n, 2)
        assert row["expected_sum"] == 2 * i + 1 and row["_rollout"]["repeat_index"] == r
        assert isinstance(row["responses_create_params"]["input"], str), "a string input stays a string"
        assert row["responses_create_params"]["seed"] == 7 + r
        kinds = [item["type"] for item in row["output"]]
        assert kinds.count("function_call") == 2 and kinds.count("function_call_output") == 2
        outputs = [json.loads(item["output"]) for item in row["output"] if item["type"] == "function_call_output"]
        assert sorted(o["sum"] for o in outputs) == sorted([2 * i + 1, i])
        assert row["tool_calls"] == 2, "each rollout's session counted only its own calls"
        assert row["_rollout"]["verifier_version"] == "calc-1"
        assert row["_rollout"]["truncated"] is False
    manifest = json.loads((workdir / "out/tools.jsonl.manifest.json").read_text())
    assert manifest["counts"]["failed"] == 0


def test_failed_repeat_sends_whole_group_to_failures(workdir: Path, gateway: str) -> None:
    # Task 1's second repeat is sent seed 11 (10 + 1), which the model rejects with a final 400.
    _write(workdir / "flaky.jsonl", [_task(0), _task(1, fail_seed=11), _task(2)])
    done = _collect(workdir, gateway, "+input_jsonl_fpath=flaky.jsonl", "+output_jsonl_fpath=flaky_out.jsonl",
                    "+num_repeats=3", "+responses_create_params.seed=10")
    assert done.returncode == 1, "a failed rollout makes the run exit non-zero"
    main = [json.loads(line) for line in (workdir / "flaky_out.jsonl").read_text().splitlines()]
    assert [row["_rollout"]["task_index"] for row in main] == [0, 0, 0, 2, 2, 2]
    side = [json.loads(line) for line in (workdir / "flaky_out.jsonl.failures").read_text().splitlines()]
    assert [row["_rollout"]["repeat_index"] for row in side] == [0, 1, 2]
    failed = [row for row in side if row["_rollout"]["status"] == "failed"]
    assert len(failed) == 1 and "reward" not in failed[0]
    assert failed[0]["error"]["stage"] == "model" and failed[0]["error"]["http_status"] == 400
    assert failed[0]["error"]["attempts"] == 1, "a plain 4xx is not retried"
    assert json.loads(done.stdout)["reward"] == 1.0, "means over the successful rollouts"


def test_malformed_line_stops_before_anything_is_written(workdir: Path, gateway: str) -> None:
    (workdir / "bad.jsonl").write_text(json.dumps(_task(0)) + "\n" + '{"responses_create_params": {"input": "x"\n')
    (workdir / "bad_out.jsonl").write_text("precious\n")
    done = _collect(workdir, gateway, "+input_jsonl_fpath=bad.jsonl", "+output_jsonl_fpath=bad_out.jsonl")
    assert done.returncode == 2
    assert "bad.jsonl:2:" in done.stderr
    assert (workdir / "bad_out.jsonl").read_text() == "precious\n"
    assert not list(workdir.glob("bad_out.jsonl.*"))


def test_unknown_agent_is_one_clear_error(workdir: Path, gateway: str) -> None:
    _write(workdir / "one.jsonl", [_task(0)])
    done = subprocess.run(
        [str(BIN / "ng_collect_rollouts"), "+agent_name=nope", f"+gateway={gateway}",
         "+input_jsonl_fpath=one.jsonl", "+output_jsonl_fpath=nope.jsonl"],
        cwd=workdir, env=env_with(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "nope" in done.stderr and "tool_agent" in done.stderr
    assert not (workdir / "nope.jsonl").exists()


def test_up_reports_a_metrics_url_that_counts_the_rollouts(workdir: Path, gateway: str,
                                                           stack: dict[str, Any]) -> None:
    _write(workdir / "m.jsonl", [_task(i) for i in range(3)])
    assert _collect(workdir, gateway, "+input_jsonl_fpath=m.jsonl", "+output_jsonl_fpath=m_out.jsonl").returncode == 0
    url = stack["metrics_url"]
    assert isinstance(url, str) and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    ok = [line for line in text.splitlines()
          if line.startswith("rollgate_gateway_rollouts_total") and 'agent="tool_agent"' in line
          and 'status="ok"' in line]
    assert ok and float(ok[0].split()[-1]) >= 3
