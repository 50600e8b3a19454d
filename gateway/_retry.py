"""The one retry policy of the gateway (tenacity): transient failures only, exponential backoff with jitter.

Every retried call in the gateway goes through ``call_with_retry``, so ``Retry-After``, replica rotation and
metrics have one place to land. Retry-on set: connection errors, timeouts, 408, 429, 5xx; a plain 4xx gives up at
once. A verifier's own ``timeout`` answer (its verify ran past the verifier's time limit) is not retried either
(``not_a_verify_timeout``): the same answer would hold another worker for as long again. A server's
``Retry-After`` is honoured (never waiting less than the backoff), capped by
``retry_after_cap_s`` so a misbehaving server cannot park a rollout. Each retry is counted (target, cause) and
logged once with its cause.

    result, attempts = await call_with_retry(lambda n: post(...), cfg.retries, target="model", metrics=m)
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from rollgate.gateway._config import RetryConfig
from rollgate.gateway._metrics import GatewayMetrics, safe_url
from rollgate.gateway.errors import RolloutFailure

__all__ = ["call_with_retry", "is_transient", "make_retrying", "never_reached", "not_a_verify_timeout",
           "retry_wait_s"]

T = TypeVar("T")
log = logging.getLogger("rollgate.gateway.retry")


def is_transient(exc: BaseException) -> bool:
    """Retry-on set: connection errors, timeouts, 408, 429, 5xx. Anything else (a plain 4xx) gives up."""
    return isinstance(exc, RolloutFailure) and exc.transient


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
    backoff = float(min(policy.max_wait_s, policy.initial_wait_s * 2.0 ** (attempt - 1)))
    backoff += (rng.uniform if rng is not None else random.uniform)(0.0, policy.jitter_s)
    asked = exc.retry_after if isinstance(exc, RolloutFailure) else None
    if asked is not None:
        return max(backoff, min(float(asked), policy.retry_after_cap_s))
    return backoff


def _note_retry(target: str, metrics: GatewayMetrics | None, exc: BaseException | None, attempt: int,
                wait_s: float) -> None:
    cause = exc.retry_cause if isinstance(exc, RolloutFailure) else "other"
    if metrics is not None:
        metrics.retry(target, cause)
    url = safe_url(exc.url) if isinstance(exc, RolloutFailure) and exc.url else ""
    log.warning("retrying %s call: attempt %d failed (%s)", target, attempt, cause,
                extra={"target": target, "cause": cause, "attempt": attempt, "url": url, "wait_s": round(wait_s, 3)})


def make_retrying(policy: RetryConfig, *, target: str = "model", metrics: GatewayMetrics | None = None,
                  retry_on: Callable[[BaseException], bool] = is_transient, done: int = 0) -> AsyncRetrying:
    """A fresh tenacity controller for one call; ``reraise=True`` so the caller sees the real failure.

    ``done``: attempts already made before this controller takes over (its attempt 1 is attempt ``done + 1``).
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return retry_wait_s(policy, done + state.attempt_number, exc)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        _note_retry(target, metrics, exc, done + state.attempt_number, state.upcoming_sleep)

    return AsyncRetrying(
        stop=stop_after_attempt(policy.attempts - done),
        wait=wait,
        retry=retry_if_exception(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_with_retry(
    fn: Callable[[int], Awaitable[T]], policy: RetryConfig, *, target: str = "model",
    metrics: GatewayMetrics | None = None, retry_on: Callable[[BaseException], bool] = is_transient,
) -> tuple[T, int]:
    """Run ``fn(attempt_number)`` under the policy; return its result and the number of attempts made.

    On final failure the ``RolloutFailure`` is re-raised with ``attempts`` set to the attempts made.
    """
    # The first attempt runs without tenacity: almost every call succeeds at once, and setting up a controller
    # (it inspects the callable on every attempt) cost about 0.1 ms of gateway CPU per call, two calls a rollout.
    try:
        return await fn(1), 1
    except RolloutFailure as exc:
        if policy.attempts <= 1 or not retry_on(exc):
            exc.attempts = 1
            raise
        wait_s = retry_wait_s(policy, 1, exc)
        _note_retry(target, metrics, exc, 1, wait_s)
    await asyncio.sleep(wait_s)
    attempts = 1
    try:
        async for attempt in make_retrying(policy, target=target, metrics=metrics, retry_on=retry_on, done=1):
            with attempt:
                attempts = 1 + attempt.retry_state.attempt_number
                result = await fn(attempts)
    except RolloutFailure as exc:
        exc.attempts = attempts
        raise
    return result, attempts
