"""Shared helpers for the verifier tests: user modules written into tmp_path, real servers on 127.0.0.1:0."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollgate.verifier.hosting import LoadedVerifier, RunningServer, create_app, start_server

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def nemo_request() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / "nemo_gym_verify_request.json").read_text())
    return body


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Write a module into tmp_path (importable, and the cwd) and return its unique name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"vmod_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Start ``create_app(target)`` on 127.0.0.1:0; every server is stopped at the end of the test."""
    servers: list[RunningServer] = []

    async def start(target: str | LoadedVerifier, **app_kwargs: Any) -> RunningServer:
        server = await start_server(create_app(target, **app_kwargs), "127.0.0.1", 0, grace_s=5)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: aiohttp's jar otherwise ignores cookies set by an IP address such as 127.0.0.1.
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session
