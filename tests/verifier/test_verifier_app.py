"""The HTTP contract with user code: verify results, errors, tools, sessions, versions. Real servers only."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollgate.verifier.hosting import VerifierCore, load_target
from tests.verifier.verifier_helpers import answer_response, client

WriteModule = Callable[..., str]


def _body(text: str = "42", **task: Any) -> dict[str, Any]:
    return {"responses_create_params": {"input": "q"}, "response": answer_response(text), **task}


async def _post(http: aiohttp.ClientSession, url: str, body: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body)
    async with http.post(url, data=data) as resp:
        assert resp.headers.get("X-Verifier-Version"), "every answer carries X-Verifier-Version"
        return resp.status, await resp.json(content_type=None)


async def test_sync_and_async_verify_with_extra_metrics(serve: Any, http: aiohttp.ClientSession,
                                                        user_module: WriteModule) -> None:
    name = user_module("""
        import asyncio

        def verify(task, response):
            said = response["output"][-1]["content"][0]["text"]
            return {"reward": float(said == task["expected_answer"]), "length": len(said), "passed": True}

        async def averify(task, response):
            await asyncio.sleep(0)
            return {"reward": 0.5, "judge": "ok", "task_keys": sorted(task)}

        def plain(task, response):
            return 1
    """)
    server = await serve(f"{name}:verify")
    status, answer = await _post(http, f"{server.url}/verify", _body("42", expected_answer="42", category="math"))
    assert status == 200
    assert (answer["reward"], answer["length"], answer["passed"], answer["category"]) == (1.0, 2, True, "math")

    server = await serve(f"{name}:averify")
    status, answer = await _post(http, f"{server.url}/verify", _body(expected_answer="x"))
    assert status == 200
    assert (answer["reward"], answer["judge"]) == (0.5, "ok")
    # The task is the body without `response`.
    assert answer["task_keys"] == ["expected_answer", "responses_create_params"]

    server = await serve(f"{name}:plain")
    status, answer = await _post(http, f"{server.url}/verify", _body(reward=0.0))
    assert status == 200
    # A number becomes {"reward": float}; a stale reward in the body (reverify) is replaced, not kept.
    assert answer["reward"] == 1.0 and isinstance(answer["reward"], float)


async def test_sync_verify_does_not_block_the_loop(serve: Any, http: aiohttp.ClientSession,
                                                   user_module: WriteModule) -> None:
    name = user_module("""
        import threading
        RELEASE = threading.Event()

        def verify(task, response):
            assert RELEASE.wait(10), "never released"
            return 1.0
    """)
    server = await serve(f"{name}:verify")
    pending = asyncio.create_task(_post(http, f"{server.url}/verify", _body()))
    await asyncio.sleep(0.05)
    # While verify blocks its thread, the server still answers.
    async with http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
    assert not pending.done()
    sys.modules[name].RELEASE.set()
    status, answer = await asyncio.wait_for(pending, 10)
    assert (status, answer["reward"]) == (200, 1.0)


async def test_verify_exception_is_reported_without_a_traceback(serve: Any, http: aiohttp.ClientSession,
                                                               user_module: WriteModule,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    name = user_module("""
        def verify(task, response):
            raise ValueError("the judge is down")
    """)
    server = await serve(f"{name}:verify")
    with caplog.at_level(logging.ERROR, logger="rollgate.verifier"):
        status, answer = await _post(http, f"{server.url}/verify", _body())
    assert status == 500
    assert answer == {"error": {"kind": "verify_exception", "message": "ValueError: the judge is down"}}
    # The stack trace is in the server's log, with the user's file.
    assert any(r.exc_info and "the judge is down" in str(r.exc_info[1]) for r in caplog.records)
    assert f"{name}.py" in caplog.text


@pytest.mark.parametrize(
    ("returned", "expect"),
    [
        ("float('nan')", "got nan"),
        ("float('inf')", "got inf"),
        ("'1.0'", "got str '1.0'"),
        ("True", "got bool True"),
        ("{'accuracy': 1.0}", "without 'reward'"),
        ("{'reward': None}", "got NoneType None"),
        ("None", "got NoneType None"),
    ],
)
async def test_invalid_rewards(serve: Any, http: aiohttp.ClientSession, user_module: WriteModule,
                               returned: str, expect: str) -> None:
    name = user_module(f"def verify(task, response):\n    return {returned}\n")
    server = await serve(f"{name}:verify")
    status, answer = await _post(http, f"{server.url}/verify", _body())
    assert status == 500
    assert answer["error"]["kind"] == "invalid_reward"
    assert expect in answer["error"]["message"]


async def test_result_that_is_not_json(serve: Any, http: aiohttp.ClientSession, user_module: WriteModule) -> None:
    name = user_module("def verify(task, response):\n    return {'reward': 1.0, 'obj': object()}\n")
    server = await serve(f"{name}:verify")
    status, answer = await _post(http, f"{server.url}/verify", _body())
    assert (status, answer["error"]["kind"]) == (500, "invalid_result")


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b'{"response": ', "not valid JSON"),
        (b"", "empty body"),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'{"responses_create_params": {}}', "needs 'response'"),
        (b'{"response": "text"}', "needs 'response'"),
    ],
)
async def test_malformed_requests_are_400(serve: Any, http: aiohttp.ClientSession,
                                          raw: bytes, expect: str) -> None:
    server = await serve("exact_match")
    status, answer = await _post(http, f"{server.url}/verify", None, raw=raw)
    assert status == 400
    assert answer["error"]["kind"] == "invalid_request"
    assert expect in answer["error"]["message"]


async def test_body_over_the_limit_is_413(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match", max_body_bytes=2048)
    status, answer = await _post(http, f"{server.url}/verify", _body("x" * 4096, expected_answer="x"))
    assert (status, answer["error"]["kind"]) == (413, "too_large")


async def test_unknown_route_and_method_are_structured(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match")
    async with http.get(f"{server.url}/nothing/here") as resp:
        assert resp.status == 404
        assert resp.headers["X-Verifier-Version"].startswith("exact_match@")
        assert (await resp.json())["error"]["kind"] == "not_found"
    async with http.get(f"{server.url}/verify") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["kind"] == "method_not_allowed"


async def test_healthz(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match")
    for path in ("/healthz", "/readyz"):
        async with http.get(f"{server.url}{path}") as resp:
            body = await resp.json()
            assert resp.status == 200
            assert body["status"] == "ok" and body["verifier"] == "exact_match"
            assert body["version"] == resp.headers["X-Verifier-Version"]


STATEFUL = """
    import asyncio
    from rollgate.verifier import ResourcesServer, Session, tool

    class Counter(ResourcesServer):
        def __init__(self):
            self.closed = []

        async def seed_session(self, session: Session, body: dict) -> None:
            session.state["total"] = body.get("start", 0)
            session.state["log"] = []

        @tool
        async def add(self, session: Session, k: int) -> dict:
            await asyncio.sleep(0.01)  # let the two clients interleave
            session.state["total"] += k
            session.state["log"].append(k)
            return {"total": session.state["total"]}

        @tool
        def total(self, session: Session) -> dict:  # sync: runs in the thread pool
            return {"total": session.state["total"], "log": session.state["log"]}

        @tool
        def echo(self, text: str, times: int = 1) -> str:  # no session needed
            return text * times

        @tool
        def broken(self) -> dict:
            raise KeyError("no such record")

        def verify(self, task, response, session: Session) -> dict:
            return {"reward": float(session.state["total"] == task["target"]), "total": session.state["total"]}

        def close_session(self, session: Session) -> None:
            self.closed.append(session.state["total"])
"""


async def test_resources_server_sessions_do_not_leak(serve: Any, user_module: WriteModule) -> None:
    name = user_module(STATEFUL)
    loaded = load_target(f"{name}:Counter")
    server = await serve(loaded)

    async def rollout(start: int, steps: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
        async with client() as http:
            status, seeded = await _post(http, f"{server.url}/seed_session", {"start": start})
            assert (status, seeded) == (200, {})
            for k in steps:
                status, _ = await _post(http, f"{server.url}/add", {"k": k})
                assert status == 200
            status, seen = await _post(http, f"{server.url}/total", {})
            assert status == 200
            status, verified = await _post(http, f"{server.url}/verify", _body(target=start + sum(steps)))
            assert status == 200
            status, closed = await _post(http, f"{server.url}/close_session", {})
            assert (status, closed) == (200, {})
            return seen, verified

    (seen_a, verified_a), (seen_b, verified_b) = await asyncio.wait_for(
        asyncio.gather(rollout(0, [1, 2, 3]), rollout(100, [10, 20])), 15
    )
    assert seen_a == {"total": 6, "log": [1, 2, 3]}
    assert seen_b == {"total": 130, "log": [10, 20]}
    assert (verified_a["reward"], verified_a["total"]) == (1.0, 6)
    assert (verified_b["reward"], verified_b["total"]) == (1.0, 130)
    assert loaded.instance is not None and sorted(loaded.instance.closed) == [6, 130]  # type: ignore[attr-defined]


async def test_tools_errors(serve: Any, user_module: WriteModule) -> None:
    name = user_module(STATEFUL)
    server = await serve(f"{name}:Counter")
    async with client() as http:
        # A tool that needs the session, before any seed_session.
        status, answer = await _post(http, f"{server.url}/add", {"k": 1})
        assert (status, answer["error"]["kind"]) == (400, "invalid_session")
        assert "POST /seed_session first" in answer["error"]["message"]
        # A tool that needs none works without.
        status, answer = await _post(http, f"{server.url}/echo", {"text": "ab", "times": 2})
        assert (status, answer) == (200, "abab")
        status, answer = await _post(http, f"{server.url}/nosuch", {})
        assert status == 404
        assert answer["error"]["kind"] == "unknown_tool"
        assert "nosuch" in answer["error"]["message"] and "add, broken, echo, total" in answer["error"]["message"]
        status, answer = await _post(http, f"{server.url}/echo", {"txt": "a"})
        assert (status, answer["error"]["kind"]) == (400, "invalid_request")
        assert "txt" in answer["error"]["message"]
        status, answer = await _post(http, f"{server.url}/broken", {})
        assert status == 500
        assert answer["error"] == {
            "kind": "tool_exception", "message": "tool 'broken' raised KeyError: 'no such record'"
        }
        # After close_session the cookie is gone, and so is the session.
        await _post(http, f"{server.url}/seed_session", {})
        await _post(http, f"{server.url}/close_session", {})
        status, answer = await _post(http, f"{server.url}/add", {"k": 1})
        assert (status, answer["error"]["kind"]) == (400, "invalid_session")
        # Closing again is harmless.
        status, _ = await _post(http, f"{server.url}/close_session", None, raw=b"")
        assert status == 200
        # Known tools are answered by the fast path, unknown ones by FastAPI: both count under endpoint "tool".
        async with http.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
        for outcome, n in (("ok", 1), ("invalid_session", 2), ("unknown_tool", 1), ("invalid_request", 1),
                           ("tool_exception", 1)):
            assert f'rollgate_verifier_requests_total{{endpoint="tool",outcome="{outcome}"}} {n}.0' in text



async def test_verify_batch_scores_each_body_alone_and_counts_each(serve: Any, http: aiohttp.ClientSession,
                                                                   user_module: WriteModule) -> None:
    name = user_module("""
        def verify(task, response):
            if task.get("explode"):
                raise ValueError("kaboom")
            return {"reward": 0.5, "n": task["n"], "nan": task.get("nan")}
    """)
    server = await serve(f"{name}:verify")
    bodies: list[Any] = [_body(n=1), "not an object", _body(n=3, explode=True), {"n": 4}, _body(n=5)]
    async with http.post(f"{server.url}/verify_batch", data=json.dumps({"requests": bodies})) as resp:
        assert resp.status == 200
        assert resp.headers["X-Rollgate-Verify-Batch"] == "1024"
        assert resp.headers["X-Rollgate-Session"] == "none"
        version = resp.headers["X-Verifier-Version"]
        results = (await resp.json())["results"]
    # Only what verify added comes back (the caller has the body), in the order sent.
    assert results[0] == {"status": 200, "version": version, "session": "none",
                          "fields": {"reward": 0.5, "n": 1, "nan": None}}
    assert results[4]["fields"]["n"] == 5
    assert [r["status"] for r in results] == [200, 400, 500, 400, 200]
    assert results[1]["error"]["kind"] == "invalid_request" and "got a string" in results[1]["error"]["message"]
    assert results[2]["error"] == {"kind": "verify_exception", "message": "ValueError: kaboom"}
    assert "'response'" in results[3]["error"]["message"]
    # The same fields as /verify adds to its echo of the body.
    status, single = await _post(http, f"{server.url}/verify", _body(n=1))
    assert status == 200 and {k: single[k] for k in results[0]["fields"]} == results[0]["fields"]
    bad: dict[str, Any]
    for bad in ({"requests": []}, {"requests": "x"}, {"requests": [_body(n=1)] * 1025}, {}):
        status, answer = await _post(http, f"{server.url}/verify_batch", bad)
        assert (status, answer["error"]["kind"]) == (400, "invalid_request")
    async with http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="ok"} 3.0' in text  # 2 in the batch + 1
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="invalid_request"} 2.0' in text
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="verify_exception"} 1.0' in text
    assert 'rollgate_verifier_requests_total{endpoint="verify_batch",outcome="ok"} 1.0' in text
    assert 'rollgate_verifier_requests_total{endpoint="verify_batch",outcome="invalid_request"} 4.0' in text


async def test_verify_batch_items_that_need_a_session_say_so(serve: Any, http: aiohttp.ClientSession,
                                                             user_module: WriteModule) -> None:
    name = user_module("""
        from rollgate.verifier import Session

        def verify(task, response, session: Session):
            return 1.0
    """)
    server = await serve(f"{name}:verify")
    async with http.post(f"{server.url}/verify_batch", data=json.dumps({"requests": [_body()]})) as resp:
        item = (await resp.json())["results"][0]
    assert (item["status"], item["session"], item["error"]["kind"]) == (400, "required", "invalid_session")


async def test_a_result_json_cannot_hold_fails_its_item_alone(serve: Any, http: aiohttp.ClientSession,
                                                              user_module: WriteModule) -> None:
    name = user_module("""
        def verify(task, response):
            return {"reward": 1.0, "blob": object() if task.get("odd") else "fine"}
    """)
    server = await serve(f"{name}:verify")
    async with http.post(f"{server.url}/verify_batch",
                         data=json.dumps({"requests": [_body(), _body(odd=True)]})) as resp:
        results = (await resp.json())["results"]
    assert results[0]["fields"] == {"reward": 1.0, "blob": "fine"}
    assert (results[1]["status"], results[1]["error"]["kind"]) == (500, "invalid_result")

async def test_version_header_changes_with_the_source(serve: Any, http: aiohttp.ClientSession,
                                                     user_module: WriteModule, tmp_path: Path) -> None:
    name = user_module("def verify(task, response):\n    return 1.0\n")
    first = await serve(load_target(f"{name}:verify"))
    (tmp_path / f"{name}.py").write_text("def verify(task, response):\n    return 0.5\n")
    second = await serve(load_target(f"{name}:verify", fresh=True))
    versions = []
    for server, reward in ((first, 1.0), (second, 0.5)):
        async with http.post(f"{server.url}/verify", data=json.dumps(_body())) as resp:
            assert resp.status == 200 and (await resp.json())["reward"] == reward
            versions.append(resp.headers["X-Verifier-Version"])
    assert all(v.startswith("sha256:") for v in versions)
    assert versions[0] != versions[1]


async def test_metrics_count_outcomes_per_endpoint(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match")
    await _post(http, f"{server.url}/verify", _body(expected_answer="42"))
    await _post(http, f"{server.url}/verify", _body(expected_answer="42"))
    await _post(http, f"{server.url}/verify", None, raw=b"{")
    await _post(http, f"{server.url}/seed_session", {})
    await _post(http, f"{server.url}/some_tool_name", {})
    async with http.get(f"{server.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="ok"} 2.0' in text
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="invalid_request"} 1.0' in text
    assert 'rollgate_verifier_requests_total{endpoint="tool",outcome="unknown_tool"} 1.0' in text
    assert "some_tool_name" not in text  # a client-typed path never becomes a label
    assert "rollgate_verifier_sessions 1.0" in text
    assert 'rollgate_verifier_request_duration_seconds_count{endpoint="verify"} 3.0' in text


async def test_a_session_evicted_at_the_limit_still_gets_its_close_hook(user_module: WriteModule) -> None:
    # Rollouts that never closed their sessions (a gateway killed mid-run) must not leak what the hook frees.
    loaded = load_target(f"{user_module(STATEFUL)}:Counter")
    core = VerifierCore(loaded, max_sessions=2)
    for start in (1, 2, 3):
        await core.seed_session({"start": start})
    async with asyncio.timeout(5):
        while not loaded.instance.closed:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
    assert loaded.instance.closed == [1]  # type: ignore[union-attr]
    assert core.session_count == 2
