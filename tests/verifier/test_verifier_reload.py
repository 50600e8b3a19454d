"""Hot reload in the running process: edits swap in, in-flight requests finish on the old code, broken edits
keep the old version serving and show on /healthz."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from rollgate.verifier._reload import Reloader
from rollgate.verifier.hosting import VerifierCore, create_app, load_target, start_server

from .verifier_helpers import answer_response

WriteModule = Callable[..., str]

V1 = """
import asyncio
GATE = asyncio.Event()
STARTED = asyncio.Event()

async def verify(task, response):
    if task.get("hold"):
        STARTED.set()
        await GATE.wait()
    return {"reward": 1.0, "which": "v1"}
"""

V2 = """
def verify(task, response):
    return {"reward": 0.25, "which": "v2"}
"""


def _body(**task: Any) -> dict[str, Any]:
    return {"responses_create_params": {"input": "q"}, "response": answer_response("a"), **task}


async def _verify(http: aiohttp.ClientSession, url: str, **task: Any) -> tuple[dict[str, Any], str]:
    async with http.post(f"{url}/verify", json=_body(**task)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(), resp.headers["X-Verifier-Version"]


async def _next_version(http: aiohttp.ClientSession, url: str, old: str) -> tuple[dict[str, Any], str]:
    """Verify until the version changes from ``old`` (up to ~20 s on a loaded machine; usually well under one)."""
    for _ in range(200):
        answer, version = await _verify(http, url)
        if version != old:
            break
        await asyncio.sleep(0.1)
    return answer, version


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/healthz") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_edit_swaps_in_and_the_request_in_flight_finishes_on_the_old_code(
    user_module: WriteModule, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name = user_module(V1)
    core = VerifierCore(load_target(f"{name}:verify"))
    old_globals = core.loaded.verify.fn.__globals__
    async with await start_server(create_app(core), "127.0.0.1", 0, grace_s=5) as server:
        first, v1 = await _verify(http, server.url)
        assert first["which"] == "v1"
        held = asyncio.create_task(_verify(http, server.url, hold=True))
        await asyncio.wait_for(old_globals["STARTED"].wait(), 20)

        (tmp_path / f"{name}.py").write_text(textwrap.dedent(V2))
        assert await Reloader(core).reload() is True

        new, v2 = await _verify(http, server.url)
        assert (new["reward"], new["which"]) == (0.25, "v2") and v2 != v1
        assert not held.done()  # still running on v1 while v2 answers
        old_globals["GATE"].set()
        done, version = await asyncio.wait_for(held, 20)
        assert (done["reward"], done["which"], version) == (1.0, "v1", v1)
        health = await _health(http, server.url)
        assert (health["status"], health["version"], health["reloads"]) == ("ok", v2, 1)


async def test_broken_edit_keeps_the_old_version_and_healthz_shows_why(
    user_module: WriteModule, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name = user_module(V2)
    core = VerifierCore(load_target(f"{name}:verify"))
    reloader = Reloader(core)
    source = tmp_path / f"{name}.py"
    async with await start_server(create_app(core), "127.0.0.1", 0, grace_s=5) as server:
        _, good = await _verify(http, server.url)
        for broken, needle in [
            ("def verify(task, response)\n    return 1.0\n", "SyntaxError"),
            ("import not_a_module_anywhere_x\ndef verify(t, r):\n    return 1.0\n", "not_a_module_anywhere_x"),
            ("def verifyy(task, response):\n    return 1.0\n", "did you mean 'verifyy'"),
        ]:
            source.write_text(broken)
            assert await reloader.reload() is False
            answer, version = await _verify(http, server.url)
            assert (answer["which"], version) == ("v2", good)  # the previous version keeps serving
            health = await _health(http, server.url)
            assert health["status"] == "load_error" and health["version"] == good
            assert needle in health["load_error"]
            assert f"{name}.py" in health["load_error"] or needle.startswith("did")
        async with http.get(f"{server.url}/metrics") as resp:
            assert "rollgate_verifier_load_error 1.0" in await resp.text()

        source.write_text("def verify(task, response):\n    return 0.5\n")
        assert await reloader.reload() is True
        answer, version = await _verify(http, server.url)
        assert answer["reward"] == 0.5 and version != good
        health = await _health(http, server.url)
        assert (health["status"], health["load_error"]) == ("ok", None)
        async with http.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
        assert "rollgate_verifier_load_error 0.0" in text
        assert f'rollgate_verifier_loaded_info{{verifier="{name}:verify",version="{version}"}} 1.0' in text


async def test_helper_module_beside_the_target_is_reloaded_too(
    user_module: WriteModule, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    helper = user_module("FACTOR = 1.0\n")
    name = user_module(f"import {helper}\ndef verify(task, response):\n    return {helper}.FACTOR\n")
    core = VerifierCore(load_target(f"{name}:verify"))
    async with await start_server(create_app(core), "127.0.0.1", 0, grace_s=5) as server:
        before, v1 = await _verify(http, server.url)
        (tmp_path / f"{helper}.py").write_text("FACTOR = 0.75\n")
        assert await Reloader(core).reload() is True
        after, v2 = await _verify(http, server.url)
        assert (before["reward"], after["reward"]) == (1.0, 0.75)
        assert v1 != v2  # the helper's bytes are part of the version


async def test_the_watcher_reloads_a_saved_file(user_module: WriteModule, tmp_path: Path,
                                                http: aiohttp.ClientSession) -> None:
    name = user_module(V2)
    core = VerifierCore(load_target(f"{name}:verify"))
    reloader = Reloader(core)
    watcher = asyncio.create_task(reloader.watch())
    try:
        async with await start_server(create_app(core), "127.0.0.1", 0, grace_s=5) as server:
            await asyncio.wait_for(reloader.watching.wait(), 20)
            _, old = await _verify(http, server.url)
            (tmp_path / f"{name}.py").write_text("def verify(task, response):\n    return 0.125\n")
            answer, version = await _next_version(http, server.url, old)
            assert answer["reward"] == 0.125 and version != old
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_a_configmap_style_symlink_swap_is_an_edit(tmp_path: Path, monkeypatch: Any,
                                                         http: aiohttp.ClientSession) -> None:
    # How Kubernetes updates a ConfigMap mounted as a directory: files are links through `..data`, and an
    # update points `..data` at a new timestamped folder (an atomic rename), then deletes the old one.
    import os
    import shutil
    import sys
    import uuid

    code = tmp_path / "code"
    name = f"cm_{uuid.uuid4().hex[:8]}"

    def publish(version: str, source: str) -> None:
        folder = code / f"..{version}"
        folder.mkdir(parents=True)
        (folder / f"{name}.py").write_text(source)
        (code / "..data_tmp").symlink_to(folder.name)
        os.replace(code / "..data_tmp", code / "..data")

    publish("2024_01", "def verify(task, response):\n    return 1.0\n")
    (code / f"{name}.py").symlink_to(f"..data/{name}.py")
    monkeypatch.syspath_prepend(str(code))
    core = VerifierCore(load_target(f"{name}:verify"))
    reloader = Reloader(core)
    watcher = asyncio.create_task(reloader.watch())
    try:
        async with await start_server(create_app(core), "127.0.0.1", 0, grace_s=5) as server:
            await asyncio.wait_for(reloader.watching.wait(), 20)
            _, old = await _verify(http, server.url)
            publish("2024_02", "def verify(task, response):\n    return 0.375\n")
            shutil.rmtree(code / "..2024_01")
            answer, version = await _next_version(http, server.url, old)
            assert answer["reward"] == 0.375 and version != old
            # The kubelet updates again later: the watch must survive the folder it first saw being deleted.
            second = version
            publish("2024_03", "def verify(task, response):\n    return 0.625\n")
            shutil.rmtree(code / "..2024_02")
            answer, version = await _next_version(http, server.url, second)
            assert answer["reward"] == 0.625 and version != second
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        sys.modules.pop(name, None)
