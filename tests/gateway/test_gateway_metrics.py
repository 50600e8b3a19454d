"""/metrics passes promtool and its key series hold the values of a known run (Done when 5); probes; JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess

import aiohttp
import pytest

from rollgate.gateway import Security
from rollgate.gateway._logging import JsonFormatter, rollout_id_var
from rollgate.gateway._metrics import safe_url
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.conftest import require_tool
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import collect, live_gateway, make_config, req, samples, scrape, task, value


async def _known_run(text_holder: list[str]) -> dict[str, pb.RolloutResult]:
    # 10 rollouts: 6 right (reward 1), 3 wrong (reward 0), 1 final 400 from the model; one 503 retried once.
    async with FakeModelServer() as model, FakeResourcesServer() as rs:
        cfg = make_config(model.base_url, rs.url, kind="single_turn")
        async with live_gateway(cfg) as gw:
            reqs = [req(f"ok{i}", task(f"say: w{i} x", f"w{i} x")) for i in range(6)]
            reqs += [req(f"no{i}", task("say: a b c", "zzz")) for i in range(3)]
            bad = task("fail_seed: 3\nsay: q")
            bad["responses_create_params"]["seed"] = 3
            reqs.append(req("bad", bad))
            results = await collect(gw.stub, reqs, window=10)
            # then one rollout whose first model call answers 503 and whose retry succeeds
            model.faults = [(503, 1.0, None)]
            t = asyncio.ensure_future(gw.stub.Rollout(req("retried", task("say: r", "r"))))
            async with asyncio.timeout(10):
                while model.served[503] < 1:
                    await asyncio.sleep(0.001)
            model.faults = []
            results["retried"] = await t
            text_holder.append(await scrape(gw.metrics_url))
    return results


async def test_metrics_pass_promtool_and_hold_the_values_of_the_run() -> None:
    holder: list[str] = []
    results = await _known_run(holder)
    text = holder[0]
    assert sum(r.status == pb.ROLLOUT_STATUS_OK for r in results.values()) == 10
    ok = value(text, "rollgate_gateway_rollouts_total", agent="a", status="ok")
    failed = value(text, "rollgate_gateway_rollouts_total", agent="a", status="failed")
    assert (ok, failed) == (10, 1)
    assert value(text, "rollgate_gateway_rollout_failures_total", agent="a", stage="model", kind="http_error") == 1
    assert value(text, "rollgate_gateway_retries_total", target="model", cause="http_5xx") >= 1
    assert value(text, "rollgate_gateway_reward_count", agent="a") == 10
    assert value(text, "rollgate_gateway_reward_sum", agent="a") == 7.0  # 6 right + "retried"
    assert value(text, "rollgate_gateway_reward_bucket", agent="a", le="0.0") == 3
    # output tokens: the fake counts words; 6 x 2 + 3 x 3 + 1 ("r") = 22; the failed call returned none
    assert value(text, "rollgate_gateway_model_tokens_total", agent="a", direction="output") == 22
    assert value(text, "rollgate_gateway_model_tokens_total", agent="a", direction="input") > 0
    assert value(text, "rollgate_gateway_stage_duration_seconds_count", agent="a", stage="total") == 11
    assert value(text, "rollgate_gateway_stage_duration_seconds_count", agent="a", stage="model") == 11
    assert value(text, "rollgate_gateway_rollouts_in_flight", agent="a") == 0
    assert value(text, "rollgate_gateway_oldest_rollout_age_seconds") == 0
    names = {name for name, _ in samples(text)}
    assert "rollgate_gateway_replica_healthy" in names and "rollgate_gateway_backend_concurrency_limit" in names
    # no series is labelled with a rollout id
    assert "ok0" not in text and "retried" not in text

    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_probes_answer_without_token_and_oldest_age_tracks_a_stuck_rollout(
        fake_resources: FakeResourcesServer) -> None:

    async with FakeModelServer() as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn")
        async with live_gateway(cfg, security=Security(token="t")) as gw:
            base = gw.metrics_url.removesuffix("/metrics")
            async with aiohttp.ClientSession() as http:
                for path in ("/healthz", "/readyz"):
                    async with http.get(base + path) as r:
                        assert r.status == 200
            call = asyncio.ensure_future(gw.stub.Rollout(req("stuck", task("sleep: 600\nsay: x")),
                                                         metadata=(("authorization", "Bearer t"),)))
            async with asyncio.timeout(10):
                while model.requests["/v1/chat/completions"] < 1:
                    await asyncio.sleep(0.01)
                while value(await scrape(gw.metrics_url), "rollgate_gateway_oldest_rollout_age_seconds") <= 0.05:
                    await asyncio.sleep(0.05)
            text = await scrape(gw.metrics_url)
            assert value(text, "rollgate_gateway_rollouts_in_flight", agent="a") == 1
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)


def test_json_log_lines_carry_the_rollout_id_and_no_secrets() -> None:
    fmt = JsonFormatter()
    token = rollout_id_var.set("rid-42")
    try:
        rec = logging.LogRecord("rollgate.gateway.retry", logging.WARNING, __file__, 1, "retrying %s", ("model",), None)
        rec.__dict__.update({"cause": "http_429", "authorization": "Bearer SECRET", "headers": {"x": "SECRET"}})
        line = json.loads(fmt.format(rec))
    finally:
        rollout_id_var.reset(token)
    assert line["rollout_id"] == "rid-42" and line["cause"] == "http_429" and line["msg"] == "retrying model"
    assert "SECRET" not in json.dumps(line)


@pytest.mark.parametrize("url, expected", [
    ("http://user:pw@host:8000/v1?key=abc", "http://host:8000/v1"),
    ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
])
def test_backend_labels_and_log_urls_drop_credentials(url: str, expected: str) -> None:
    assert safe_url(url) == expected
