"""Bearer token on the protocol routes (``--token-env``); health and metrics stay open for probes."""

from __future__ import annotations

from typing import Any

import aiohttp

from .verifier_helpers import answer_response


async def test_token_guards_the_protocol_but_not_health(serve: Any, http: aiohttp.ClientSession) -> None:
    server = await serve("exact_match", token="s3cret")
    body = {"responses_create_params": {"input": "q"}, "response": answer_response("a"), "expected_answer": "a"}
    for headers, status in [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                            ({"Authorization": "Bearer s3cret"}, 200)]:
        async with http.post(f"{server.url}/verify", json=body, headers=headers) as resp:
            assert resp.status == status
            if status == 401:
                assert (await resp.json())["error"]["kind"] == "unauthorized"
                assert "X-Verifier-Version" not in resp.headers
    async with http.post(f"{server.url}/seed_session") as resp:
        assert resp.status == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        async with http.get(f"{server.url}{path}") as resp:
            assert resp.status == 200
    async with http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    assert 'rollgate_verifier_reward_bucket{le="1.0"} 1.0' in text
    assert 'rollgate_verifier_loaded_info{verifier="exact_match"' in text


async def test_verify_serve_reads_the_token_from_the_named_env_var() -> None:
    import os
    import subprocess
    import sys

    from tests.e2e.stack import ROOT, env_with, read_ready, stop

    proc = subprocess.Popen([sys.executable, "-m", "rollgate.verifier", "serve", "exact_match", "--port", "0",
                             "--token-env", "MY_TOKEN"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=env_with(MY_TOKEN="t0k"))
    try:
        url = read_ready(proc)["url"]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/close_session") as resp:
                assert resp.status == 401
            async with http.post(f"{url}/close_session", headers={"Authorization": "Bearer t0k"}) as resp:
                assert resp.status == 200
    finally:
        stop(proc)
    assert os.environ.get("MY_TOKEN") is None  # the test's own environment is untouched
