"""``X-Rollgate-Session``: a verifier says on every answer (and on /healthz) whether rollouts need a session, so a
gateway can skip /seed_session and /close_session; the per-rollout routes keep their contract on the fast path."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from rollgate.verifier.hosting import VerifierCore, create_app, load_target, start_server
from tests.verifier.verifier_helpers import answer_response

FUNCTION = "def verify(task, response):\n    return 1.0\n"
FUNCTION_WITH_SESSION = "def verify(task, response, session):\n    return float(session is not None)\n"
SERVER_PLAIN = """
from rollgate.verifier import ResourcesServer
class S(ResourcesServer):
    def verify(self, task, response):
        return 1.0
"""
SERVER_TOOL = """
from rollgate.verifier import ResourcesServer, tool
class S(ResourcesServer):
    @tool
    def echo(self, text: str) -> str:
        return text
    def verify(self, task, response):
        return 1.0
"""
SERVER_SEED_HOOK = """
from rollgate.verifier import ResourcesServer
class S(ResourcesServer):
    def seed_session(self, session, body):
        session.state["n"] = 1
    def verify(self, task, response):
        return 1.0
"""


def _body(**task: Any) -> bytes:
    return json.dumps({"responses_create_params": {"input": "q"}, "response": answer_response("42"),
                       "expected_answer": "42", **task}).encode()


@pytest.mark.parametrize("source, attr, mode", [
    (None, "exact_match", "none"),
    (FUNCTION, "verify", "none"),
    (FUNCTION_WITH_SESSION, "verify", "required"),
    (SERVER_PLAIN, "S", "none"),
    (SERVER_TOOL, "S", "required"),
    (SERVER_SEED_HOOK, "S", "required"),
])
async def test_every_answer_says_whether_a_session_is_needed(
        source: str | None, attr: str, mode: str, serve: Any, http: aiohttp.ClientSession, user_module: Any) -> None:
    target = attr if source is None else f"{user_module(source)}:{attr}"
    server = await serve(target)
    seen = {}
    async with http.get(f"{server.url}/healthz") as resp:
        seen["healthz"] = resp.headers["X-Rollgate-Session"]
        assert (await resp.json())["session"] == mode
    for path, data in (("seed_session", b"{}"), ("verify", _body()), ("close_session", b""),
                       ("no_such_tool", b"{}"), ("verify", b"{broken")):
        async with http.post(f"{server.url}/{path}", data=data) as resp:
            seen[f"{path} {resp.status}"] = resp.headers["X-Rollgate-Session"]
    async with http.get(f"{server.url}/nothing") as resp:
        seen["404"] = resp.headers["X-Rollgate-Session"]
    assert set(seen) == {"healthz", "seed_session 200", "verify 200", "close_session 200", "no_such_tool 404",
                         "verify 400", "404"}
    assert set(seen.values()) == {mode}, seen


async def test_a_reload_changes_the_header_and_a_verify_without_its_session_fails_clearly(
        user_module: Any, http: aiohttp.ClientSession) -> None:
    plain, with_session = user_module(FUNCTION), user_module(FUNCTION_WITH_SESSION)
    core = VerifierCore(load_target(f"{plain}:verify"))
    server = await start_server(create_app(core), "127.0.0.1", 0, grace_s=5)
    try:
        async with http.post(f"{server.url}/verify", data=_body()) as resp:
            assert resp.status == 200 and resp.headers["X-Rollgate-Session"] == "none"
        core.swap(load_target(f"{with_session}:verify"))
        # A client that trusted "none" and sent no session cookie: a 400 naming the fix, and the new answer.
        async with http.post(f"{server.url}/verify", data=_body()) as resp:
            assert resp.status == 400 and resp.headers["X-Rollgate-Session"] == "required"
            error = (await resp.json())["error"]
        assert error["kind"] == "invalid_session" and "POST /seed_session first" in error["message"]
        async with http.post(f"{server.url}/seed_session", data=b"{}") as resp:
            assert resp.status == 200
        async with http.post(f"{server.url}/verify", data=_body()) as resp:  # the jar sends the cookie back
            assert resp.status == 200 and (await resp.json())["reward"] == 1.0
    finally:
        await server.stop()


async def test_fast_path_keeps_the_protocol(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match")
    async with http.post(f"{server.url}/verify", data=_body(category="geo")) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        answer = await resp.json()
    # The task's fields echoed, the verifier's added.
    assert answer["category"] == "geo" and answer["reward"] == 1.0 and answer["extracted_answer"] == "42"
    # A body sent in several chunks (no Content-Length) is read whole.

    async def chunks() -> Any:
        data = _body()
        for i in range(0, len(data), 7):
            yield data[i:i + 7]

    async with http.post(f"{server.url}/verify", data=chunks()) as resp:
        assert resp.status == 200 and (await resp.json())["reward"] == 1.0
    for data, status, kind in ((b"[1]", 400, "invalid_request"), (b"", 400, "invalid_request"),
                               (json.dumps({"responses_create_params": {}}).encode(), 400, "invalid_request"),
                               (json.dumps({"responses_create_params": {}, "response": answer_response("1")}).encode(),
                                500, "invalid_task")):
        async with http.post(f"{server.url}/verify", data=data) as resp:
            assert resp.status == status, data
            assert (await resp.json())["error"]["kind"] == kind
    async with http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="ok"} 2.0' in text
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="invalid_request"} 3.0' in text
    assert 'rollgate_verifier_requests_total{endpoint="verify",outcome="invalid_task"} 1.0' in text
    assert 'rollgate_verifier_request_duration_seconds_count{endpoint="verify"} 6.0' in text
    assert "rollgate_verifier_reward_count 2.0" in text


async def test_session_cookie_round_trip_and_close(serve: Any, user_module: Any) -> None:
    core_target = load_target(f"{user_module(FUNCTION_WITH_SESSION)}:verify")
    server = await serve(core_target)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{server.url}/seed_session", data=b"{}") as resp:
            cookie = resp.cookies["rollgate_session"]
            assert cookie["httponly"] and cookie["path"] == "/" and cookie.value
        async with http.post(f"{server.url}/verify", data=_body()) as resp:
            assert (await resp.json())["reward"] == 1.0
        async with http.post(f"{server.url}/close_session") as resp:
            assert resp.status == 200 and await resp.json() == {}
            assert resp.cookies["rollgate_session"]["max-age"] == "0"  # the client forgets it
        async with http.post(f"{server.url}/verify", data=_body()) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["kind"] == "invalid_session"
