"""Isolation of verify code (issue #15): a hard time limit per sync verify, worker processes for ``math`` that are
killed and replaced past it, a bounded thread pool for user code, ``/healthz`` and other rollouts never waiting."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import psutil
import pytest

from rollgate._cli import parse_cli
from rollgate.verifier._builtins import _compiled
from rollgate.verifier._isolation import VerifyLimits
from rollgate.verifier._server import ServeConfig
from rollgate.verifier.hosting import RunningServer, VerifierCore, create_app, load_target, start_server
from tests.verifier.verifier_helpers import answer_response

Post = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
HOSTILE = r"The answer is \boxed{9^{9^{9^{9}}}}"


def body(text: str, **task: Any) -> dict[str, Any]:
    return {"responses_create_params": {"input": "q"}, "response": answer_response(text), **task}


async def post(http: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=payload) as resp:
        return resp.status, await resp.json()


async def until(check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class HealthPoller:
    """Polls ``/healthz`` every 50 ms for as long as it runs; records each answer's status and latency."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.answers: list[tuple[int, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            started = time.monotonic()
            async with self.http.get(f"{self.url}/healthz") as resp:
                self.answers.append((resp.status, time.monotonic() - started))
            await asyncio.sleep(0.05)

    def __enter__(self) -> HealthPoller:
        self._task = asyncio.get_running_loop().create_task(self._poll())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_six_hostile_math_answers_time_out_alone_while_health_and_an_ordinary_one_answer_at_once(
        http: aiohttp.ClientSession) -> None:
    # Done when: six \boxed{9^{9^{9^{9}}}} at once, then an ordinary answer. sympy never finishes those (it is
    # stuck in C code computing the power), so only killing their worker processes ends them.
    timeout_s = 3.0
    # The default pool: two warm workers, more forked while all are busy (cap max(8, 2 x CPUs)).
    limits = VerifyLimits(timeout_s=timeout_s)
    assert limits.processes >= 7
    app = create_app("math", limits=limits)
    core: VerifierCore = app.state.core
    server = await start_server(app, "127.0.0.1", 0, grace_s=5)
    seen: set[int] = set()
    try:
        url = f"{server.url}/verify"
        # The first call starts the pool (lazily); wait until every worker is up, as a running server would be.
        status, answer = await post(http, url, body(r"\boxed{2}", expected_answer="2"))
        assert (status, answer["reward"]) == (200, 1.0)
        await until(lambda: len(core.isolation.worker_pids()) >= 1)
        # What the built-in raises in its worker reaches the client as it would in this process.
        status, answer = await post(http, url, body(r"\boxed{2}"))
        assert (status, answer["error"]["kind"]) == (500, "invalid_task")
        first = set(core.isolation.worker_pids())
        seen |= first
        with HealthPoller(http, server.url) as health:
            sent = time.monotonic()
            hostile = [asyncio.create_task(post(http, url, body(HOSTILE, expected_answer="1"))) for _ in range(6)]
            await until(lambda: core.isolation.busy_workers() == 6, timeout_s=timeout_s)
            # The pool keeps a warm spare beside the six stuck workers.
            await until(lambda: len(core.isolation.worker_pids()) == 7, timeout_s=timeout_s)
            stuck = set(core.isolation.busy_pids())
            seen |= set(core.isolation.worker_pids())
            started = time.monotonic()
            status, answer = await post(http, url, body(r"so \boxed{\frac{1}{2}}", expected_answer="0.5"))
            ordinary_s = time.monotonic() - started
            results = await asyncio.gather(*hostile)
            hostile_s = time.monotonic() - sent
            # The stuck workers were killed; the pool is back to its warm size with fresh processes.
            await until(lambda: core.isolation.busy_workers() == 0 and len(core.isolation.worker_pids()) >= 2)
            seen |= set(core.isolation.worker_pids())
        assert (status, answer.get("reward")) == (200, 1.0), answer
        assert ordinary_s < 1.0
        assert [r[0] for r in results] == [504] * 6
        assert {r[1]["error"]["kind"] for r in results} == {"timeout"}
        assert "--verify-timeout-s" in results[0][1]["error"]["message"]
        assert hostile_s < timeout_s + 2.5
        assert len(stuck) == 6 and not stuck & set(core.isolation.worker_pids())  # killed (reaped below)
        # /healthz answered all along, promptly.
        assert len(health.answers) >= 20
        assert {s for s, _ in health.answers} == {200}
        assert max(latency for _, latency in health.answers) < 0.5
    finally:
        await server.stop()
    assert core.isolation.worker_pids() == []
    await until(lambda: not any(psutil.pid_exists(pid) for pid in seen), timeout_s=10)


@pytest.fixture
async def served(user_module: Callable[..., str], serve: Callable[..., Awaitable[RunningServer]],
                 ) -> AsyncIterator[Callable[..., Awaitable[tuple[RunningServer, Any]]]]:
    """Serve a user module with a slow and a fast verify; returns the server and the module (its ``release``
    event frees every slow call at the end)."""
    modules: list[Any] = []

    async def start(**limits: Any) -> tuple[RunningServer, Any]:
        name = user_module(
            """
            import threading
            release = threading.Event()
            started = threading.Event()
            calls = []

            def verify(task, response):
                calls.append(task.get("slow", False))
                if task.get("slow"):
                    started.set()
                    release.wait(30)   # blocks its thread, as a sync checker stuck on a subprocess would
                    return 0.5
                if task.get("boom"):
                    raise ValueError("boom: the checker broke")
                return 1.0
            """
        )
        server = await serve(f"{name}:verify", limits=VerifyLimits(**limits))
        module = sys.modules[name]
        modules.append(module)
        return server, module

    yield start
    for module in modules:
        module.release.set()


async def test_a_sync_user_verify_past_the_limit_fails_as_timeout_while_a_concurrent_fast_one_succeeds(
        served: Callable[..., Awaitable[tuple[RunningServer, Any]]], http: aiohttp.ClientSession) -> None:
    server, module = await served(timeout_s=0.5)
    url = f"{server.url}/verify"
    started = time.monotonic()
    slow = asyncio.create_task(post(http, url, body("x", slow=True)))
    await asyncio.to_thread(module.started.wait, 10)
    fast = await post(http, url, body("y"))
    assert fast[0] == 200 and fast[1]["reward"] == 1.0
    assert not slow.done()
    status, answer = await slow
    assert time.monotonic() - started < 0.5 + 1.0
    assert status == 504
    assert answer["error"]["kind"] == "timeout"
    assert "0.5s" in answer["error"]["message"]
    # The same through /verify_batch: each item alone.
    async with http.post(f"{server.url}/verify_batch",
                         json={"requests": [body("x", slow=True), body("y")]}) as resp:
        results = (await resp.json())["results"]
    assert [(r["status"], r.get("error", {}).get("kind"), r.get("fields", {}).get("reward")) for r in results] == [
        (504, "timeout", None), (200, None, 1.0)]


async def test_the_thread_pool_is_bounded_and_a_call_that_cannot_get_a_thread_is_busy_not_run(
        served: Callable[..., Awaitable[tuple[RunningServer, Any]]], http: aiohttp.ClientSession) -> None:
    server, module = await served(timeout_s=0.3, threads=1)
    url = f"{server.url}/verify"
    assert (await post(http, url, body("x", slow=True)))[0] == 504  # its thread stays stuck in the user's code
    status, answer = await post(http, url, body("y"))
    assert (status, answer["error"]["kind"]) == (503, "busy")
    assert module.calls == [True]  # the second verify never ran
    async with http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
    module.release.set()  # the stuck call returns: its thread is free again
    for _ in range(50):
        status, answer = await post(http, url, body("y"))
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert (status, answer["reward"]) == (200, 1.0)


async def test_a_user_verify_that_raises_fails_its_rollout_with_the_traceback_in_the_log(
        served: Callable[..., Awaitable[tuple[RunningServer, Any]]], http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    server, _ = await served()
    with caplog.at_level(logging.ERROR, logger="rollgate.verifier"):
        status, answer = await post(http, f"{server.url}/verify", body("x", boom=True))
    assert status == 500
    assert answer["error"] == {"kind": "verify_exception", "message": "ValueError: boom: the checker broke"}
    assert "Traceback" not in answer["error"]["message"]
    logged = [r for r in caplog.records if r.getMessage().startswith("verify raised")]
    assert len(logged) == 1 and logged[0].exc_info is not None
    trace = caplog.text
    assert 'raise ValueError("boom: the checker broke")' in trace and "in verify" in trace


async def test_regex_compiles_each_pattern_once_and_a_backtracking_pattern_times_out_off_the_loop(
        serve: Callable[..., Awaitable[RunningServer]], http: aiohttp.ClientSession) -> None:
    server = await serve("regex", limits=VerifyLimits(timeout_s=0.5))
    url = f"{server.url}/verify"
    _compiled.cache_clear()
    for text, reward in [("the answer is 42", 1.0), ("no number", 0.0), ("ANSWER: 7", 1.0)]:
        status, answer = await post(http, url, body(text, pattern=r"answer\D*\d+", ignore_case=True))
        assert (status, answer["reward"]) == (200, reward)
    assert _compiled.cache_info().misses == 1 and _compiled.cache_info().hits == 2
    with HealthPoller(http, server.url) as health:
        started = time.monotonic()
        status, answer = await post(http, url, body("a" * 40 + "!", pattern=r"^(a|a)*$"))
        took = time.monotonic() - started
        await until(lambda: len(health.answers) >= 3)
    assert (status, answer["error"]["kind"]) == (504, "timeout")
    assert took < 0.5 + 1.0
    assert max(latency for _, latency in health.answers) < 0.3
    status, answer = await post(http, url, body("x", pattern="(unclosed"))
    assert (status, answer["error"]["kind"]) == (500, "invalid_task")


def test_serve_takes_the_time_limit_and_pool_sizes_as_flags() -> None:
    cfg = parse_cli(["math", "--verify-timeout-s", "3", "--verify-processes", "4", "--verify-threads", "8"],
                    ServeConfig, positional=["target"])
    assert cfg.limits() == VerifyLimits(timeout_s=3, processes=4, threads=8)
    assert ServeConfig(target="math").limits().timeout_s == 30.0
    with pytest.raises(ValueError, match="verify_timeout_s"):
        ServeConfig(target="math", verify_timeout_s=0)


async def test_math_called_directly_still_runs_in_this_process() -> None:
    # The loaded built-in stays a plain callable (reverify, scripts); only the server sends it to a worker.
    loaded = load_target("math")
    assert loaded.verify.process_ref == "rollgate.verifier._math:math_verify"
    fields = loaded.verify.fn({"expected_answer": "0.5"}, answer_response(r"\boxed{1/2}"))
    assert fields["reward"] == 1.0
