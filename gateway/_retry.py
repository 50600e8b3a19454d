"""The one retry policy of the gateway (tenacity): transient failures only, exponential backoff with jitter.

Every retried call in the gateway goes through ``call_with_retry``, so ``Retry-After``, replica rotation, budgets
and metrics have one place to land. Retry-on set: connection errors, timeouts, 408, 429, 5xx; a plain 4xx gives
up at once. A verifier's own ``timeout`` answer (its verify ran past the verifier's time limit) is not retried
either (``not_a_verify_timeout``): the same answer would hold another worker for as long again.

How long a call keeps trying (``RetryConfig``, an agent's ``retries``), by what failed:

- **Outage or overload** (``rides_out``): a connection failure (refused while a verifier restarts, reset, DNS),
  429, 502, 503 or 529. Retried until ``budget_s`` (default 120 s) from the call's first attempt is spent: a wait
  that would end past it is not started, and the call fails naming the budget. These say "not now", not "never":
  a rate-limit storm, a model server or verifier that restarts, a proxy in front of one that is starting. A count
  would give up after a few seconds of backoff, long before such an outage ends; a time budget rides it out and
  still ends a call to a backend that is gone for good (the rollout deadline bounds everything as well).
- **Anything else transient** (a timeout, 408, 500, 504, another 5xx): at most ``attempts`` (default 3) attempts
  that failed this way. Such a failure may be the request itself (a prompt that crashes the server, a
  generation that always runs past ``timeouts.model_s``), so a few tries are what users expect, and a timeout
  retried until a time budget would cost many ``model_s`` per rollout.

Waits: ``initial_wait_s`` doubling to ``max_wait_s``, plus up to ``jitter_s``. A server's ``Retry-After`` is
honoured (never waiting less than the backoff), capped by ``retry_after_cap_s`` so a misbehaving server cannot
park a rollout. Each retry is logged with its cause and wait when decided, and counted (target, cause) when sent.

**Retry budget** (as Envoy's ``retry_budget``), per target (an agent's ``model``, ``verifier`` or ``tool``
calls): retries on the wire at most ``retry_budget_percent`` (20) of all that target's calls on the wire, and
never fewer than ``min_retry_concurrency`` (10) allowed. It is checked just before a retry is sent; when spent,
the retry waits for room (a retry of that target ending) instead of going out: each such hold is counted on
``rollgate_gateway_retry_budget_exhausted_total`` and logged at most once a minute per target. A retry still held
when the call's ``budget_s`` runs out is not sent: the call fails with its last error and a note naming both
budgets. Retries after a connection failure count towards it but are never held by it: the failed attempt cost
the server nothing, and a server that restarts is the outage to ride out. So a backend that answers slowly *and*
fails (the overload that retries make worse) sees at most the budget's retries at once, not a retry storm, and a
rollout is still failed only by the time budget: a dead backend for minutes costs each call ``budget_s``, not its
work.

Every call's attempts so far are kept in the rollout's ``RetryScope`` (a context variable set by the core), so a
rollout deadline that cuts a call short still reports the attempts it made.

    result, attempts = await call_with_retry(lambda n: post(...), cfg.retries, target="model", metrics=m)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_never

from rollgate.gateway._config import RetryConfig
from rollgate.gateway._metrics import GatewayMetrics, safe_url
from rollgate.gateway.errors import RolloutFailure

__all__ = ["OVERLOAD_STATUSES", "RetryBudget", "RetryBudgets", "RetryScope", "call_with_retry", "is_transient",
           "make_retrying", "never_reached", "not_a_verify_timeout", "retry_scope_var", "retry_wait_s", "rides_out"]

T = TypeVar("T")
log = logging.getLogger("rollgate.gateway.retry")

# "Not now" answers: rate limited, a proxy whose backend is down or starting, unavailable, overloaded (Anthropic).
OVERLOAD_STATUSES = frozenset({429, 502, 503, 529})
# A spent retry budget is logged at most this often per target (each refusal is counted on the metric).
BUDGET_LOG_EVERY_S = 60.0


def is_transient(exc: BaseException) -> bool:
    """Retry-on set: connection errors, timeouts, 408, 429, 5xx. Anything else (a plain 4xx) gives up."""
    return isinstance(exc, RolloutFailure) and exc.transient


def rides_out(exc: BaseException) -> bool:
    """An outage or overload: retried until ``budget_s`` is spent, not counted against ``attempts``."""
    if not isinstance(exc, RolloutFailure):
        return False
    return exc.kind == "connection" or (exc.kind == "http_error" and exc.http_status in OVERLOAD_STATUSES)


def never_reached(exc: BaseException) -> bool:
    """For calls that must not run twice (tools): retry only when the request never left this process."""
    return isinstance(exc, RolloutFailure) and exc.kind == "connection" and not exc.reached


def not_a_verify_timeout(exc: BaseException) -> bool:
    """For ``/verify``: ``is_transient``, except an answer saying the verify itself timed out (kind ``timeout``
    with an HTTP status: the verifier answered). A timeout on our side (no answer, status 0) is still retried."""
    if isinstance(exc, RolloutFailure) and exc.kind == "timeout" and exc.http_status:
        return False
    return is_transient(exc)


def retry_wait_s(policy: RetryConfig, attempt: int, exc: BaseException | None, rng: random.Random | None = None,
                 ) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    # The exponent is capped: a call riding out a long outage makes hundreds of attempts, and 2.0 ** 1024 overflows.
    backoff = float(min(policy.max_wait_s, policy.initial_wait_s * 2.0 ** min(attempt - 1, 60)))
    backoff += (rng.uniform if rng is not None else random.uniform)(0.0, policy.jitter_s)
    asked = exc.retry_after if isinstance(exc, RolloutFailure) else None
    if asked is not None:
        return max(backoff, min(float(asked), policy.retry_after_cap_s))
    return backoff


class RetryBudget:
    """One target's calls and retries on the wire (an agent's model, verifier or tool calls)."""

    __slots__ = ("active", "agent", "gauge", "logged_at", "refused", "retrying", "target", "unlogged", "waiters")

    def __init__(self, agent: str, target: str, gauge: Any = None) -> None:
        self.agent = agent
        self.target = target
        self.active = 0  # attempts on the wire, first attempts and retries
        self.retrying = 0  # of which retries
        self.refused = 0
        self.unlogged = 0
        self.logged_at = -math.inf
        self.gauge = gauge
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()  # retries held for room

    def admits(self, policy: RetryConfig) -> bool:
        """May one more retry go on the wire now? (Always, with none on the wire: a budget never stalls.)"""
        allowed = max(float(policy.min_retry_concurrency), policy.retry_budget_percent / 100.0 * (self.active + 1))
        return self.retrying == 0 or self.retrying + 1 <= allowed

    def wake_one(self) -> None:
        """A retry left the wire: let the longest-held retry look again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def room(self, policy: RetryConfig, deadline: float) -> bool:
        """Wait until a retry may go out, or until ``deadline`` (monotonic); True when it may."""
        loop = asyncio.get_running_loop()
        while not self.admits(policy):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            self.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return False
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.wake_one()  # this call was woken but will not go: pass the room on
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
        return True

    def describe(self, policy: RetryConfig) -> str:
        return (f"the retry budget of agent {self.agent!r}'s {self.target} calls is spent ({self.retrying} "
                f"retries in flight of {self.active} calls; retries.retry_budget_percent="
                f"{policy.retry_budget_percent:g}, retries.min_retry_concurrency={policy.min_retry_concurrency})")


class RetryBudgets:
    """Every target's retry budget in one gateway; kept across route swaps, like the backend pool.

        budgets = RetryBudgets(metrics)
        token = retry_scope_var.set(RetryScope(budgets, "my_agent"))  # the core does this per rollout
    """

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self._metrics = metrics
        self._budgets: dict[tuple[str, str], RetryBudget] = {}

    def get(self, agent: str, target: str) -> RetryBudget:
        budget = self._budgets.get((agent, target))
        if budget is None:
            gauge = self._metrics.child(self._metrics.retries_in_flight, agent, target) if self._metrics else None
            budget = self._budgets[(agent, target)] = RetryBudget(agent, target, gauge)
        return budget

    def hold(self, budget: RetryBudget, policy: RetryConfig) -> str:
        """Count (and now and then log) one retry the budget holds back; return the note for the call's error."""
        note = budget.describe(policy)
        budget.refused += 1
        budget.unlogged += 1
        if self._metrics is not None:
            self._metrics.child(self._metrics.retry_budget_exhausted, budget.agent, budget.target).inc()
        now = time.monotonic()
        if now - budget.logged_at >= BUDGET_LOG_EVERY_S:
            log.warning("%s: retries wait for room, within retries.budget_s (%d held since the last message; "
                        "logged at most once a minute)", note, budget.unlogged,
                        extra={"agent": budget.agent, "target": budget.target, "refused": budget.unlogged})
            budget.logged_at = now
            budget.unlogged = 0
        return note


@dataclass(slots=True)
class RetryScope:
    """One rollout's view of the retry machinery: the gateway's budgets, its agent, and the attempts of its
    latest call (so a deadline that cuts the call short can report them)."""

    budgets: RetryBudgets
    agent: str
    attempts: int = 0


retry_scope_var: ContextVar[RetryScope | None] = ContextVar("rollgate_retry_scope", default=None)


def _note_retry(target: str, exc: RolloutFailure, attempt: int, wait_s: float) -> None:
    cause = exc.retry_cause
    url = safe_url(exc.url) if exc.url else ""
    log.warning("retrying %s call: attempt %d failed (%s)", target, attempt, cause,
                extra={"target": target, "cause": cause, "attempt": attempt, "url": url, "wait_s": round(wait_s, 3)})


class _Call:
    """The retry bookkeeping of one call: attempts, what bounds them, and why they ended."""

    def __init__(self, policy: RetryConfig, target: str, metrics: GatewayMetrics | None,
                 retry_on: Callable[[BaseException], bool]) -> None:
        self.policy = policy
        self.target = target
        self.metrics = metrics
        self.retry_on = retry_on
        self.scope = retry_scope_var.get()
        self.budget = self.scope.budgets.get(self.scope.agent, target) if self.scope is not None else None
        self.started = time.monotonic()
        self.attempts = 0
        self.counted = 0  # failures bounded by ``attempts`` (not outages or overload)
        self.wait_s = 0.0
        self.note = ""  # why retrying ended, added to the final error
        self.refused = False
        self.last: RolloutFailure | None = None  # the failure the next attempt retries
        if self.scope is not None:
            self.scope.attempts = 0

    async def attempt(self, fn: Callable[[int], Awaitable[T]]) -> T:
        """Make one attempt: the first, or a retry of ``self.last``."""
        budget = self.budget
        previous = self.last
        if previous is not None and budget is not None and previous.kind != "connection" \
                and not budget.admits(self.policy):
            assert self.scope is not None
            note = self.scope.budgets.hold(budget, self.policy)
            if not await budget.room(self.policy, self.started + self.policy.budget_s):
                self.refused = True
                self.note = (f"not retried: {note}, and retries.budget_s={self.policy.budget_s:g} ran out "
                             f"after {time.monotonic() - self.started:.1f} s and {self.attempts} attempt(s)")
                raise previous
        self.attempts += 1
        if self.scope is not None:
            self.scope.attempts = self.attempts
        if previous is not None and self.metrics is not None:
            self.metrics.retry(self.target, previous.retry_cause)  # counted as sent: a refused retry is not one
        if budget is None:
            return await fn(self.attempts)
        budget.active += 1
        if previous is not None:
            budget.retrying += 1
            if budget.gauge is not None:
                budget.gauge.inc()
        try:
            return await fn(self.attempts)
        finally:
            budget.active -= 1
            if previous is not None:
                budget.retrying -= 1
                if budget.gauge is not None:
                    budget.gauge.dec()
                if budget.waiters:
                    budget.wake_one()

    def should_retry(self, exc: BaseException) -> bool:
        """Decide after a failed attempt; on yes, ``wait_s`` is the wait and the retry is counted and logged."""
        if self.refused or not isinstance(exc, RolloutFailure) or not self.retry_on(exc):
            return False
        policy = self.policy
        if not rides_out(exc):
            self.counted += 1
            if self.counted >= policy.attempts:
                if self.attempts > 1:
                    self.note = f"gave up after {self.attempts} attempts (retries.attempts={policy.attempts})"
                return False
        wait = retry_wait_s(policy, self.attempts, exc)
        elapsed = time.monotonic() - self.started
        if rides_out(exc) and elapsed + wait > policy.budget_s:
            self.note = (f"gave up after {self.attempts} attempt(s) in {elapsed:.1f} s: the next wait would pass "
                         f"retries.budget_s={policy.budget_s:g}")
            return False
        self.wait_s = wait
        self.last = exc
        _note_retry(self.target, exc, self.attempts, wait)
        return True

    def final(self, exc: RolloutFailure) -> None:
        """Stamp the failure that ends the call with its attempts and why there were no more."""
        exc.attempts = self.attempts
        if self.note and not exc.message.endswith(self.note):
            exc.message = f"{exc.message}; {self.note}"
            exc.args = (exc.message,)


def make_retrying(call: _Call) -> AsyncRetrying:
    """A fresh tenacity controller for one call's retries; ``call.should_retry`` decides, ``reraise=True`` so the
    caller sees the real failure."""
    return AsyncRetrying(
        stop=stop_never,  # the budgets are in ``should_retry``: they depend on what failed
        wait=lambda _state: call.wait_s,
        retry=retry_if_exception(call.should_retry),
        reraise=True,
    )


async def call_with_retry(
    fn: Callable[[int], Awaitable[T]], policy: RetryConfig, *, target: str = "model",
    metrics: GatewayMetrics | None = None, retry_on: Callable[[BaseException], bool] = is_transient,
) -> tuple[T, int]:
    """Run ``fn(attempt_number)`` under the policy; return its result and the number of attempts made.

    On final failure the ``RolloutFailure`` is re-raised with ``attempts`` set to the attempts made and, when
    retries ran out, a note saying which budget ended them.
    """
    call = _Call(policy, target, metrics, retry_on)
    # The first attempt runs without tenacity: almost every call succeeds at once, and setting up a controller
    # (it inspects the callable on every attempt) cost about 0.1 ms of gateway CPU per call, two calls a rollout.
    try:
        return await call.attempt(fn), 1
    except RolloutFailure as exc:
        if not call.should_retry(exc):
            call.final(exc)
            raise
    await asyncio.sleep(call.wait_s)
    try:
        async for attempt in make_retrying(call):
            with attempt:
                result = await call.attempt(fn)
    except RolloutFailure as exc:
        call.final(exc)
        raise
    return result, call.attempts
