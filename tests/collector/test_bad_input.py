"""Bad input: each case is one ``error:`` line naming the cause, a non-zero exit, and nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollgate.collector import collect_main
from tests.collector.conftest import task, write_tasks
from tests.collector.fake_gateway import FakeGateway


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(("case", "status", "expected"), [
    ("malformed", 2, "t.jsonl:2: not valid JSON"),
    ("no_params", 2, "t.jsonl:2: the row has no 'responses_create_params'"),
    ("unknown_agent", 2, "unknown agent 'nope'"),
    ("unreachable", 1, "cannot reach the gateway at 127.0.0.1:1"),
    ("output_under_a_file", 2, "cannot write the output"),
    ("output_is_a_directory", 2, "cannot write the output: it is a directory"),
])
def test_each_bad_input_is_one_line_and_loses_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, status: int, expected: str) -> None:
    rows: list[object] = [task(0), task(1)]
    if case == "malformed":
        rows[1] = '{"responses_create_params": '
    if case == "no_params":
        rows[1] = {"input": "x"}
    inp = write_tasks(tmp_path / "t.jsonl", rows)
    out = tmp_path / "o.jsonl"
    out.write_text("the previous run\n")
    if case == "output_under_a_file":
        out = tmp_path / "o.jsonl" / "nested.jsonl"
    if case == "output_is_a_directory":
        out = tmp_path / "adir"
        out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with FakeGateway() as gw:
        address = "127.0.0.1:1" if case == "unreachable" else gw.address
        agent = "nope" if case == "unknown_agent" else "my_agent"
        got = collect_main([f"+agent_name={agent}", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                            f"+gateway={address}"])
        assert gw.received == []
    assert got == status
    line = _one_error_line(capsys.readouterr().err)
    assert expected in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing moved, created or lost
    assert (tmp_path / "o.jsonl").read_text() == "the previous run\n"
