"""The line-offset index: what it records per row, malformed lines with their line numbers, reading on demand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rollgate.collector.viewer import RolloutIndex
from rollgate.collector.viewer._index import Malformed, RowStatus
from rollgate.collector.viewer._main import _progress_printer
from rollgate.collector.viewer._query import FilterError, Query, matching, parse_filter, search, summary
from tests.viewer.rows import failure, rollout


def test_malformed_lines_keep_their_line_numbers_and_do_not_hide_other_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(rollout(0, 0, 1.0)), "", "{not json", json.dumps([1, 2]), "   ",
             json.dumps(rollout(0, 1, 0.0)), '{"big": 123456789012345678901234567890, "reward": 0.5}',
             '{"torn": tr']  # a torn last line without a newline, as a killed writer leaves it
    path.write_text("\n".join(lines))
    index = RolloutIndex.build([path])

    assert len(index) == 6  # blank lines are skipped, everything else is a row
    assert [index.where(i)[1] for i in index.malformed] == [3, 4, 8]
    bad = index.read_row(index.malformed[0])
    assert isinstance(bad, Malformed) and bad.line == 3 and bad.raw.startswith("{not json") and bad.error
    not_object = index.read_row(index.malformed[1])
    assert isinstance(not_object, Malformed) and "expected a JSON object, got list" in not_object.error
    # Rows after the bad lines are still read, at the right place.
    good = index.read_row(3)
    assert isinstance(good, dict) and good["_rollout"]["repeat_index"] == 1
    assert index.reward[3] == 0.0 and index.reward[4] == 0.5  # ints over 64 bits do not make a row malformed


def test_columns_reward_metrics_failures_and_sidecar_status(tmp_path: Path) -> None:
    main, side = tmp_path / "r.jsonl", tmp_path / "r.jsonl.failures"
    main.write_text(json.dumps(rollout(0, 0, 0.25)) + "\n" + json.dumps({"reward": True, "x": "text"}) + "\n")
    completed = rollout(1, 1, 1.0)
    completed["_rollout"]["status"] = "completed"
    side.write_text(json.dumps(failure(1, 0, stage="verify", kind="http_error")) + "\n"
                    + json.dumps(completed) + "\n")
    index = RolloutIndex.build([main, side])

    assert list(index.status) == [RowStatus.OK, RowStatus.OK, RowStatus.FAILED, RowStatus.COMPLETED]
    assert list(index.task) == [0, 1, 1, 1]  # a row without _rollout is its own task (its position)
    assert index.reward[1] == 1.0 and math.isnan(index.reward[2])
    assert index.metric_names() == ["reward", "accuracy"]  # booleans count, strings do not
    assert [index.labels[index.stage[2]], index.labels[index.kind[2]]] == ["verify", "http_error"]
    assert index.where(3) == (str(side), 2)


def test_metrics_are_the_fields_the_verifier_added(tmp_path: Path) -> None:
    """Task fields such as ``task_id`` ride along in the rows; the run's manifest says which fields are measured."""
    main, side = tmp_path / "r.jsonl", tmp_path / "r.jsonl.failures"
    rows = [{**rollout(i, 0, 1.0), "task_id": 100 + i, "difficulty": 3} for i in range(4)]
    main.write_text("".join(json.dumps(r) + "\n" for r in rows))
    side.write_text(json.dumps({**failure(9, 0, stage="verify", kind="http_error"), "task_id": 9}) + "\n")
    # Without a manifest (a file from elsewhere) every numeric field is a column.
    assert RolloutIndex.build([main, side]).metric_names() == ["reward", "accuracy", "task_id", "difficulty"]
    Path(f"{main}.manifest.json").write_text(json.dumps({"means": {"reward": 1.0, "accuracy": 1.0}}))
    index = RolloutIndex.build([main, side])
    assert index.metric_names() == ["reward", "accuracy"]
    assert summary(index)["metrics"] == ["reward", "accuracy"]


def test_filter_expressions_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rewards = [0.0, 0.2, 0.3, 0.5, 1.0]
    path.write_text("".join(json.dumps(rollout(i, 0, r)) + "\n" for i, r in enumerate(rewards)))
    index = RolloutIndex.build([path])

    def rewards_of(expr: str, **kw: object) -> list[float]:
        return [index.reward[i] for i in matching(index, Query(filter=expr, **kw))]  # type: ignore[arg-type]

    assert rewards_of("reward < 0.3") == [0.0, 0.2]
    assert rewards_of("0.2 <= reward < 0.5") == [0.2, 0.3]
    assert rewards_of("reward >= 0.3 and accuracy == 0") == [0.3]
    assert rewards_of("", sort="reward", desc=True) == [1.0, 0.5, 0.3, 0.2, 0.0]
    for bad, words in [("rewrd < 1", "unknown column 'rewrd'"), ("reward <", "cannot read"),
                       ("reward ~ 1", "cannot read")]:
        try:
            parse_filter(bad, index.metric_names())
        except FilterError as exc:
            assert words in str(exc)
            assert "reward" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_text_search_finds_rows_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(rollout(i, 0, 1.0)) + "\n" for i in range(30)))
    index = RolloutIndex.build([path])
    # Tiny chunks force matches to fall across block edges; every task mentioning Oslo is found exactly.
    expected = {i for i in range(30) if i % 10 == 6}
    assert search(index, "OSLO", chunk=97) == expected
    assert search(index, "oslo") == expected
    assert search(index, "no such text anywhere") == set()


def test_progress_is_reported_in_bytes_over_all_files(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    main, side = tmp_path / "r.jsonl", tmp_path / "r.jsonl.failures"
    main.write_text("".join(json.dumps(rollout(i, 0, 1.0)) + "\n" for i in range(200)))
    side.write_text("".join(json.dumps(failure(i, 1)) + "\n" for i in range(50)))
    total = main.stat().st_size + side.stat().st_size
    seen: list[tuple[int, int]] = []
    index = RolloutIndex.build([main, side], lambda done, of: seen.append((done, of)), every_bytes=4096)
    assert len(index) == 250 and index.bytes_total == total
    assert len(seen) >= 10 and all(of == total for _, of in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == total
    assert any(main.stat().st_size < d < total for d in done)  # the second file counts from where the first ended
    # The CLI's printer: a line per report while reading, nothing once done.
    report = _progress_printer(min_interval_s=0)
    report(380_000_000, 1_024_000_000)
    report(total, total)
    assert capsys.readouterr().err == "indexing: 37% (380 of 1,024 MB)\n"
