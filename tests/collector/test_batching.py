"""Batched streams and the cheaper per-rollout path: many rollouts per message each way, rows unchanged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest

from rollgate.collector import collect_main
from rollgate.collector._json import RawJSON, dumps
from rollgate.collector.run._rows import build_row
from rollgate.collector.run._tasks import RolloutSpec, iter_specs
from rollgate.collector.run._writer import GroupWriter
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.collector.conftest import read_jsonl, task, write_tasks
from tests.collector.fake_gateway import FakeGateway


def _argv(gw: FakeGateway, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
            f"+gateway={gw.address}", *extra]


def _check_rows(rows: list[dict[str, object]], tasks: int, repeats: int) -> None:
    """In order, each once, and each row carries the answer to its own task and repeat (matched by id)."""
    assert [(r["_rollout"]["task_index"], r["_rollout"]["repeat_index"]) for r in rows] == [  # type: ignore[index]
        (t, k) for t in range(tasks) for k in range(repeats)]
    for r in rows:
        meta = r["_rollout"]
        text = r["output"][0]["content"][0]["text"]  # type: ignore[index]
        assert text == f"answer {meta['task_index']}/{meta['repeat_index']}"  # type: ignore[index]
        assert r["response"]["output"] == r["output"]  # type: ignore[index]


def test_collector_sends_many_rollouts_per_message_and_rows_match(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(300)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.0, 0.005), batch_results=True) as gw:
        status = collect_main(_argv(gw, inp, out, "+num_samples_in_parallel=100", "+num_repeats=2"))
        requests, responses = list(gw.request_sizes), list(gw.response_sizes)
        assert gw.max_in_flight <= 100  # flow control still counts rollouts, not messages
    assert status == 0, capsys.readouterr().err
    assert sum(requests) == 600 and max(requests) > 1 and len(requests) < 600
    assert max(requests) <= 64  # the cap
    assert sum(responses) == 600 and max(responses) > 1  # the collector reads batched results too
    _check_rows(read_jsonl(out), 300, 2)


def test_broken_stream_with_batches_resends_by_id_and_drops_duplicates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(60)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.0, 0.01), break_after=25, break_once=True, batch_results=True,
                     duplicate_results=True) as gw:
        status = collect_main(_argv(gw, inp, out, "+num_samples_in_parallel=40"))
        resent = len(gw.received) - 60
    assert status == 0, capsys.readouterr().err
    assert resent >= 1  # the batch cut off by the break went out again
    _check_rows(read_jsonl(out), 60, 1)
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["reconnects"] >= 1 and manifest["duplicates_dropped"] >= 60
    assert not Path(f"{out}.failures").exists()


def _spec() -> RolloutSpec:
    row = {"responses_create_params": {"input": "say: é", "seed": 3}, "expected_answer": "é", "big": 2**70}
    return RolloutSpec(seq=0, task_index=0, repeat_index=0, rollout_id="id0", row=row,
                       params=row["responses_create_params"])  # type: ignore[arg-type]


def _result(response: bytes, output: bytes) -> pb.RolloutResult:
    return pb.RolloutResult(
        rollout_id="id0", status=pb.ROLLOUT_STATUS_OK, reward=1.0,
        verifier_fields_json=b'{"reward":1.0,"accuracy":true,"expected_answer":"x","n":1e-7}',
        response_json=response, output_json=output, params_json=b'{"input":"say: \\u00e9","seed":3,"model":"m"}',
        verifier_version="v", model="m", attempts=1)


def test_spliced_row_is_the_same_json_as_a_parsed_one() -> None:
    """The gateway's bytes go into the line as they are; the line equals the one from parsing everything."""
    output = [{"type": "message", "content": [{"type": "output_text", "text": "é ✓ \"q\"", "logprobs": [-0.1, 1e-9]}]}]
    response = {"id": "r", "output": output, "usage": {"total_tokens": 3}, "temperature": 0.7}
    resp, out = orjson.dumps(response), orjson.dumps(output)
    spliced = build_row(_spec(), _result(resp, out), "agent")
    # A leading space makes the collector parse the bytes instead (its path for bytes it does not splice).
    parsed = build_row(_spec(), _result(b" " + resp, b" " + out), "agent")
    assert isinstance(spliced.row["response"], RawJSON) and isinstance(spliced.row["output"], RawJSON)
    assert not isinstance(parsed.row["response"], RawJSON)
    line = dumps(spliced.row)
    assert line == dumps(parsed.row)  # byte for byte (the big int takes the standard-library path in both)
    assert json.loads(line)["response"] == response and json.loads(line)["big"] == 2**70
    assert spliced.added == parsed.added == {"reward": 1.0, "accuracy": True, "n": 1e-7}
    # Without the big int, orjson writes the line, fragments spliced, and it is orjson's own encoding.
    small = _spec()
    del small.row["big"]
    assert dumps(build_row(small, _result(resp, out), "agent").row) == orjson.dumps(
        build_row(small, _result(b" " + resp, b" " + out), "agent").row)


def test_a_third_party_gateway_without_output_bytes_still_gets_its_output_from_the_response() -> None:
    response = {"id": "r", "output": [{"type": "message", "content": []}]}
    built = build_row(_spec(), _result(json.dumps(response).encode(), b""), "agent")
    assert json.loads(dumps(built.row))["output"] == response["output"]


async def test_writer_flushes_by_the_end_of_the_loop_iteration(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = GroupWriter(path, 1, 8)
    try:
        for seq in range(3):
            writer.add(seq, {"i": seq}, True)
        await asyncio.sleep(0)  # one turn of the loop: the deferred flush has run
        assert path.read_bytes() == b'{"i":0}\n{"i":1}\n{"i":2}\n'
    finally:
        writer.close()


def test_writer_without_a_loop_flushes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = GroupWriter(path, 2, 8)
    try:
        writer.add(1, {"i": 1}, True)
        assert path.read_bytes() == b""  # the group is incomplete
        writer.add(0, {"i": 0}, True)
        assert path.read_bytes() == b'{"i":0}\n{"i":1}\n'
    finally:
        writer.close()


def test_params_are_not_copied_per_rollout_yet_nothing_is_shared_wrongly(tmp_path: Path) -> None:
    path = write_tasks(tmp_path / "t.jsonl", [{"responses_create_params": {"input": "x", "seed": 5,
                                                                          "text": {"v": 1, "w": 2}}}])
    overrides = {"text": {"v": 9}, "temperature": 0.2}
    specs = list(iter_specs(path, agent="a", overrides=overrides, num_repeats=3, limit=None))
    assert [s.params["seed"] for s in specs] == [5, 6, 7]
    assert all(s.params["text"] == {"v": 9, "w": 2} and s.params["temperature"] == 0.2 for s in specs)
    assert specs[0].row["responses_create_params"] == {"input": "x", "seed": 5, "text": {"v": 1, "w": 2}}
    assert overrides == {"text": {"v": 9}, "temperature": 0.2}
    assert specs[0].row_json == specs[2].row_json == dumps(specs[0].row)


def test_big_rows_are_batched_by_size_so_no_message_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows of 1.5 MB: 64 of them would be far over the gateway's message limit, so a batch holds only a few."""
    blob = "x" * 1_500_000
    inp = write_tasks(tmp_path / "t.jsonl", [task(i, doc=blob) for i in range(12)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(batch_results=True) as gw:
        status = collect_main(_argv(gw, inp, out, "+num_samples_in_parallel=12"))
        requests = list(gw.request_sizes)
    assert status == 0, capsys.readouterr().err
    assert sum(requests) == 12 and max(requests) <= 2  # 2 * 1.5 MB * 2 (row + params estimate) <= 8 MiB
    assert [r["doc"] == blob for r in read_jsonl(out)] == [True] * 12
