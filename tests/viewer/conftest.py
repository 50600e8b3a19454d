"""Fixtures: generated rollouts files and a real viewer server on 127.0.0.1 (port 0) in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn

from rollgate.collector.viewer import Viewer, serve
from rollgate.collector.viewer._main import _bind
from tests.viewer.rows import make_run, write_rows

MALFORMED = '{"responses_create_params": {"input": "torn'


@pytest.fixture
def run_file(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """12 tasks × 4 repeats; task 3 failed (in the sidecar); one malformed line before row 5 (line 6)."""
    path = tmp_path / "rollouts.jsonl"
    rows = make_run(path, tasks=12, repeats=4, seed=7, fail_task=3)
    write_rows(path, rows, extra_lines={5: MALFORMED})
    return path, rows


@contextlib.asynccontextmanager
async def running(viewer: Viewer) -> AsyncIterator[str]:
    sock = _bind("127.0.0.1", 0)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    box: list[uvicorn.Server] = []
    task = asyncio.create_task(serve(viewer, sock, ready.set_result, box))
    try:
        url = await asyncio.wait_for(ready, 30)
        yield url
    finally:
        box[0].should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


ServerFactory = Callable[[Viewer], contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with http.get(url) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body
