"""Resume re-verifies, never regenerates, what failed at verify (issue 14, item 2).

A real gateway (in-process, gRPC on loopback) in front of the fake model and a fake resources server whose
``/verify`` fails for chosen answers; the real ``ng_collect_rollouts`` runs, then resumes with ``+resume=true``
once the verifier is fixed. The model's request count says whether anything was generated again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, make_config, task


class FlakyVerifier(FakeResourcesServer):
    """``/verify`` answers 500 while the task's ``expected_answer`` is in ``failing``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failing: set[str] = set()

    async def _verify(self, request: web.Request) -> web.Response:
        body = await request.json()
        if str(body.get("expected_answer")) in self.failing:
            self.requests["verify"] += 1
            return web.json_response({"error": {"kind": "exception", "message": "verifier bug"}}, status=500)
        return await super()._verify(request)


def _model_calls(model: FakeModelServer) -> int:
    return sum(model.requests.values())


async def test_a_verify_failure_is_rescored_on_resume_from_its_stored_response_without_the_model(
        tmp_path: Path) -> None:
    n, repeats = 6, 2
    async with FakeModelServer() as model, FlakyVerifier() as rs:
        rs.failing = {"2", "4"}
        cfg = make_config(model.base_url, rs.url, kind="single_turn")  # 500 at verify: 3 attempts, then failed
        async with live_gateway(cfg) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: {i}", str(i)) for i in range(n)])
            out = tmp_path / "out.jsonl"
            args = (f"+num_repeats={repeats}", "+max_failure_fraction=1")
            code, _, stderr = await finish(await start_collector(f"127.0.0.1:{gw.port}", tasks, out, *args))
            assert code == 0, stderr
            failures = read_rows(Path(f"{out}.failures"))
            failed = {r["_rollout"]["id"]: r for r in failures if "error" in r}
            assert len(failed) == 4 and all(r["error"]["stage"] == "verify" for r in failed.values())
            assert all(r["response"]["output"] for r in failed.values())  # the model's answer was kept
            assert _model_calls(model) == n * repeats

            rs.failing.clear()  # the verifier is fixed
            verifies = rs.requests["verify"]
            code, stdout, stderr = await finish(
                await start_collector(f"127.0.0.1:{gw.port}", tasks, out, *args, "+resume=true"))
    assert code == 0, stderr
    assert _model_calls(model) == n * repeats  # nothing was generated again
    assert rs.requests["verify"] - verifies == 4  # only the failed ones were scored again
    rows = read_rows(out)
    assert [(r["_rollout"]["task_index"], r["_rollout"]["repeat_index"]) for r in rows] == [
        (t, k) for t in range(n) for k in range(repeats)]
    assert all(r["reward"] == 1.0 and "error" not in r for r in rows)
    for row in rows:
        if row["_rollout"]["id"] in failed:  # the very response the first run got, now with its reward
            assert row["response"]["id"] == failed[row["_rollout"]["id"]]["response"]["id"]
            assert row["accuracy"] is True
    assert not Path(f"{out}.failures").exists()
    assert json.loads(stdout)["reward"] == 1.0
    assert "4 rollout(s) that had failed at verify were sent with their stored responses" in stderr


async def test_a_tool_calling_rollout_is_rescored_only_when_no_tool_ran_in_its_session(tmp_path: Path) -> None:
    with_tool = task('tool: add {"a": 1, "b": 2}', 'tools said: {"sum": 3}')
    with_tool["responses_create_params"]["tools"] = [{"type": "function", "name": "add", "parameters": {}}]
    rows_in = [with_tool, task("say: plain", "plain")]
    async with FakeModelServer() as model, FlakyVerifier() as rs:
        rs.failing = {'tools said: {"sum": 3}', "plain"}
        async with live_gateway(make_config(model.base_url, rs.url)) as gw:  # tool_calling
            tasks = write_tasks(tmp_path / "tasks.jsonl", rows_in)
            out = tmp_path / "out.jsonl"
            code, _, stderr = await finish(
                await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+max_failure_fraction=1"))
            assert code == 0, stderr
            assert _model_calls(model) == 3  # tool call + answer, and the plain answer
            rs.failing.clear()
            code, _, stderr = await finish(
                await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+max_failure_fraction=1", "+resume=true"))
    assert code == 0, stderr
    rows = read_rows(out)
    assert [r["reward"] for r in rows] == [1.0, 1.0]
    # The plain rollout was verified again as it was; the one whose tool ran in a session (whose state a stateful
    # server's /verify may read, and a fresh session lacks) was run again: two more model calls, not three.
    assert _model_calls(model) == 5
    assert rs.requests["add"] == 2


async def test_a_run_scored_by_two_verifier_versions_says_so_with_each_ones_mean(tmp_path: Path) -> None:
    n = 8
    async with FakeModelServer() as model, FlakyVerifier() as rs:
        rs.failing = {"1", "2", "3"}
        cfg = make_config(model.base_url, rs.url, kind="single_turn")
        async with live_gateway(cfg) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: {i}", str(i)) for i in range(n)])
            out = tmp_path / "out.jsonl"
            code, _, stderr = await finish(await start_collector(
                f"127.0.0.1:{gw.port}", tasks, out, "+max_failure_fraction=1"))
            assert code == 0, stderr
            assert "verifier versions scored" not in stderr  # one version: nothing to say

            rs.failing.clear()
            rs.version, rs.reward = "fake-2", 0.5  # verify() was edited between the runs
            code, stdout, stderr = await finish(await start_collector(
                f"127.0.0.1:{gw.port}", tasks, out, "+max_failure_fraction=1", "+resume=true"))
    assert code == 0, stderr
    assert json.loads(stdout)["reward"] == (5 * 1.0 + 3 * 0.5) / n
    assert ("warning: 2 verifier versions scored this run (hot-swapped or resumed across a change); the reward "
            "mean above mixes them. Per version: fake-1: 1 over 5; fake-2: 0.5 over 3") in stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["verifier_versions"] == ["fake-1", "fake-2"]
    assert manifest["reward_by_verifier_version"] == {
        "fake-1": {"rollouts": 5, "mean_reward": 1.0}, "fake-2": {"rollouts": 3, "mean_reward": 0.5}}
