"""Input checking, lazy reading, aabbcc expansion, limit, params precedence, seeds and rollout ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollgate.collector import collect_main
from rollgate.collector.errors import InputError
from rollgate.collector.run._ids import rollout_id
from rollgate.collector.run._tasks import check_input, effective_params, iter_specs
from tests.collector.conftest import task, write_tasks


def test_check_counts_rows_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write_tasks(tmp_path / "t.jsonl", [task(0), task(1), task(2)], blank_after=1)
    summary = check_input(str(path))
    assert summary.rows == 3
    assert len(summary.sha256) == 64


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got an array"),
        ('{"expected_answer": "x"}', "no 'responses_create_params'"),
        ('{"responses_create_params": "hi"}', "'responses_create_params' must be an object, got a string"),
        # NeMo Gym rows' backend extras (JSON text in metadata): checked before the run, not per rollout.
        ('{"responses_create_params": {"input": "x", "metadata": {"extra_body": "{top_k: 1}"}}}',
         "responses_create_params: 'metadata.extra_body' is not valid JSON"),
    ],
)
def test_bad_line_is_reported_with_file_and_line(tmp_path: Path, bad: str, words: str) -> None:
    # A blank line before the bad one still counts: the number is the line an editor shows.
    path = write_tasks(tmp_path / "t.jsonl", [task(0), task(1), bad], blank_after=1)
    with pytest.raises(InputError) as info:
        check_input(str(path))
    assert str(info.value).startswith(f"{path}:4: ")
    assert words in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        check_input(str(tmp_path / "nope.jsonl"))


def test_aabbcc_expansion_and_limit(tmp_path: Path) -> None:
    path = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(5)])
    specs = list(iter_specs(path, agent="a", overrides={}, num_repeats=3, limit=2))
    assert [(s.task_index, s.repeat_index) for s in specs] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [s.seq for s in specs] == list(range(6))
    assert [s.row["expected_answer"] for s in specs] == ["0", "0", "0", "1", "1", "1"]


def test_specs_are_read_lazily(tmp_path: Path) -> None:
    path = write_tasks(tmp_path / "t.jsonl", [task(0), task(1), "{broken"])
    specs = iter_specs(path, agent="a", overrides={}, num_repeats=1, limit=None)
    assert next(specs).task_index == 0  # the broken third line has not been read yet


def test_params_precedence_and_shapes_kept() -> None:
    row = {"input": "a string stays a string", "temperature": 0.9, "text": {"format": {"type": "text"}, "v": 1}}
    cli = {"temperature": 0.2, "text": {"v": 2}, "top_p": 0.95}
    params = effective_params(row, cli, 0)
    assert params == {
        "input": "a string stays a string",
        "temperature": 0.2,
        "text": {"format": {"type": "text"}, "v": 2},
        "top_p": 0.95,
    }
    assert row["temperature"] == 0.9  # the row itself is not changed


def test_seed_plus_repeat(tmp_path: Path) -> None:
    path = write_tasks(tmp_path / "t.jsonl", [task(0)])
    specs = list(iter_specs(path, agent="a", overrides={"seed": 42}, num_repeats=3, limit=None))
    assert [s.params["seed"] for s in specs] == [42, 43, 44]
    unseeded = list(iter_specs(path, agent="a", overrides={}, num_repeats=2, limit=None))
    assert all("seed" not in s.params for s in unseeded)


def test_rollout_ids_stable_and_distinct(tmp_path: Path) -> None:
    same = task(0)
    path = write_tasks(tmp_path / "t.jsonl", [same, same])
    first = [s.rollout_id for s in iter_specs(path, agent="a", overrides={}, num_repeats=2, limit=None)]
    again = [s.rollout_id for s in iter_specs(path, agent="a", overrides={}, num_repeats=2, limit=None)]
    assert first == again
    assert len(set(first)) == 4  # two identical rows are two tasks, each with two repeats
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in first)
    other_agent = [s.rollout_id for s in iter_specs(path, agent="b", overrides={}, num_repeats=2, limit=None)]
    assert not set(first) & set(other_agent)
    assert rollout_id(0, same, {"x": 1}, 0, "a") != rollout_id(0, same, {"x": 2}, 0, "a")


@pytest.mark.parametrize("value", ["[1]", "top_k"])
def test_bad_backend_extras_on_the_command_line_stop_the_run_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0)])
    out = tmp_path / "o.jsonl"
    status = collect_main(["+agent_name=a", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                           f"+responses_create_params.metadata.extra_body={value}"])
    assert status == 2
    assert "'metadata.extra_body'" in capsys.readouterr().err
    assert not out.exists()
