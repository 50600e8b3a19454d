"""Retries end by budgets, not by a small count (issue 14, item 1): a per-call time budget for outages and
overload, the retry budget (retries in flight per target), and attempts reported when a deadline cuts a call short.
"""

from __future__ import annotations

import asyncio

import pytest

from rollgate.gateway import GatewayCore, GatewayMetrics, RetryConfig, RolloutRequest
from rollgate.gateway._retry import RetryBudget, rides_out
from rollgate.gateway.errors import ModelError, VerifyError
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import Live, collect, live_gateway, make_config, req, scrape, task, value


async def test_a_backend_answering_503_to_everything_fails_after_the_time_budget_and_retries_stay_bounded(
        fake_resources: FakeResourcesServer) -> None:
    # Waits 0.05, 0.1, 0.2, 0.4, then 0.5 s (+ up to 0.01 s): within a 2 s budget at most 6 retries fit, and the
    # call gives up only when the next wait (at most 0.51 s) would pass 2 s, so after more than 1.49 s.
    retries = {"budget_s": 2, "attempts": 1, "initial_wait_s": 0.05, "max_wait_s": 0.5, "jitter_s": 0.01}
    n = 40
    async with FakeModelServer(fail_status=503) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", retries=retries)
        async with live_gateway(cfg) as gw:
            results = await collect(gw.stub, [req(f"r{i}", task(f"say: {i}", str(i))) for i in range(n)], window=n)
            text = await scrape(gw.metrics_url)
    assert len(results) == n
    for res in results.values():
        assert res.status == pb.ROLLOUT_STATUS_FAILED and not res.HasField("reward")
        err = res.error
        assert (err.stage, err.kind, err.http_status) == ("model", "http_error", 503)
        assert 2 <= err.attempts <= 7, err  # retried past attempts=1, and no more than the budget holds
        # Ended by the time budget (a retry the retry budget held back waits within it, and says so).
        assert "retries.budget_s=2" in err.message, err.message
        assert res.timings.model_s > 1.4
    assert sum(r.error.attempts for r in results.values()) == model.served[503]
    # Every retry sent is counted once; none is left in flight.
    assert value(text, "rollgate_gateway_retries_total", target="model", cause="http_5xx") == model.served[503] - n
    assert value(text, "rollgate_gateway_retries_in_flight", agent="a", target="model") == 0
    assert value(text, "rollgate_gateway_rollout_failures_total", agent="a", stage="model", kind="http_error") == n


async def test_a_spent_retry_budget_holds_retries_back_until_the_time_budget_counted_and_logged_once(
        fake_resources: FakeResourcesServer, caplog: pytest.LogCaptureFixture) -> None:
    # A slow backend that fails everything: the overload that retries make worse. 40 calls fail together; then
    # at most max(2, 20% of the calls on the wire) retries may be on the wire at once (2 here: only retries are
    # left on it), the others wait for room. Every call still ends by the 3 s time budget, not at once.
    retries = {"budget_s": 3, "initial_wait_s": 0.01, "max_wait_s": 0.05, "jitter_s": 0.01,
               "min_retry_concurrency": 2, "retry_budget_percent": 20}
    n, latency = 40, 0.3
    async with FakeModelServer(fail_status=503, latency_s=latency) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", retries=retries)
        on_the_wire: list[int] = []

        async def watch(gw: Live) -> None:
            budget = gw.core.retry_budgets.get("a", "model")
            while True:
                on_the_wire.append(budget.retrying)
                await asyncio.sleep(0.005)

        with caplog.at_level("WARNING", logger="rollgate.gateway.retry"):
            async with live_gateway(cfg) as gw:
                watcher = asyncio.create_task(watch(gw))
                results = await collect(gw.stub, [req(f"r{i}", task("say: x", "x")) for i in range(n)], window=n)
                watcher.cancel()
                text = await scrape(gw.metrics_url)
    assert all(r.status == pb.ROLLOUT_STATUS_FAILED for r in results.values())
    for res in results.values():
        assert (res.error.stage, res.error.kind, res.error.http_status) == ("model", "http_error", 503)
        assert "retries.budget_s=3" in res.error.message, res.error.message
        assert res.timings.model_s > 2.0  # held, not failed at once
    held = [r for r in results.values() if "retry budget" in r.error.message]
    assert held  # most calls were still waiting for room when their time ran out
    for res in held:
        assert "agent 'a'" in res.error.message and "model calls" in res.error.message
        assert "retries.min_retry_concurrency=2" in res.error.message
    # The retry budget: 2, or 20% of the calls on the wire (first attempts the adaptive limit held back join them).
    assert 2 <= max(on_the_wire) <= 0.2 * n
    assert value(text, "rollgate_gateway_retry_budget_exhausted_total", agent="a", target="model") >= len(held)
    # Mostly 2 retries at a time for under 3 s of 0.3 s answers: about 20 retries, where 40 calls retrying
    # freely would have sent about 8 each (320).
    sent = value(text, "rollgate_gateway_retries_total", target="model", cause="http_5xx")
    assert sent == model.served[503] - n and sent <= 60
    logged = [r for r in caplog.records if "retry budget" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]  # one line for many holds
    assert value(text, "rollgate_gateway_retries_in_flight", agent="a", target="model") == 0


async def test_a_rollout_deadline_reports_the_attempts_of_the_call_it_cut_short(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url, kind="single_turn")
    async with GatewayCore(cfg, metrics=GatewayMetrics()) as core:
        out = await core.run_rollout(RolloutRequest.from_dicts("r1", "a", task("sleep: 600\nsay: x"), deadline_s=0.5))
    assert out.error is not None
    assert (out.error.stage, out.error.kind, out.error.attempts) == ("rollout", "timeout", 1)
    assert "after 1 attempt(s)" in out.error.message and out.attempts == 1


def test_outages_and_overload_ride_out_the_time_budget_other_failures_count() -> None:
    for status in (429, 502, 503, 529):
        assert rides_out(ModelError("x", kind="http_error", http_status=status))
    assert rides_out(VerifyError("refused", kind="connection", reached=False))
    for status in (500, 504, 400):
        assert not rides_out(ModelError("x", kind="http_error", http_status=status))
    assert not rides_out(ModelError("x", kind="timeout"))
    assert (RetryConfig().budget_s, RetryConfig().attempts) == (120.0, 3)


def test_the_retry_budget_is_a_percent_of_the_calls_in_flight_with_a_floor() -> None:
    policy = RetryConfig(retry_budget_percent=20, min_retry_concurrency=10)
    budget = RetryBudget("a", "model")
    budget.active, budget.retrying = 100, 19
    assert budget.admits(policy)  # the 20th retry of 101 calls
    budget.retrying = 20
    assert not budget.admits(policy)
    budget.active, budget.retrying = 12, 9
    assert budget.admits(policy)  # the floor: 10 retries whatever the percent
    budget.retrying = 10
    assert not budget.admits(policy)
