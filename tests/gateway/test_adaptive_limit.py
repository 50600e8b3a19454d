"""The per-replica adaptive concurrency limit: it settles near a server's real capacity and ignores 429s that do
not come from load (issue 14).

The logic is driven step by step against small simulated servers (no clock, no sockets); then through a real
gateway against the fake model admitting K requests at a time, and against random 429s.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

from rollgate.gateway._backends import BETA, AdaptiveLimit, Result
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import Live, collect, live_gateway, make_config, req, scrape, task, value

# Every 429 retried (the limit, not the retry budget, is what these tests watch).
_RETRY_ALL = {"budget_s": 60, "retry_budget_percent": 100, "min_retry_concurrency": 1000}

# A simulated server: given how many of our calls it is answering, the result of one more arriving.
Server = Callable[[int], Result]


def _drive(limit: AdaptiveLimit, server: Server, *, demand: int = 200, latency: int = 10, steps: int = 2000,
           ) -> list[float]:
    """``demand`` callers call again as soon as their call ends; an answered call takes ``latency`` steps, a 429
    one step. Returns the limit after each step."""
    pending: list[tuple[int, int, Result]] = []  # (ends at step, seq, result)
    in_flight = answering = 0
    seen = []
    for step in range(steps):
        for call in [c for c in pending if c[0] <= step]:
            pending.remove(call)
            in_flight -= 1
            if call[2] == "ok":
                answering -= 1
            limit.done(call[1], call[2])
        while in_flight < min(demand, limit.slots()):
            in_flight += 1
            seq = limit.issue(in_flight)
            result = server(answering)
            if result == "ok":
                answering += 1
            pending.append((step + (latency if result == "ok" else 1), seq, result))
        seen.append(limit.limit)
    for call in pending:  # every call ends (the pool releases every lease)
        limit.done(call[1], call[2])
    return seen


def test_the_limit_settles_near_the_capacity_of_a_server_that_admits_k_at_a_time() -> None:
    k = 32
    limit = AdaptiveLimit(ceiling=256)
    seen = _drive(limit, lambda answering: "ok" if answering < k else "overloaded")
    settled = seen[len(seen) // 2:]
    assert 0.7 * k <= min(settled) and max(settled) <= 1.3 * k, (min(settled), max(settled))
    assert statistics.mean(settled) >= 0.85 * k  # the sawtooth spends its time near K, not at its bottom
    assert limit.background == 0.0


def test_random_429s_that_do_not_fall_with_the_limit_leave_it_high() -> None:
    rng = random.Random(7)
    limit = AdaptiveLimit(ceiling=256)
    seen = _drive(limit, lambda _answering: "overloaded" if rng.random() < 0.3 else "ok", steps=3000)
    settled = seen[len(seen) // 2:]
    # Where the old rule halved on every round with a 429 (down to 4-5), the limit stays at the demand of 200.
    assert statistics.median(settled) >= 150 and min(settled) >= 100, (statistics.median(settled), min(settled))
    assert 0.2 <= limit.background <= 0.4


def test_429s_from_calls_started_before_a_decrease_do_not_decrease_it_again() -> None:
    limit = AdaptiveLimit(ceiling=256)
    first = [limit.issue(i + 1) for i in range(100)]
    # One answered call closes the round (a latency has passed): the 99 that started meanwhile are in it.
    assert limit.done(first[0], "ok") is None
    between = [limit.issue(100) for _ in range(30)]  # started before the decrease, answered after it
    made = [c for seq in first[1:] if (c := limit.done(seq, "overloaded"))]
    # One decrease, from the flight size (100 calls, not the limit of 256), however many 429s came back.
    assert [(c.kind, c.old, c.new) for c in made] == [("decreased", 256.0, 100 * BETA)]
    assert not [c for seq in between if limit.done(seq, "overloaded")]
    # The next round is the calls started from the decrease on: all refused too, so it goes down again, once.
    second = [limit.issue(i + 1) for i in range(75)]
    made = [c for seq in second if (c := limit.done(seq, "overloaded"))]
    assert [(c.kind, c.new) for c in made] == [("decreased", 75 * BETA)]


def test_a_server_refusing_everything_takes_the_limit_to_the_floor_and_success_raises_it() -> None:
    limit = AdaptiveLimit(ceiling=64, floor=3)
    _drive(limit, lambda _answering: "overloaded", demand=40, steps=300)
    assert limit.limit == 3
    seen = _drive(limit, lambda _answering: "ok", demand=40, steps=300)
    assert seen[-1] > 3 * 2
    idle = AdaptiveLimit(ceiling=64)
    idle.limit = 10.0
    _drive(idle, lambda _answering: "ok", demand=4, steps=300)
    assert idle.limit == 10.0  # a limit that is never reached does not grow


def test_429s_as_common_at_half_the_limit_are_background_and_the_limit_goes_back() -> None:
    limit = AdaptiveLimit(ceiling=100)

    def round_(size: int, refused: int) -> list[tuple[str, float]]:
        """``size`` calls start; the first ``refused`` get a 429, then the others an answer."""
        seqs = [limit.issue(i + 1) for i in range(size)]
        changes = [limit.done(s, "overloaded" if i < refused else "ok") for i, s in enumerate(seqs)]
        return [(c.kind, round(c.new, 2)) for c in changes if c is not None]

    # About 30% refused at 100, 75, 56 and 42 calls: not load-related once the limit is under half.
    assert round_(100, 30) == [("decreased", 75.0)]
    assert round_(75, 22) == [("decreased", 56.25)]
    assert round_(56, 17) == [("decreased", 42.0)]
    assert round_(42, 13) == [("restored", 100.0)]
    assert 0.29 <= limit.background <= 0.31
    # From now on that share is the background: a round like it changes nothing; a real excess still does.
    assert round_(100, 30) == []
    # A server admitting 40 at a time: 60 refused of 100, then 36 of 75, then back to the background.
    assert round_(100, 60) == [("decreased", 75.0)]
    assert round_(75, 36) == [("decreased", 56.25)]
    assert round_(56, 16) == []
    assert limit.limit == 56.25


async def _collect_sampling_the_limit(gw: Live, backend: str, n: int, *,
                                     window: int) -> tuple[dict[str, pb.RolloutResult], list[float]]:
    """Run ``n`` single-turn rollouts through ``gw``; the backend's adaptive limit as each result arrives."""
    limits: list[float] = []

    def sample(_res: object) -> None:
        limits.append(gw.core.pool.snapshot()[backend]["limit"])

    results = await collect(gw.stub, [req(f"r{i}", task(f"say: {i}", str(i))) for i in range(n)],
                            window=window, on_result=sample)
    return results, limits


async def test_through_a_gateway_the_limit_settles_near_what_the_model_admits(
        fake_resources: FakeResourcesServer) -> None:
    k, n = 16, 600
    retries = {**_RETRY_ALL, "initial_wait_s": 0.005, "max_wait_s": 0.02, "jitter_s": 0.005}
    async with FakeModelServer(latency_s=0.03, max_concurrent=k) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", retries=retries,
                          model={"max_concurrency": 128})
        async with live_gateway(cfg) as gw:
            results, limits = await _collect_sampling_the_limit(gw, model.base_url, n, window=100)
            text = await scrape(gw.metrics_url)
    assert all(r.reward == 1.0 for r in results.values())
    settled = limits[n // 2:]
    assert 0.5 * k <= statistics.median(settled) <= 1.5 * k, statistics.median(settled)
    assert 1 <= value(text, "rollgate_gateway_backend_concurrency_limit", backend=model.base_url) <= 2 * k
    # The server was not hammered: far fewer 429s than rollouts once the limit found K.
    assert model.refused < n, model.refused


async def test_through_a_gateway_random_429s_do_not_pin_the_limit(fake_resources: FakeResourcesServer) -> None:
    n = 2000
    retries = {**_RETRY_ALL, "initial_wait_s": 0.001, "max_wait_s": 0.005, "jitter_s": 0.001}
    async with FakeModelServer(latency_s=0.02, faults=[(429, 0.3, None)]) as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn", retries=retries,
                          model={"max_concurrency": 64})
        async with live_gateway(cfg) as gw:
            results, limits = await _collect_sampling_the_limit(gw, model.base_url, n, window=64)
    assert all(r.reward == 1.0 for r in results.values())
    assert model.served[429] > 100  # the storm was real
    assert statistics.median(limits[n // 2:]) >= 32, statistics.median(limits[n // 2:])
