"""The gateway skips /seed_session and /close_session for a verifier that says it needs none
(``X-Rollgate-Session: none``), keeps the full protocol otherwise, and follows a hot reload either way; the
``/verify`` calls of such rollouts that finish together go in one ``/verify_batch``.

Against a real rollgate verifier on loopback; its own /metrics count the calls it answered."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from rollgate.gateway import GatewayCore, RolloutRequest
from rollgate.verifier.hosting import RunningServer, VerifierCore, create_app, load_target, start_server
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import make_config, samples, task

PLAIN = "def verify(task, response):\n    return 1.0\n"
WITH_SESSION = """
from rollgate.verifier import Session
def verify(task, response, session: Session):
    return {"reward": 1.0, "seeded": session.state.get("seeded", False)}
"""
WITH_TOOLS = """
from rollgate.verifier import ResourcesServer, tool
class S(ResourcesServer):
    def seed_session(self, session, body):
        session.state["seeded"] = True
    @tool
    def whoami(self, session) -> dict:
        return {"session": bool(session.state.get("seeded"))}
    def verify(self, task, response):
        return 1.0
"""
TOOLS = [{"type": "function", "name": "whoami", "parameters": {"type": "object", "properties": {}}}]


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"gwsess_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


@pytest.fixture
async def verifier_server() -> AsyncIterator[Callable[[VerifierCore], Any]]:
    servers: list[RunningServer] = []

    async def start(core: VerifierCore) -> RunningServer:
        server = await start_server(create_app(core), "127.0.0.1", 0, grace_s=5)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def _calls(url: str) -> dict[tuple[str, str], float]:
    """Requests the verifier answered, by (endpoint, outcome), from its own /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {(dict(labels)["endpoint"], dict(labels)["outcome"]): v for (name, labels), v in samples(text).items()
            if name == "rollgate_verifier_requests_total"}


async def _rollouts(core: GatewayCore, n: int, start: int = 0, **params: Any) -> list[Any]:
    outs = []
    for i in range(start, start + n):
        t = task("say: ok", "ok")
        t["responses_create_params"].update(params)
        outs.append(await core.run_rollout(RolloutRequest.from_dicts(f"r{i}", "a", t)))
    return outs


async def test_sessionless_verifier_gets_verify_only(fake_model: FakeModelServer, verifier_server: Any) -> None:
    server = await verifier_server(VerifierCore(load_target("exact_match")))
    async with GatewayCore(make_config(fake_model.base_url, server.url, kind="single_turn")) as core:
        outs = await _rollouts(core, 6)
    assert [o.reward for o in outs] == [1.0] * 6 and all(o.error is None for o in outs)
    # Only the first rollout, before the gateway heard the header, seeded and closed.
    assert await _calls(server.url) == {("seed_session", "ok"): 1, ("close_session", "ok"): 1, ("verify", "ok"): 6}


async def test_a_verifier_that_needs_sessions_keeps_them(fake_model: FakeModelServer, verifier_server: Any,
                                                       module: Callable[[str], str]) -> None:
    server = await verifier_server(VerifierCore(load_target(f"{module(WITH_SESSION)}:verify")))
    async with GatewayCore(make_config(fake_model.base_url, server.url, kind="single_turn")) as core:
        outs = await _rollouts(core, 4)
    assert all(o.reward == 1.0 for o in outs)
    assert await _calls(server.url) == {("seed_session", "ok"): 4, ("close_session", "ok"): 4, ("verify", "ok"): 4}


async def test_a_rollout_offering_tools_keeps_its_session(fake_model: FakeModelServer, verifier_server: Any,
                                                        module: Callable[[str], str]) -> None:
    vcore = VerifierCore(load_target(f"{module(PLAIN)}:verify"))
    server = await verifier_server(vcore)
    async with GatewayCore(make_config(fake_model.base_url, server.url, kind="tool_calling")) as core:
        await _rollouts(core, 1)  # learns "none"
        no_tools = await _rollouts(core, 2, start=1)
        with_tools = await _rollouts(core, 2, start=3, tools=TOOLS)
    assert all(o.reward == 1.0 for o in no_tools + with_tools)
    calls = await _calls(server.url)
    assert calls[("seed_session", "ok")] == 1 + 2 and calls[("close_session", "ok")] == 1 + 2
    assert calls[("verify", "ok")] == 5


async def test_hot_reload_to_a_verify_that_needs_a_session(fake_model: FakeModelServer, verifier_server: Any,
                                                          module: Callable[[str], str]) -> None:
    vcore = VerifierCore(load_target(f"{module(PLAIN)}:verify"))
    server = await verifier_server(vcore)
    async with GatewayCore(make_config(fake_model.base_url, server.url, kind="single_turn")) as core:
        await _rollouts(core, 2)  # the second one already skips seed and close
        vcore.swap(load_target(f"{module(WITH_SESSION)}:verify"))
        # The gateway still believes "none": its /verify is refused for want of a session, the answer says
        # "required", and the rollout seeds and is verified again, with its session.
        swapped = await _rollouts(core, 1, start=2)
        later = await _rollouts(core, 2, start=3)
        assert core.session_hints.sessionless(server.url) is False
    assert [o.error for o in swapped + later] == [None] * 3
    assert [o.reward for o in swapped + later] == [1.0] * 3
    assert all(o.verifier_fields == {"reward": 1.0, "seeded": False} for o in swapped + later)
    calls = await _calls(server.url)
    assert calls[("verify", "invalid_session")] == 1  # once, for the rollout that straddled the swap
    assert calls[("seed_session", "ok")] == 1 + 1 + 2 and calls[("close_session", "ok")] == 1 + 1 + 2
    assert calls[("verify", "ok")] == 2 + 1 + 2


async def test_hot_reload_to_a_sessionless_verify_stops_seeding(fake_model: FakeModelServer, verifier_server: Any,
                                                               module: Callable[[str], str]) -> None:
    vcore = VerifierCore(load_target(f"{module(WITH_TOOLS)}:S"))
    server = await verifier_server(vcore)
    async with GatewayCore(make_config(fake_model.base_url, server.url, kind="single_turn")) as core:
        await _rollouts(core, 2)
        vcore.swap(load_target(f"{module(PLAIN)}:verify"))
        await _rollouts(core, 1, start=2)  # seeded on the old belief; its answers say "none"
        await _rollouts(core, 3, start=3)
    calls = await _calls(server.url)
    assert calls[("seed_session", "ok")] == 3 and calls[("close_session", "ok")] == 3
    assert calls[("verify", "ok")] == 6


async def test_a_third_party_server_without_the_header_gets_the_full_protocol(fake_model: FakeModelServer) -> None:
    async with FakeResourcesServer() as rs:
        async with GatewayCore(make_config(fake_model.base_url, rs.url, kind="single_turn")) as core:
            outs = await _rollouts(core, 3)
        assert [o.reward for o in outs] == [1.0] * 3
        assert (rs.requests["seed_session"], rs.requests["verify"], rs.requests["close_session"]) == (3, 3, 3)


async def _together(core: GatewayCore, n: int, start: int = 0) -> list[Any]:
    return list(await asyncio.gather(*(
        core.run_rollout(RolloutRequest.from_dicts(f"t{i}", "a", task("say: ok", "ok")))
        for i in range(start, start + n))))


async def test_rollouts_that_finish_together_are_verified_in_batches(verifier_server: Any) -> None:
    server = await verifier_server(VerifierCore(load_target("exact_match")))
    # Latency: the 40 model answers arrive together, so their /verify calls do too.
    async with FakeModelServer(latency_s=0.05) as model, \
            GatewayCore(make_config(model.base_url, server.url, kind="single_turn")) as core:
        first = (await _rollouts(core, 1))[0]  # learns "none" and the batch size
        outs = await _together(core, 40)
        assert core.verify_batches is not None
        sent, items = core.verify_batches.requests, core.verify_batches.items
        exposition = generate_latest(core.metrics.registry).decode()
    assert [o.error for o in outs] == [None] * 40
    assert all(o.reward == 1.0 and o.verifier_fields == first.verifier_fields for o in outs)
    assert {o.verifier_version for o in outs} == {first.verifier_version} != {"unknown"}
    assert items == 40 and sent < 40  # some went together
    seen = samples(exposition)
    assert seen[("rollgate_gateway_verify_batch_size_count", ())] == sent
    assert seen[("rollgate_gateway_verify_batch_size_sum", ())] == items
    calls = await _calls(server.url)
    assert calls[("verify", "ok")] == 41
    assert 1 <= calls[("verify_batch", "ok")] <= sent


async def test_batch_off_sends_each_verify_alone(verifier_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLGATE_VERIFY_BATCH", "off")
    server = await verifier_server(VerifierCore(load_target("exact_match")))
    async with FakeModelServer(latency_s=0.05) as model, \
            GatewayCore(make_config(model.base_url, server.url, kind="single_turn")) as core:
        await _rollouts(core, 1)
        outs = await _together(core, 10)
        assert core.verify_batches is None
    assert all(o.reward == 1.0 for o in outs)
    assert ("verify_batch", "ok") not in await _calls(server.url)


async def test_a_swap_to_a_verify_that_needs_sessions_while_batching(verifier_server: Any,
                                                                    module: Callable[[str], str]) -> None:
    vcore = VerifierCore(load_target(f"{module(PLAIN)}:verify"))
    server = await verifier_server(vcore)
    async with FakeModelServer(latency_s=0.05) as model, \
            GatewayCore(make_config(model.base_url, server.url, kind="single_turn")) as core:
        await _rollouts(core, 1)
        vcore.swap(load_target(f"{module(WITH_SESSION)}:verify"))
        # Each batched item is refused for want of a session and says "required": each rollout seeds and asks
        # /verify again, alone, with its session.
        outs = await _together(core, 10)
        assert core.session_hints.sessionless(server.url) is False
    assert [o.error for o in outs] == [None] * 10
    assert all(o.verifier_fields == {"reward": 1.0, "seeded": False} for o in outs)


HEADERS = {"X-Rollgate-Session": "none", "X-Rollgate-Verify-Batch": "64"}


async def test_a_server_that_claims_batches_but_lacks_the_route_gets_each_alone() -> None:
    async with FakeModelServer(latency_s=0.05) as model, \
            FakeResourcesServer(extra_headers=HEADERS, batch_status=404) as rs, \
            GatewayCore(make_config(model.base_url, rs.url, kind="single_turn")) as core:
        await _rollouts(core, 1)
        outs = await _together(core, 10)
    assert [o.reward for o in outs] == [1.0] * 10
    assert rs.requests["verify_batch"] >= 1 and rs.requests["verify"] == 11


@pytest.mark.parametrize(("status", "kind"), [(400, "http_error"), (200, "invalid_response")])
async def test_a_refused_or_garbled_batch_fails_its_rollouts_clearly(status: int, kind: str) -> None:
    async with FakeModelServer(latency_s=0.05) as model, \
            FakeResourcesServer(extra_headers=HEADERS, batch_status=status) as rs, \
            GatewayCore(make_config(model.base_url, rs.url, kind="single_turn")) as core:
        await _rollouts(core, 1)
        outs = await _together(core, 10)
    batched = [o for o in outs if o.error is not None]
    assert batched, "some rollouts went in a batch"
    for o in batched:
        assert (o.error.stage, o.error.kind) == ("verify", kind)
        assert "verify_batch" in o.error.message
    assert all(o.reward == 1.0 for o in outs if o.error is None)  # those sent alone (nothing to batch with)
