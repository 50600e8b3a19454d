"""Retries under a flaky model (Done when 1), Retry-After, final 4xx, replicas, cool-down and AIMD limits."""

from __future__ import annotations

import asyncio
import random

import pytest

from rollgate.gateway import GatewayCore, GatewayMetrics, RetryConfig, RolloutRequest
from rollgate.gateway._retry import retry_wait_s
from rollgate.gateway.errors import ModelError
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import collect, live_gateway, make_config, req, scrape, task, value

# Generous attempts: 0.3**25 makes losing a rollout to bad luck practically impossible, so "none lost" tests
# the policy, not the dice. Waits are tiny and Retry-After is capped at 10 ms so 2,000 rollouts take seconds.
# With waits that short most retries are on the wire at once, so the retry budget's floor is raised out of the
# way (test_gateway_retry_budget.py tests the budget itself).
_FAST = {"attempts": 25, "initial_wait_s": 0.001, "max_wait_s": 0.005, "jitter_s": 0.001, "retry_after_cap_s": 0.01,
         "min_retry_concurrency": 100}


async def test_2000_rollouts_through_30_percent_503_429_none_lost_and_retries_counted(
        fake_resources: FakeResourcesServer) -> None:
    faults = [(503, 0.15, None), (429, 0.10, "1"), (429, 0.05, None)]
    async with FakeModelServer(faults=faults, seed=7) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", retries=_FAST)
        async with live_gateway(cfg) as gw:
            reqs = [req(f"r{i}", task(f"say: {i}", str(i))) for i in range(2000)]
            results = await collect(gw.stub, reqs, window=50)
            text = await scrape(gw.metrics_url)
    assert len(results) == 2000
    failed = [r for r in results.values() if r.status != pb.ROLLOUT_STATUS_OK]
    assert failed == []
    assert all(r.reward == 1.0 for r in results.values())
    # The fake really was flaky (about 30% of its answers), and every error it served was retried exactly once.
    assert model.served[503] > 200 and model.served[429] > 200
    assert model.served[200] == 2000
    assert value(text, "rollgate_gateway_retries_total", target="model", cause="http_5xx") == model.served[503]
    assert value(text, "rollgate_gateway_retries_total", target="model", cause="http_429") == model.served[429]
    assert value(text, "rollgate_gateway_rollouts_total", agent="a", status="ok") == 2000
    # attempts per rollout add up to every model call the fake answered
    assert sum(r.attempts for r in results.values()) == sum(model.served.values())


def test_retry_after_is_honoured_capped_and_never_below_the_backoff() -> None:
    policy = RetryConfig(initial_wait_s=0.5, max_wait_s=10, jitter_s=0, retry_after_cap_s=5)
    rng = random.Random(0)
    asked = ModelError("429", kind="http_error", http_status=429, retry_after=3.0)
    assert retry_wait_s(policy, 1, asked, rng) == 3.0
    too_long = ModelError("429", kind="http_error", http_status=429, retry_after=3600.0)
    assert retry_wait_s(policy, 1, too_long, rng) == 5.0
    tiny = ModelError("503", kind="http_error", http_status=503, retry_after=0.0)
    assert retry_wait_s(policy, 3, tiny, rng) == 2.0  # backoff 0.5 * 2**2 wins over a smaller Retry-After
    assert retry_wait_s(policy, 10, None, rng) == 10.0  # capped exponential


async def test_retry_after_header_sets_the_wait_and_each_retry_is_logged_once_with_its_cause(
        fake_resources: FakeResourcesServer, caplog: pytest.LogCaptureFixture) -> None:
    # Every answer is 429 with Retry-After: 1, capped at 0.2 s; a 429 is retried until the 0.5 s budget is spent:
    # two waits of 0.2 s fit (one, on a machine so loaded that the attempts themselves take 0.1 s), a third not.
    async with FakeModelServer(faults=[(429, 1.0, "1")]) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn",
                          retries={"attempts": 1, "budget_s": 0.5, "retry_after_cap_s": 0.2, "initial_wait_s": 0.001})
        with caplog.at_level("WARNING", logger="rollgate.gateway.retry"):
            async with GatewayCore(cfg, metrics=GatewayMetrics()) as core:
                out = await core.run_rollout(RolloutRequest.from_dicts("r1", "a", task("say: x", "x")))
    assert out.error is not None and out.error.http_status == 429 and out.error.attempts in (2, 3)
    assert "retries.budget_s=0.5" in out.error.message  # 429s do not count against attempts=1
    assert out.reward is None
    assert model.served[429] == out.error.attempts
    retries = [r for r in caplog.records if r.name == "rollgate.gateway.retry"]
    assert [(r.__dict__["cause"], r.__dict__["wait_s"], r.__dict__["attempt"]) for r in retries] == [
        ("http_429", 0.2, n) for n in range(1, out.error.attempts)]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_a_plain_4xx_is_final_and_not_retried(status: int, fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(fail_status=status) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", retries=_FAST)
        async with live_gateway(cfg) as gw:
            res = await gw.stub.Rollout(req("r1", task("say: x")))
            text = await scrape(gw.metrics_url)
    assert res.status == pb.ROLLOUT_STATUS_FAILED and not res.HasField("reward")
    assert (res.error.stage, res.error.kind, res.error.http_status, res.error.attempts) == (
        "model", "http_error", status, 1)
    assert model.served[status] == 1
    assert "rollgate_gateway_retries_total{" not in text
    assert value(text, "rollgate_gateway_rollout_failures_total", agent="a", stage="model", kind="http_error") == 1


async def test_replicas_spread_by_least_in_flight_and_a_dead_one_cools_down(
        fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(latency_s=0.02) as m1, FakeModelServer(latency_s=0.02) as m2:
        dead = "http://127.0.0.1:9/v1"  # discard port: connection refused
        cfg = make_config([m1.base_url, m2.base_url, dead], fake_resources.url, kind="single_turn",
                          retries=_FAST, model={"failures_before_cooldown": 2, "cooldown_s": 60})
        async with live_gateway(cfg) as gw:
            results = await collect(gw.stub, [req(f"r{i}", task("say: y", "y")) for i in range(200)], window=20)
            text = await scrape(gw.metrics_url)
    assert all(r.status == pb.ROLLOUT_STATUS_OK for r in results.values())
    served1, served2 = m1.served[200], m2.served[200]
    assert served1 + served2 == 200 and min(served1, served2) > 50  # both live replicas took a fair share
    # the dead replica cost a couple of connection retries, then sat out its cool-down
    retries = value(text, "rollgate_gateway_retries_total", target="model", cause="connection")
    assert 1 <= retries <= 4
    assert value(text, "rollgate_gateway_replica_healthy", backend=dead) == 0
    assert value(text, "rollgate_gateway_replica_healthy", backend=m1.base_url) == 1


async def test_429_lowers_the_backend_concurrency_limit_and_success_raises_it(
        fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(latency_s=0.01) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", retries=_FAST,
                          model={"max_concurrency": 64})
        async with live_gateway(cfg) as gw:
            pool = gw.core.pool
            model.faults = [(429, 1.0, None)]
            # every call answers 429 until the limit is down: the rollouts keep retrying meanwhile
            results_task = collect(gw.stub, [req(f"r{i}", task("say: y", "y")) for i in range(40)], window=40)
            task_ = asyncio.ensure_future(results_task)
            async with asyncio.timeout(30):
                while pool.snapshot().get(model.base_url, {}).get("limit", 64) > 8:
                    await asyncio.sleep(0.005)
            lowered = pool.snapshot()[model.base_url]["limit"]
            model.faults = []
            results = await task_
            raised = pool.snapshot()[model.base_url]["limit"]
            text = await scrape(gw.metrics_url)
    assert all(r.status == pb.ROLLOUT_STATUS_OK for r in results.values())
    assert lowered <= 8 and raised > lowered
    assert value(text, "rollgate_gateway_backend_concurrency_limit", backend=model.base_url) == raised


async def test_calls_waiting_at_the_configured_ceiling_are_logged_once(
        fake_resources: FakeResourcesServer, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeModelServer(latency_s=0.05) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", model={"max_concurrency": 3})
        async with live_gateway(cfg) as gw:
            with caplog.at_level("WARNING", logger="rollgate.gateway.backends"):
                results = await collect(gw.stub, [req(f"r{i}", task("say: y", "y")) for i in range(30)], window=30)
    assert all(r.status == pb.ROLLOUT_STATUS_OK for r in results.values())
    warnings = [r.getMessage() for r in caplog.records if "wait for a slot" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "model.max_concurrency (3 in flight each)" in warnings[0] and "--max-num-seqs" in warnings[0]
