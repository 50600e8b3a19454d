"""Rows carry NeMo Gym's bookkeeping (``_ng_task_index``, ``_ng_rollout_index``, ``agent_ref``), so code written for
NeMo Gym's output reads ours; an earlier output fed back in as input does not leak its run into the new rows.

The checks on the keys are the ones NeMo Gym's own readers make: ``atif_reverification.index_materialized_inputs``
(non-negative ints, a non-empty ``agent_ref.name``, each (task, rollout) pair once) and ``reward_profile``'s
alignment of materialized inputs with results by that pair.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector import collect_main
from tests.collector.conftest import read_jsonl, task, write_tasks
from tests.collector.fake_gateway import FakeGateway

DATA = Path(__file__).resolve().parents[1] / "verifier" / "data"


def _argv(gw: FakeGateway, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
            f"+gateway={gw.address}", *extra]


def _nemo_gym_readable(rows: list[dict[str, Any]]) -> None:
    """What NeMo Gym's readers require of every row of a file, as they check it."""
    keys = []
    for row in rows:
        task_index, rollout_index = row.get("_ng_task_index"), row.get("_ng_rollout_index")
        assert type(task_index) is int and task_index >= 0, row
        assert type(rollout_index) is int and rollout_index >= 0, row
        name = (row.get("agent_ref") or {}).get("name")
        assert isinstance(name, str) and name.strip(), row
        keys.append((task_index, rollout_index))
    assert not [k for k, n in Counter(keys).items() if n > 1], "a (task, rollout) pair twice"


def test_every_row_carries_nemo_gyms_keys_main_file_and_sidecar(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(5)])
    out = tmp_path / "o.jsonl"
    with FakeGateway(latency_s=(0.0, 0.01), fail={(3, 1)}) as gw:
        assert collect_main(_argv(gw, inp, out, "+num_repeats=3", "+limit=4")) == 1
    rows, side = read_jsonl(out), read_jsonl(Path(f"{out}.failures"))
    for row in rows + side:
        assert (row["_ng_task_index"], row["_ng_rollout_index"]) == (row["_rollout"]["task_index"],
                                                                     row["_rollout"]["repeat_index"])
        assert row["agent_ref"] == {"name": "my_agent"}
    assert [(r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows] == [(t, k) for t in range(3) for k in range(3)]
    assert [(r["_ng_task_index"], r["_ng_rollout_index"]) for r in side] == [(3, 0), (3, 1), (3, 2)]
    _nemo_gym_readable(rows + side)
    # Not metrics: the printed means and the manifest count only what the verifier added.
    means = json.loads(Path(f"{out}.manifest.json").read_text())["means"]
    assert set(means) == {"reward", "accuracy"}


def test_shards_keep_the_unsharded_indices(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(5)])
    with FakeGateway() as gw:
        for shard in (0, 1):
            assert collect_main(_argv(gw, inp, tmp_path / f"s{shard}.jsonl", "+num_repeats=2", "+num_shards=2",
                                      f"+shard_index={shard}")) == 0
    both = read_jsonl(tmp_path / "s0.jsonl") + read_jsonl(tmp_path / "s1.jsonl")
    assert sorted({r["_ng_task_index"] for r in both}) == [0, 1, 2, 3, 4]
    _nemo_gym_readable(both)  # the shards concatenated are still one readable file


def test_a_nemo_gym_output_fed_back_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A row NeMo Gym wrote (its reward 1.0, its indices, its agent, its server stamps) used as a task twice."""
    old = json.loads((DATA / "nemo_gym_verify_response.json").read_text())
    assert old["reward"] == 1.0 and old["_ng_environment_server"] and old["agent_ref"]["name"] != "my_agent"
    inp = write_tasks(tmp_path / "t.jsonl", [old, old | {"reward_hint": 0.5}])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out, "+num_repeats=2")) == 0
        sent = [json.loads(r.task_json) for r in gw.received]
    rows = read_jsonl(out)
    _nemo_gym_readable(rows)
    assert [(r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["agent_ref"] == {"name": "my_agent"} for r in rows)
    # NeMo Gym's collector-owned keys describe the earlier run: none of them is carried into the new rows.
    assert not {k for r in rows for k in r if k.startswith("_ng_")} - {"_ng_task_index", "_ng_rollout_index"}
    # This run's reward (the fake scores task 0 as 0.0), never the stale 1.0; and it counts in the means.
    assert [r["reward"] for r in rows] == [0.0, 0.0, 0.5, 0.5]
    assert json.loads(capsys.readouterr().out)["reward"] == 0.25
    # The response is this run's; the old task fields pass through untouched.
    assert rows[0]["output"][0]["content"][0]["text"] == "answer 0/0"
    assert rows[0]["expected_answer"] == old["expected_answer"] and rows[0]["extracted_answer"] == "42"
    assert sent[0]["expected_answer"] == old["expected_answer"]  # the task went out as the input had it


def test_our_own_output_fed_back_in_and_a_failure_has_no_stale_reward(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i, reward_hint=1.0) for i in range(2)])
    first = tmp_path / "first.jsonl"
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, first)) == 0
    again = tmp_path / "again.jsonl"
    with FakeGateway(fail={(1, 0)}) as gw:
        assert collect_main(_argv(gw, first, again, "+num_repeats=2")) == 1
    rows, side = read_jsonl(again), read_jsonl(Path(f"{again}.failures"))
    assert [(r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows] == [(0, 0), (0, 1)]
    assert all(r["_rollout"]["repeat_index"] == r["_ng_rollout_index"] for r in rows)
    failed = next(r for r in side if r["_rollout"]["status"] == "failed")
    # The input row had reward 1.0 and a response from the first run: a failed rollout shows neither.
    assert "reward" not in failed and "response" not in failed and failed["error"]["stage"] == "model"
    assert failed["_ng_task_index"] == 1


def test_a_resume_over_rows_written_without_the_keys_adds_them(tmp_path: Path) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(3)])
    out = tmp_path / "o.jsonl"
    with FakeGateway() as gw:
        assert collect_main(_argv(gw, inp, out, "+num_repeats=2")) == 0
        old = [{k: v for k, v in r.items() if k not in ("_ng_task_index", "_ng_rollout_index", "agent_ref")}
               for r in read_jsonl(out)]
        write_tasks(out, old[:4])  # as an older collector wrote it, and cut short
        assert collect_main(_argv(gw, inp, out, "+num_repeats=2", "+resume=true")) == 0
        answered = len(gw.received)
    rows = read_jsonl(out)
    assert answered == 6 + 2  # only the two missing rollouts ran again
    assert [(r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows] == [(t, k) for t in range(3) for k in range(2)]
    _nemo_gym_readable(rows)
