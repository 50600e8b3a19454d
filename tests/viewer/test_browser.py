"""The page in a real headless Chromium (Debian's, driven by Playwright): filter, open a tool-call rollout, groups."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector.viewer import Viewer
from tests.conftest import require_tool
from tests.viewer.conftest import running
from tests.viewer.rows import make_run

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def chromium(monkeypatch: pytest.MonkeyPatch) -> str:
    path = require_tool("chromium")
    # Never let Playwright fetch a browser of its own: there is no network for it here.
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else path


@pytest.mark.timeout(180)
async def test_filter_open_tool_call_and_group(run_file: tuple[Path, list[dict[str, Any]]], chromium: str) -> None:
    from playwright.async_api import async_playwright, expect

    path, rows = run_file
    side = [json.loads(line) for line in Path(f"{path}.failures").read_text().splitlines()]
    low = [r for r in rows + side if isinstance(r.get("reward"), float) and r["reward"] < 0.3]
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    async with running(Viewer.open(path)) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            # Offline: every request the page makes goes to this server.
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            await page.goto(url)
            await page.wait_for_selector("body[data-ready='1']", timeout=30_000)

            # The overview: counts, and the malformed line called out with its line number.
            await expect(page.locator("#cards")).to_contain_text("rollouts")
            await expect(page.locator("#banner")).to_contain_text("1 malformed line")
            await expect(page.locator("#banner")).to_contain_text("rollouts.jsonl:6")

            await page.fill("#f-filter", "reward < 0.3")
            await page.press("#f-filter", "Enter")
            await expect(page.locator("#range")).to_have_text(re.compile(rf"of {len(low)}$"))
            shown = await page.locator("#rows tbody tr.row td:nth-child(4)").all_inner_texts()
            assert shown and all(float(v) < 0.3 for v in shown), shown

            # Open a low-reward rollout that used a tool (every third task calls get_weather).
            target = next(r for r in rows if r["reward"] < 0.3 and r["_rollout"]["task_index"] % 3 == 0)
            task, rep = target["_rollout"]["task_index"], target["_rollout"]["repeat_index"]
            row_el = page.locator("#rows tbody tr.row").filter(
                has=page.locator(f"td:nth-child(2):text-is('{task}')")).filter(
                has=page.locator(f"td:nth-child(3):text-is('{rep}')"))
            await row_el.first.click()
            detail = page.locator("#detail")
            await expect(detail.locator(".msg.call")).to_contain_text("get_weather")
            args = await detail.locator(".msg.call pre").inner_text()
            city = json.loads(target["output"][-3]["arguments"])["city"]
            assert f'"city": "{city}"' in args
            await expect(detail.locator(".msg.tool")).to_contain_text('"forecast": "sunny"')
            await expect(detail.locator(".msg.user")).to_contain_text(f"weather in {city}")
            await expect(detail.locator(".msg.system")).to_contain_text("concise assistant")
            answer = target["output"][-1]["content"][0]["text"]
            await expect(detail.locator(".msg.assistant").last).to_have_text(re.compile(re.escape(answer)))
            await expect(detail.locator(".rhead")).to_contain_text(f"task {task} · repeat {rep}")
            await expect(detail.locator("table.meta")).to_contain_text("expected_answer")
            await expect(detail.locator("table.meta")).to_contain_text("_rollout")
            await page.screenshot(path=str(ARTIFACTS / "viewer_filtered_tool_call.png"), full_page=True)

            # Failures only: the failed rollout (tool stage) and the malformed line, each with its error.
            await page.fill("#f-filter", "")
            await page.check("#f-failures")
            await expect(page.locator("#range")).to_have_text(re.compile(r"of 2$"))
            await expect(page.locator("#rows tbody")).to_contain_text("failed · tool/http_error")
            await page.locator("#rows tbody tr.malformed").click()
            await expect(detail).to_contain_text("Malformed line 6")
            await expect(detail.locator(".raw")).to_contain_text('"input": "torn')
            await page.locator("#rows tbody tr.failed").click()
            await expect(detail.locator(".errorbox")).to_contain_text("POST /get_weather answered 503")

            # Group view: the four repeats of the failed task side by side, the failure among them.
            await detail.locator("button.link").click()
            group = page.locator("#group")
            await expect(group.locator(".column")).to_have_count(4)
            await expect(group.locator(".column.failed")).to_have_count(1)
            await expect(group.locator("h2")).to_contain_text("Task 3")
            await page.screenshot(path=str(ARTIFACTS / "viewer_group.png"), full_page=True)
        finally:
            await browser.close()
    assert not errors, errors
    assert all(u.startswith(url) for u in requested), [u for u in requested if not u.startswith(url)]


@pytest.mark.timeout(180)
async def test_compare_tab_shows_per_task_deltas(tmp_path: Path, chromium: str) -> None:
    from playwright.async_api import async_playwright, expect

    a_path, b_path = tmp_path / "model_v1.jsonl", tmp_path / "model_v2.jsonl"
    a_rows = make_run(a_path, tasks=8, repeats=3, seed=1)
    b_rows = make_run(b_path, tasks=8, repeats=3, seed=2)

    def mean(rows: list[dict[str, Any]], t: int) -> float:
        return float(sum(r["reward"] for r in rows[3 * t: 3 * t + 3])) / 3

    deltas = {t: mean(b_rows, t) - mean(a_rows, t) for t in range(8)}
    biggest = max(deltas, key=lambda t: (abs(deltas[t]), -t))
    ARTIFACTS.mkdir(exist_ok=True)
    async with running(Viewer.open(a_path)) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            await page.goto(url)
            await page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            await page.click("button[data-tab='compare']")
            # No second run given on the command line: pick the file beside this one in the page.
            await page.select_option("#c-file", "model_v2.jsonl")
            await page.click("#c-pick button.primary")
            await expect(page.locator("#c-pick")).to_contain_text("Comparing with")
            first = page.locator("#ctable tbody tr.row").first
            await expect(first.locator("td").first).to_have_text(str(biggest))  # largest change first
            sign = "+" if deltas[biggest] > 0 else ""
            shown = sign + f"{deltas[biggest]:.3f}".rstrip("0").rstrip(".")
            await expect(first.locator(".delta")).to_contain_text(shown)
            await first.click()
            await expect(page.locator("#cgroup .columns")).to_have_count(2)
            await expect(page.locator("#cgroup .column")).to_have_count(6)
            await page.screenshot(path=str(ARTIFACTS / "viewer_compare.png"), full_page=True)
        finally:
            await browser.close()
