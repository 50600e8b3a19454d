"""``rollgate reverify``'s before/after reward table: right counts with many distinct rewards, readable columns."""

from __future__ import annotations

import json
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector.postprocess._reverify import TABLE_TOP, _summary, _table, reverify_main

# The new verifier gives whatever reward the row's task field says.
VERIFIER = """
def verify(task, response):
    return {"reward": task["new_reward"]}
"""


def _row(i: int, old: float, new: float) -> dict[str, Any]:
    return {
        "responses_create_params": {"input": f"say: {i}"},
        "new_reward": new,
        "response": {"id": f"r{i}", "output": [{"type": "message", "role": "assistant",
                                                 "content": [{"type": "output_text", "text": str(i)}]}]},
        "output": [],
        "reward": old,
        "_rollout": {"id": f"id{i}", "task_index": i, "verifier_version": "old-1"},
    }


def _parse(table: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{label: (before, after)} and the grid lines (everything above the ``rows:`` line)."""
    lines = table.splitlines()
    grid = lines[: next(i for i, line in enumerate(lines) if line.startswith("rows: "))]
    cells: dict[str, tuple[str, str]] = {}
    for line in grid:
        label, before, after = re.split(r"\s{2,}", line.strip())
        cells[label] = (before, after)
    return cells, grid


def _counts(cells: dict[str, tuple[str, str]], side: int) -> dict[str, int]:
    return {k: int(v[side]) for k, v in cells.items() if k.startswith(("= ", "other ("))}


def _reverify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              pairs: list[tuple[float, float]]) -> tuple[str, dict[str, Any]]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table_verifier.py").write_text(textwrap.dedent(VERIFIER))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(_row(i, o, n)) + "\n" for i, (o, n) in enumerate(pairs)))
    status = reverify_main(["+input_jsonl_fpath=in.jsonl", "+verifier=table_verifier:verify",
                            "+output_jsonl_fpath=out.jsonl"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    table = captured.err[captured.err.index("reward "):]
    return table, json.loads(captured.out)


def _result(before: list[float], after: list[float]) -> dict[str, Any]:
    return {"before": _summary(before), "after": _summary(after), "rows": len(after), "changed": 0, "failed": 0,
            "passed_through": 0}


def _check_grid(grid: list[str]) -> None:
    assert len({len(line) for line in grid}) == 1  # every column has one width
    header = grid[0].split()
    assert header == ["reward", "before", "after"]


def test_many_distinct_old_rewards_are_counted_right(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Old: a graded reward with 300 distinct long floats plus 250 exact 1.0 and 150 exact 0.0; new: binary.
    graded = [i / 301 for i in range(1, 301)]
    old = [*graded, *[1.0] * 250, *[0.0] * 150]
    new = [float(i % 2) for i in range(len(old))]
    table, summary = _reverify(tmp_path, monkeypatch, capsys, list(zip(old, new, strict=True)))
    cells, grid = _parse(table)
    _check_grid(grid)

    before, after = _counts(cells, 0), _counts(cells, 1)
    assert before["= 1"] == 250 and before["= 0"] == 150  # was 0 under "before" when there were >10 values
    assert after["= 1"] == 350 and after["= 0"] == 350
    # 0 and 1 are the most common; the other shown rows are 8 of the graded values, each once before, 0 after.
    shown = [k for k in before if k.startswith("= ")]
    assert len(shown) == TABLE_TOP
    others = [k for k in shown if k not in ("= 0", "= 1")]
    assert all(before[k] == 1 and after[k] == 0 for k in others)
    assert all(len(k) <= len("= 0.003322") for k in others)  # compact, not 0.0033222591362126247
    assert before[f"other ({301 + 1 - TABLE_TOP} values)"] == 300 - len(others)
    assert after[f"other ({301 + 1 - TABLE_TOP} values)"] == 0
    assert sum(before.values()) == len(old) == int(cells["n"][0])
    assert sum(after.values()) == len(old) == int(cells["n"][1])
    # Statistics are compact floats, not 0.5016611295681063.
    assert cells["mean"][0] == f"{sum(old) / len(old):.4g}"
    assert summary["before"]["distinct"] == 302 and "counts" not in summary["before"]
    assert summary["after"]["counts"] == {"0": 350, "1": 350}


def test_ordinary_binary_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    old = [0.0] * 30 + [1.0] * 10
    new = [1.0] * 25 + [0.0] * 15
    table, summary = _reverify(tmp_path, monkeypatch, capsys, list(zip(old, new, strict=True)))
    cells, grid = _parse(table)
    _check_grid(grid)
    assert _counts(cells, 0) == {"= 0": 30, "= 1": 10}
    assert _counts(cells, 1) == {"= 0": 15, "= 1": 25}
    assert cells["n"] == ("40", "40") and cells["mean"] == ("0.25", "0.625")
    assert cells["min"] == ("0", "0") and cells["max"] == ("1", "1")
    assert summary["before"]["counts"] == {"0": 30, "1": 10}
    assert "changed: 35" in table


def test_values_only_on_one_side_and_near_duplicates() -> None:
    before = [0.1234561] * 3 + [0.1234562] * 2 + [0.5]
    after = [0.75] * 6
    result = _result(before, after)
    cells, grid = _parse(_table(result, before, after))
    _check_grid(grid)
    # Two values equal to 6 digits stay two rows, labelled apart; a value missing on one side counts 0 there.
    assert _counts(cells, 0) == {"= 0.1234561": 3, "= 0.1234562": 2, "= 0.5": 1, "= 0.75": 0}
    assert _counts(cells, 1) == {"= 0.1234561": 0, "= 0.1234562": 0, "= 0.5": 0, "= 0.75": 6}
    assert result["before"]["counts"] == {"0.1234561": 3, "0.1234562": 2, "0.5": 1}


def test_eleven_distinct_values_are_all_listed_without_an_other_row() -> None:
    values = [i / 10 for i in range(TABLE_TOP + 1)]
    result = _result(values, values)
    cells, _ = _parse(_table(result, values, values))
    counts = _counts(cells, 0)
    assert len(counts) == TABLE_TOP + 1 and not any(k.startswith("other") for k in counts)
    assert Counter(counts.values()) == {1: TABLE_TOP + 1}


def test_without_the_lists_the_summary_counts_are_used() -> None:
    result = _result([0.0, 0.0, 1.0], [1.0, 1.0, 1.0])
    cells, _ = _parse(_table(result))
    assert _counts(cells, 0) == {"= 0": 2, "= 1": 1} and _counts(cells, 1) == {"= 0": 0, "= 1": 3}
