"""Every row our collector writes, on both API paths, is one NeMo Gym's own code reads.

Its ``response`` validates with NeMo Gym's ``NeMoGymResponse`` and OpenAI's ``Response`` (run inside NeMo Gym's
venv by ``nemo_check_rows.py``), its ``responses_create_params`` and ``response`` make a NeMo Gym ``/verify`` body,
and it carries NeMo Gym's bookkeeping: ``_ng_task_index``, ``_ng_rollout_index``, ``agent_ref``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.nemo import check_rows_with_nemo
from tests.compat.rollgate_side import APIS, Collection, Rollgate, agent_name, describe
from tests.compat.tasks import SERVERS

# The first test of a session also waits for NeMo Gym to start (about 25 s here, up to START_TIMEOUT_S on a slow
# machine), the last one for it to stop.
pytestmark = pytest.mark.timeout(420)

CHECKS = ["NeMoGymResponse", "openai.Response", "BaseVerifyRequest"]
Report = dict[str, list[dict[str, str | None]]]


def _collections(rollgate: Rollgate, api: str) -> list[Collection]:
    collections = [rollgate.collect(server, api) for server in SERVERS.values()]
    for got in collections:
        assert got.rows, "no rows to check:\n" + describe(got)
    return collections


@pytest.fixture(scope="module")
def nemo_report(rollgate: Rollgate, nemo_venv: Path) -> Report:
    outs = [rollgate.collect(server, api).out for server in SERVERS.values() for api in APIS]
    return check_rows_with_nemo(nemo_venv, [out for out in outs if out.exists()])


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("api", APIS)
def test_every_row_validates_with_nemo_gyms_models(api: str, check: str, rollgate: Rollgate,
                                                   nemo_report: Report) -> None:
    errors = []
    for got in _collections(rollgate, api):
        for i, result in enumerate(nemo_report[str(got.out)]):
            if result[check] is not None:
                errors.append(f"{got.server.key} row {i}: {result[check]}")
    assert not errors, f"{len(errors)} rows fail {check}; the first:\n" + "\n".join(errors[:2])


@pytest.mark.parametrize("api", APIS)
def test_every_row_carries_nemo_gyms_bookkeeping(api: str, rollgate: Rollgate) -> None:
    wrong = []
    for got in _collections(rollgate, api):
        repeats = got.server.num_repeats
        for i, row in enumerate(got.rows):
            want = {"_ng_task_index": i // repeats, "_ng_rollout_index": i % repeats,
                    "agent_ref.name": agent_name(got.server, api)}
            agent_ref = row.get("agent_ref")
            have = {"_ng_task_index": row.get("_ng_task_index"), "_ng_rollout_index": row.get("_ng_rollout_index"),
                    "agent_ref.name": agent_ref.get("name") if isinstance(agent_ref, dict) else agent_ref}
            if have != want:
                wrong.append(f"{got.server.key} row {i}: has {have}, wants {want}")
    assert not wrong, f"{len(wrong)} rows lack NeMo Gym's keys; the first:\n" + "\n".join(wrong[:3])
