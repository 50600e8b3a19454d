"""NeMo Gym's own resources servers behind rollgate's gateway score every row as NeMo Gym's own agent does.

For each shipped server (``string_match``: verify only; ``example_single_tool_call``: a tool;
``example_session_state_mgmt``: a session seeded from the task's ``initial_count``, tools and cookies) and each
model API of the gateway, our ``ng_collect_rollouts`` collects the suite's tasks through the gateway; NeMo Gym's
``simple_agent`` runs the same tasks (its ``/run``) on the same model answers. Rewards must be equal row by row, and
the server's access log must show no 4xx answer to anything the gateway sent (and one ``/seed_session``,
``/verify`` and ``/close_session`` per rollout).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.compat.nemo import NemoStack, access_lines, validation_failures
from tests.compat.rollgate_side import APIS, Rollgate, describe, gateway_log_tail
from tests.compat.tasks import SERVERS, NemoServer

# The first test of a session also waits for NeMo Gym to start (about 25 s here, up to START_TIMEOUT_S on a slow
# machine), the last one for it to stop.
pytestmark = pytest.mark.timeout(420)

CASES = [pytest.param(key, api, id=f"{key}-{api}") for key in SERVERS for api in APIS]
Reference = Callable[[NemoServer], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def nemo_reference(nemo_stack: NemoStack) -> Reference:
    """Per server, NeMo Gym's own agent's verify answer for each task (made once)."""
    made: dict[str, list[dict[str, Any]]] = {}

    def reference(server: NemoServer) -> list[dict[str, Any]]:
        if server.key not in made:
            offset = nemo_stack.log_size()
            made[server.key] = [nemo_stack.run(server.agent, dict(task)) for task in server.tasks]
            log = nemo_stack.settle(offset)
            # The reference itself talks to the server cleanly, so a 4xx in our window is ours alone.
            refused = [a for a in access_lines(log, server.resources) if a.status >= 400]
            assert not refused, f"NeMo Gym's own agent got {refused} from {server.resources}"
        return made[server.key]

    return reference


def _text(output: list[dict[str, Any]]) -> str:
    """The model's visible answer and calls, to show beside a reward mismatch."""
    parts = []
    for item in output:
        if item.get("type") == "message":
            parts += [str(c.get("text")) for c in item.get("content") or [] if isinstance(c, dict)]
        elif item.get("type") == "function_call":
            parts.append(f"{item.get('name')}({item.get('arguments')})")
    return " | ".join(parts)


@pytest.mark.parametrize(("key", "api"), CASES)
def test_every_row_scored_as_nemo_gyms_own_agent_scores_it(key: str, api: str, rollgate: Rollgate,
                                                             nemo_reference: Reference) -> None:
    server = SERVERS[key]
    reference = nemo_reference(server)
    assert {float(r["reward"]) for r in reference} == {0.0, 1.0}, "the tasks must score both ways under NeMo Gym"

    got = rollgate.collect(server, api)
    expected_rows = len(server.tasks) * server.num_repeats
    assert got.returncode == 0 and not got.failures and len(got.rows) == expected_rows, describe(got)
    mismatches = []
    for i, row in enumerate(got.rows):
        want = reference[i // server.num_repeats]
        if row.get("reward") != want["reward"]:
            mismatches.append(f"row {i}: rollgate {row.get('reward')} ({_text(row.get('output') or [])!r}), "
                              f"NeMo Gym {want['reward']} ({_text(want['response']['output'])!r})")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize(("key", "api"), CASES)
def test_nemo_server_answers_the_gateway_without_4xx(key: str, api: str, rollgate: Rollgate) -> None:
    server = SERVERS[key]
    got = rollgate.collect(server, api)
    answers = access_lines(got.nemo_log, server.resources)
    refused = [a for a in answers if 400 <= a.status < 500]
    evidence = "\n".join(validation_failures(got.nemo_log, server.resources)[:3])
    first_error = json.dumps(got.failures[0].get("error"))[:1500] if got.failures else "none"
    assert not refused, (
        f"{server.resources} refused {len(refused)} of {len(answers)} calls from the gateway "
        f"({sorted({(a.path, a.status) for a in refused})}).\nNeMo Gym's log of the refused bodies:\n{evidence}\n"
        f"first failed rollout's error: {first_error}\ngateway log (tail):\n{gateway_log_tail(rollgate)}")
    calls = Counter(a.path for a in answers if a.status == 200)
    rollouts = len(server.tasks) * server.num_repeats
    assert calls["/verify"] == rollouts, f"{server.resources} answered: {dict(calls)}\n" + describe(got)
    # Every session the gateway seeded it also closed (NeMo Gym's servers have /close_session).
    assert calls["/seed_session"] == calls["/close_session"] == rollouts, dict(calls)
