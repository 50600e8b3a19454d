"""Post-processing: ``rollgate pairs`` / ``stats`` give what the workflows' own snippets give on the same file."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector import rollgate_main
from rollgate.collector.postprocess._stats import pass_at_k
from tests.collector.conftest import read_jsonl
from tests.e2e.workflow_blocks import WORKFLOWS, runnable


def _snippet(doc: str, section_start: str) -> str:
    block = next(b for b in runnable(WORKFLOWS / doc) if b.lang == "python" and b.section.startswith(section_start))
    return block.code


def _rollouts(path: Path, tasks: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for t in range(tasks):
        for r in range(repeats):
            reward = rng.choice([0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0])  # ties and gaps around 0.15
            text = f"answer {t}/{r}"
            rows.append({
                "responses_create_params": {"input": [{"role": "user", "content": f"Question {t}?"}],
                                            "temperature": 0.7},
                "expected_answer": str(t),
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": text}]}],
                "reward": reward,
                "_rollout": {"id": f"{t}-{r}", "task_index": t, "repeat_index": r},
            })
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def _run_snippet(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pairs_match_the_dpo_workflow_snippet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rollouts(tmp_path / "dpo_rollouts.jsonl", tasks=200, repeats=3, seed=1)
    expected_out = _run_snippet(_snippet("training-prep.md", "Pattern 3.2"), tmp_path)
    expected = (tmp_path / "dpo_pairs.jsonl").read_bytes()
    assert rollgate_main(["pairs", str(tmp_path / "dpo_rollouts.jsonl"),
                          f"+output_jsonl_fpath={tmp_path / 'mine.jsonl'}"]) == 0
    assert (tmp_path / "mine.jsonl").read_bytes() == expected  # the same pairs, byte for byte
    assert 0 < len(read_jsonl(tmp_path / "mine.jsonl")) < 200
    assert capsys.readouterr().out == expected_out  # and the same statistics


def test_pairs_tie_handling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rollouts(tmp_path / "r.jsonl", tasks=100, repeats=2, seed=3)
    ties = sum(1 for i in range(0, 200, 2) if rows[i]["reward"] == rows[i + 1]["reward"])
    assert ties > 0
    assert rollgate_main(["pairs", str(tmp_path / "r.jsonl"), "+min_reward_gap=0"]) == 0
    keep = read_jsonl(tmp_path / "r.pairs.jsonl")
    assert rollgate_main(["pairs", str(tmp_path / "r.jsonl"), "+min_reward_gap=0", "+ties=skip"]) == 0
    skip = read_jsonl(tmp_path / "r.pairs.jsonl")
    assert len(keep) == 100 and len(skip) == 100 - ties
    assert all(p["reward_gap"] > 0 for p in skip)


def test_stats_match_the_per_task_snippet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rollouts(tmp_path / "exploration_rollouts.jsonl", tasks=50, repeats=5, seed=2)
    expected = _run_snippet(_snippet("development.md", "Behavioral Exploration"), tmp_path)
    assert rollgate_main(["stats", str(tmp_path / "exploration_rollouts.jsonl")]) == 0
    out = capsys.readouterr().out
    task_lines = [line for line in out.splitlines() if line.startswith("Task ")]
    assert task_lines == expected.splitlines() and len(task_lines) == 50


def test_stats_distribution_failures_and_pass_at_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rollouts(tmp_path / "o.jsonl", tasks=10, repeats=4, seed=5)
    failed = {**rows[0], "error": {"stage": "model"}, "_rollout": {**rows[0]["_rollout"], "status": "failed"}}
    (tmp_path / "o.jsonl.failures").write_text(json.dumps(failed) + "\n" + json.dumps(rows[1]) + "\n")
    assert rollgate_main(["stats", str(tmp_path / "o.jsonl"), "+json_output=true", "+per_task=false"]) == 0
    stats = json.loads(capsys.readouterr().out)
    rewards = [r["reward"] for r in rows]
    assert stats["rollouts"] == 40 and stats["tasks"] == 10
    assert stats["distribution"] == {repr(v): rewards.count(v) for v in sorted(set(rewards))}
    assert stats["failed"] == 1 and stats["failure_rate"] == pytest.approx(1 / 42)
    per_task = [(4, sum(r["reward"] >= 1.0 for r in rows[i:i + 4])) for i in range(0, 40, 4)]
    assert stats["pass@1"] == pytest.approx(sum(c / 4 for _, c in per_task) / 10)
    assert {k for k in stats if k.startswith("pass@")} == {"pass@1", "pass@2", "pass@4"}


def test_pass_at_k_is_unbiased() -> None:
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_compare_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _rollouts(tmp_path / "a.jsonl", tasks=30, repeats=2, seed=7)
    b = [dict(r) for r in a]
    for r in b:
        if r["_rollout"]["task_index"] == 4:
            r["reward"] = 1.0 - r["reward"] if r["reward"] < 0.5 else 0.0
    b[20]["reward"] = 0.0 if b[20]["reward"] else 1.0
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b))
    assert rollgate_main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "+top=2"]) == 0
    out = capsys.readouterr().out
    assert "reward" in out and "±" in out
    moved = out.split("changed most")[1].splitlines()[1:]
    assert len(moved) == 2 and any("task 4:" in line for line in moved)
    assert "95% CI" in out and "confidence interval" in out
    # With room for every task, only the ones that changed are listed (task 4 and the one row flipped).
    assert rollgate_main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "+top=30"]) == 0
    out = capsys.readouterr().out
    listed = [line for line in out.split("changed most")[1].splitlines()[1:] if line.strip()]
    assert len(listed) == 2 and not any("(+0.000)" in line for line in listed), listed
    assert "2 of 30 changed" in out
    assert rollgate_main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl")]) == 0
    assert "No task's mean reward changed" in capsys.readouterr().out


def test_export_sft_and_dpo_in_trl_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rollouts(tmp_path / "r.jsonl", tasks=20, repeats=3, seed=9)
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(tmp_path / "sft.jsonl"), "+min_reward=0.8"]) == 0
    sft = read_jsonl(tmp_path / "sft.jsonl")
    assert len(sft) == sum(r["reward"] >= 0.8 for r in rows)
    first = next(r for r in rows if r["reward"] >= 0.8)
    assert sft[0] == {"messages": [
        {"role": "user", "content": first["responses_create_params"]["input"][0]["content"]},
        {"role": "assistant", "content": first["output"][0]["content"][0]["text"]},
    ]}
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(tmp_path / "dpo.jsonl"), "+format=dpo"]) == 0
    dpo = read_jsonl(tmp_path / "dpo.jsonl")
    assert rollgate_main(["pairs", str(tmp_path / "r.jsonl")]) == 0
    assert len(dpo) == len(read_jsonl(tmp_path / "r.pairs.jsonl")) > 0
    assert set(dpo[0]) == {"prompt", "chosen", "rejected"}
    assert dpo[0]["prompt"][0]["role"] == "user" and dpo[0]["chosen"][0]["role"] == "assistant"
    assert dpo[0]["chosen"] != dpo[0]["rejected"]


def test_export_tool_calls_as_chat_messages(tmp_path: Path) -> None:
    row = {
        "responses_create_params": {"input": "Add 1 and 2.", "instructions": "Be brief.",
                                    "tools": [{"type": "function", "name": "add", "parameters": {}}]},
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a": 1, "b": 2}'},
            {"type": "function_call_output", "call_id": "c1", "output": '{"sum": 3}'},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "3"}]},
        ],
        "reward": 1.0, "_rollout": {"id": "x", "task_index": 0, "repeat_index": 0},
    }
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(tmp_path / "o.jsonl")]) == 0
    (got,) = read_jsonl(tmp_path / "o.jsonl")
    assert got["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 1 and 2."},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "content": '{"sum": 3}', "name": "add"},
        {"role": "assistant", "content": "3"},
    ]
    assert got["tools"] == [{"type": "function", "function": {"name": "add", "parameters": {}}}]


def test_post_commands_report_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.jsonl").write_text('{"reward": 1, "_rollout": {"task_index": 0}}\n{broken\n')
    assert rollgate_main(["stats", str(tmp_path / "r.jsonl")]) == 2
    assert f"{tmp_path / 'r.jsonl'}:2: not valid JSON" in capsys.readouterr().err
