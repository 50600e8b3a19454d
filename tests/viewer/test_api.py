"""The viewer's HTTP API on a real server: summary, pages, filters, malformed lines, groups, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from rollgate.collector.viewer import Viewer
from tests.viewer.conftest import get_json, running
from tests.viewer.rows import make_run


async def test_summary_pages_and_filters(run_file: tuple[Path, list[dict[str, Any]]],
                                         http: aiohttp.ClientSession) -> None:
    path, rows = run_file
    async with running(Viewer.open(path)) as url:
        s = await get_json(http, f"{url}/api/summary")
        assert s["files"] == [str(path), f"{path}.failures"]
        assert (s["rollouts"], s["failed"], s["malformed"], s["tasks"]) == (48, 1, 1, 12)
        assert s["failures_by_stage"] == {"tool": 1}
        assert s["malformed_lines"][0]["line"] == 6
        ok_rewards = [r["reward"] for r in rows] + [
            json.loads(x)["reward"] for x in Path(f"{path}.failures").read_text().splitlines()
            if "reward" in json.loads(x)]
        assert abs(s["means"]["reward"] - sum(ok_rewards) / len(ok_rewards)) < 1e-9
        assert sum(s["histogram"]["counts"]) == len(ok_rewards)

        page = await get_json(http, f"{url}/api/rows?filter=reward%20%3C%200.3&sort=reward&desc=1&limit=5")
        assert page["total"] == sum(1 for r in ok_rewards if r < 0.3)
        assert len(page["rows"]) == 5 and all(r["reward"] < 0.3 for r in page["rows"])
        assert [r["reward"] for r in page["rows"]] == sorted((r["reward"] for r in page["rows"]), reverse=True)
        assert page["rows"][0]["prompt"].startswith("Task ")

        nxt = await get_json(http, f"{url}/api/rows?offset=45&limit=10")
        assert nxt["total"] == 49 and len(nxt["rows"]) == 4

        bad = await get_json(http, f"{url}/api/rows?filter=score%20%3E%201", status=400)
        assert bad["error"]["kind"] == "bad_filter" and "unknown column 'score'" in bad["error"]["message"]

        found = await get_json(http, f"{url}/api/rows?search=berlin")
        assert {r["task"] for r in found["rows"]} == {3}  # only task 3 asks about Berlin (and it lives in the sidecar)

        fails = await get_json(http, f"{url}/api/rows?failures=1")
        kinds = sorted(r["status"] for r in fails["rows"])
        assert kinds == ["failed", "malformed"]
        malformed = next(r for r in fails["rows"] if r["status"] == "malformed")
        assert malformed["error"]["message"].startswith("line 6: ")


async def test_rollout_detail_malformed_and_group(run_file: tuple[Path, list[dict[str, Any]]],
                                                  http: aiohttp.ClientSession) -> None:
    path, rows = run_file
    viewer = Viewer.open(path)
    async with running(viewer) as url:
        first = await get_json(http, f"{url}/api/rollout/0")
        assert first["data"] == rows[0] and (first["line"], first["task"], first["repeat"]) == (1, 0, 0)
        bad = await get_json(http, f"{url}/api/rollout/{viewer.a.malformed[0]}")
        assert bad["status"] == "malformed" and bad["malformed"]["line"] == 6
        assert bad["malformed"]["raw"].startswith('{"responses_create_params"')
        missing = await get_json(http, f"{url}/api/rollout/9999", status=404)
        assert missing["error"]["kind"] == "not_found"

        group = await get_json(http, f"{url}/api/group/3")
        assert [g["repeat"] for g in group["rollouts"]] == [0, 1, 2, 3]
        assert [g["status"] for g in group["rollouts"]] == ["failed", "completed", "completed", "completed"]
        assert group["rollouts"][0]["data"]["error"]["http_status"] == 503

        tasks = await get_json(http, f"{url}/api/tasks?sort=spread&desc=1&limit=3")
        assert tasks["total"] == 12
        spreads = [t["spread"] for t in tasks["tasks"]]
        assert spreads == sorted(spreads, reverse=True)


async def test_compare_two_runs_per_task_delta(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    a_path, b_path = tmp_path / "model_v1.jsonl", tmp_path / "model_v2.jsonl"
    a_rows = make_run(a_path, tasks=6, repeats=2, seed=1)
    b_rows = make_run(b_path, tasks=6, repeats=2, seed=2)

    def means(rows: list[dict[str, Any]]) -> dict[int, float]:
        out: dict[int, list[float]] = {}
        for r in rows:
            out.setdefault(r["_rollout"]["task_index"], []).append(r["reward"])
        return {t: sum(v) / len(v) for t, v in out.items()}

    ma, mb = means(a_rows), means(b_rows)
    viewer = Viewer.open(a_path)
    async with running(viewer) as url:
        none = await get_json(http, f"{url}/api/compare", status=404)
        assert "compare_jsonl_fpath" in none["error"]["message"]
        files = await get_json(http, f"{url}/api/compare/files")
        assert files == {"current": None, "candidates": ["model_v2.jsonl"]}
        async with http.post(f"{url}/api/compare", json={"file": "../../etc/passwd"}) as resp:
            assert resp.status == 404  # only files beside the open one can be picked
        async with http.post(f"{url}/api/compare", json={"file": "model_v2.jsonl"}) as resp:
            assert resp.status == 200

        c = await get_json(http, f"{url}/api/compare?sort=delta&desc=1")
        got = {t["task"]: t["delta"] for t in c["tasks"]}
        assert got == {t: mb[t] - ma[t] for t in ma}
        assert [t["delta"] for t in c["tasks"]] == sorted(got.values(), reverse=True)
        assert c["totals"]["better"] == sum(1 for t in ma if mb[t] > ma[t])
        assert c["totals"]["worse"] == sum(1 for t in ma if mb[t] < ma[t])
        b_group = await get_json(http, f"{url}/api/group/2?run=b")
        assert [g["reward"] for g in b_group["rollouts"]] == [r["reward"] for r in b_rows[4:6]]
