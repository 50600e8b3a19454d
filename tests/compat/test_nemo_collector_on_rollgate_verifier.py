"""NeMo Gym's own collector and agent, pointed at a rollgate verifier, finish green and agree with ours.

NeMo Gym starts the verifier (``nemo_root/resources_servers/rollgate_verifier``: ``rollgate verifier serve
exact_match`` on the port NeMo Gym assigned) with its ``simple_agent`` and ``legacy_agent`` environment server in
front. Its ``ng_collect_rollouts`` must exit 0 and write its aggregate metrics (it asks the verifier for
``/aggregate_metrics``), and every reward must equal what the same verifier gives through our collector.
"""

from __future__ import annotations

import json
import statistics

import pytest

from tests.compat.nemo import NemoCollection, NemoStack, collect_with_nemo
from tests.compat.rollgate_side import Rollgate, describe
from tests.compat.tasks import ROLLGATE_VERIFIER

# The first test of a session also waits for NeMo Gym to start (about 25 s here, up to START_TIMEOUT_S on a slow
# machine), the last one for it to stop.
pytestmark = pytest.mark.timeout(420)

AGENT = ROLLGATE_VERIFIER.agent


@pytest.fixture(scope="module")
def nemo_run(nemo_stack: NemoStack, tmp_path_factory: pytest.TempPathFactory) -> NemoCollection:
    workdir = tmp_path_factory.mktemp("nemo_collect")
    tasks = workdir / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(row) + "\n" for row in ROLLGATE_VERIFIER.tasks))
    return collect_with_nemo(nemo_stack, agent=AGENT, tasks=tasks, out=workdir / "rollouts.jsonl")


def test_nemo_collector_exits_0_and_writes_aggregate_metrics(nemo_run: NemoCollection,
                                                             nemo_stack: NemoStack) -> None:
    why = [line for line in nemo_stack.log_text().splitlines() if "aggregate_metrics" in line][-4:]
    assert nemo_run.returncode == 0, (
        f"NeMo Gym's ng_collect_rollouts exited {nemo_run.returncode}; NeMo Gym's servers logged:\n"
        + "\n".join(why) + f"\nits output (tail):\n{nemo_run.output[-1500:]}")
    assert nemo_run.aggregate is not None, f"no {nemo_run.aggregate_path.name}"
    entries = [e for e in nemo_run.aggregate if (e.get("agent_ref") or {}).get("name") == AGENT]
    assert len(entries) == 1, nemo_run.aggregate
    rewards = [float(row["reward"]) for row in nemo_run.rows]
    assert entries[0]["agent_metrics"]["mean/reward"] == pytest.approx(statistics.mean(rewards))


def test_nemo_collector_rewards_equal_ours(nemo_run: NemoCollection, rollgate: Rollgate) -> None:
    nemo = {row["_ng_task_index"]: row["reward"] for row in nemo_run.rows}
    assert sorted(nemo) == list(range(len(ROLLGATE_VERIFIER.tasks))), nemo_run.output[-1500:]
    assert set(nemo.values()) == {0.0, 1.0}, "the tasks must score both ways"

    ours = rollgate.collect(ROLLGATE_VERIFIER, "chat_completions")
    assert ours.returncode == 0 and len(ours.rows) == len(ROLLGATE_VERIFIER.tasks), describe(ours)
    assert {i: row.get("reward") for i, row in enumerate(ours.rows)} == nemo
