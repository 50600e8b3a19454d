"""``rollgate reverify``: re-score a rollouts file against a local verifier without a model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector.postprocess._reverify import PREVIOUS_KEY, reverify_main


def _rollout(i: int, text: str, reward: float) -> dict[str, Any]:
    return {
        "responses_create_params": {"input": f"say: {i}"},
        "expected_answer": str(i),
        "response": {"id": f"r{i}", "output": [{"type": "message", "role": "assistant",
                                                 "content": [{"type": "output_text", "text": text}]}]},
        "output": [],
        "reward": reward,
        "accuracy": reward,
        "_rollout": {"id": f"id{i}", "task_index": i, "verifier_version": "old-1"},
    }


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


NEW_VERIFIER = """
def verify(task, response):
    text = response["output"][-1]["content"][0]["text"]
    if text == "boom":
        raise ValueError("cannot score boom")
    ok = float(text.strip() == task["expected_answer"])
    return {"reward": ok, "accuracy": ok, "length": len(text)}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "new_verifier.py").write_text(textwrap.dedent(NEW_VERIFIER))
    return tmp_path


def test_ten_thousand_rows_before_after_table_and_row_count(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 10_000
    # The old verifier gave everything 0.0; the new one rewards the 2/3 of answers that are right.
    rows = [_rollout(i, str(i) if i % 3 else "wrong", 0.0) for i in range(n)]
    failed_rollout = {"responses_create_params": {"input": "x"}, "error": {"stage": "model"}, "_rollout": {"id": "f"}}
    rows.insert(5, failed_rollout)
    _write(workdir / "in.jsonl", rows)

    status = reverify_main(["+input_jsonl_fpath=in.jsonl", "+verifier=new_verifier:verify",
                            "+output_jsonl_fpath=out.jsonl", "+num_samples_in_parallel=32"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    out = _read(workdir / "out.jsonl")
    assert len(out) == len(rows)  # row count matches the input
    assert out[5] == failed_rollout  # nothing to verify: passed through untouched
    scored = out[:5] + out[6:]
    assert [r["_rollout"]["id"] for r in scored] == [f"id{i}" for i in range(n)]  # input order
    right = sum(1 for i in range(n) if i % 3)
    assert sum(r["reward"] for r in scored) == right
    first_right = scored[1]
    assert first_right["reward"] == 1.0 and first_right["length"] == 1
    assert first_right[PREVIOUS_KEY] == {"reward": 0.0, "verifier_version": "old-1", "accuracy": 0.0}
    assert first_right["_rollout"]["verifier_version"].startswith("sha256:")
    assert scored[0][PREVIOUS_KEY]["reward"] == 0.0 and scored[0]["reward"] == 0.0

    summary = json.loads(captured.out)
    assert (summary["rows"], summary["changed"], summary["failed"], summary["passed_through"]) == (n + 1, right, 0, 1)
    assert summary["before"]["counts"] == {"0": n}
    assert summary["after"]["counts"] == {"0": n - right, "1": right}
    assert "before" in captured.err and "after" in captured.err and f"changed: {right}" in captured.err
    assert not (workdir / "out.jsonl.failures").exists()


def test_rows_the_verifier_cannot_score_go_to_failures(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_rollout(0, "0", 0.0), _rollout(1, "boom", 1.0), _rollout(2, "2", 0.0)]
    _write(workdir / "in.jsonl", rows)
    status = reverify_main(["+input_jsonl_fpath=in.jsonl", "+verifier=new_verifier:verify",
                            "+output_jsonl_fpath=out.jsonl"])
    assert status == 1
    assert [r["_rollout"]["id"] for r in _read(workdir / "out.jsonl")] == ["id0", "id2"]
    (failed,) = _read(workdir / "out.jsonl.failures")
    assert failed["_rollout"]["id"] == "id1"
    assert failed["error"]["stage"] == "verify" and failed["error"]["kind"] == "verify_exception"
    assert "cannot score boom" in failed["error"]["message"]
    assert json.loads(capsys.readouterr().out)["failed"] == 1


def test_builtin_by_name_and_existing_output_is_kept_aside(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(workdir / "in.jsonl", [_rollout(7, " 7 ", 0.0)])
    (workdir / "out.jsonl").write_text("old\n")
    assert reverify_main(["--input-jsonl-fpath", "in.jsonl", "--verifier", "exact_match",
                          "--output-jsonl-fpath", "out.jsonl"]) == 0
    (row,) = _read(workdir / "out.jsonl")
    assert row["reward"] == 1.0 and row["_rollout"]["verifier_version"].startswith("exact_match@")
    assert [p.read_text() for p in workdir.glob("out.jsonl.*.bak/out.jsonl")] == ["old\n"]
    assert "already exists; moved it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["+input_jsonl_fpath=in.jsonl", "+verifier=exact_match", "+output=x"], "unknown key 'output'"),
        (["+input_jsonl_fpath=missing.jsonl", "+verifier=exact_match", "+output_jsonl_fpath=o"], "is not a file"),
        (["+input_jsonl_fpath=in.jsonl", "+verifier=no_such_mod:verify", "+output_jsonl_fpath=o"],
         "cannot start verifier"),
    ],
)
def test_bad_command_lines_exit_2(workdir: Path, argv: list[str], expect: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    _write(workdir / "in.jsonl", [_rollout(1, "1", 0.0)])
    assert reverify_main(argv) == 2
    assert expect in capsys.readouterr().err


def test_a_bad_line_stops_it_before_anything_is_written_or_moved(workdir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = [json.dumps(_rollout(i, str(i), 0.0)) for i in range(50)]
    rows[40] = '{"response": '  # truncated, far enough in that a streaming run would have written rows before it
    (workdir / "in.jsonl").write_text("\n".join(rows) + "\n")
    (workdir / "out.jsonl").write_text("old\n")
    assert reverify_main(["+input_jsonl_fpath=in.jsonl", "+verifier=exact_match",
                          "+output_jsonl_fpath=out.jsonl"]) == 2
    assert "in.jsonl:41: not valid JSON" in capsys.readouterr().err
    assert (workdir / "out.jsonl").read_text() == "old\n" and not list(workdir.glob("out.jsonl.*"))
