"""Model replicas: least-in-flight choice, cool-down after repeated failures, an AIMD concurrency limit.

State lives per base URL in one ``BackendPool`` for the whole gateway, so it survives a hot-swap that keeps the
URL, and two agents on the same server share its limit (the limit protects the *server*).

- Choice: among replicas not cooling down and below their limit, the one with the fewest calls in flight
  relative to its limit; the retry of a failed call prefers another replica.
- Cool-down: ``failures_before_cooldown`` consecutive connection errors/timeouts/5xx take a replica out for
  ``cooldown_s``; afterwards it is tried again and one success makes it healthy. When every replica is cooling
  down, the one back soonest is used anyway: retries and the rollout deadline decide, not the balancer.
- AIMD: a 429 halves the replica's limit (at most once per limit's worth of calls, so a burst of 429s from one
  overload counts once); each success adds ``1/limit`` (about +1 per round of calls), up to ``max_concurrency``.
  A call that finds every replica at its limit waits for a slot (``rollgate_gateway_model_requests_queued``).

    lease = await pool.acquire(["http://a/v1", "http://b/v1"], endpoint_cfg)
    try: ... finally: pool.release(lease, "ok")
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

from rollgate.gateway._config import ModelEndpoint
from rollgate.gateway._metrics import GatewayMetrics, safe_url

__all__ = ["Backend", "BackendPool", "Result"]

log = logging.getLogger("rollgate.gateway.backends")
Result = Literal["ok", "overloaded", "failed", "neutral"]


@dataclass(slots=True)
class Backend:
    """One base URL's live state."""

    url: str
    label: str
    ceiling: int
    limit: float
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    since_decrease: int = 0
    warned_full: bool = False

    def cooling(self, now: float) -> bool:
        return now < self.down_until

    def has_slot(self) -> bool:
        return self.in_flight < max(1, int(self.limit))


class BackendPool:
    """Every model base URL the gateway talks to."""

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self._backends: dict[str, Backend] = {}
        self._metrics = metrics
        self._freed = asyncio.Event()
        self._waiting = 0

    def backend(self, url: str, cfg: ModelEndpoint) -> Backend:
        b = self._backends.get(url)
        if b is None:
            b = Backend(url, safe_url(url), cfg.max_concurrency, float(cfg.max_concurrency))
            self._backends[url] = b
            self._publish(b)
        elif b.ceiling != cfg.max_concurrency:  # a hot-swap changed the ceiling
            b.ceiling = cfg.max_concurrency
            b.limit = min(b.limit, float(b.ceiling))
            b.warned_full = False
            self._publish(b)
        return b

    def _publish(self, b: Backend) -> None:
        if self._metrics is not None:
            m = self._metrics
            m.child(m.concurrency_limit, b.label).set(max(1, int(b.limit)))
            m.child(m.replica_healthy, b.label).set(0 if b.cooling(time.monotonic()) else 1)

    def _pick(self, backends: list[Backend], avoid: str | None) -> Backend | None:
        now = time.monotonic()
        healthy = [b for b in backends if not b.cooling(now)]
        if not healthy:
            # Every replica is cooling down: the one back soonest, rather than failing without trying.
            healthy = [min(backends, key=lambda b: b.down_until)]
        ready = [b for b in healthy if b.has_slot()]
        if len(ready) > 1 and avoid is not None:
            ready = [b for b in ready if b.url != avoid] or ready
        if not ready:
            return None
        return min(ready, key=lambda b: (b.in_flight / max(1.0, b.limit), b.in_flight))

    async def acquire(self, urls: list[str], cfg: ModelEndpoint, avoid: str | None = None) -> Backend:
        """Take a slot on the best replica, waiting while every one is at its limit."""
        backends = [self.backend(u, cfg) for u in urls]
        chosen = self._pick(backends, avoid)
        if chosen is None:
            self._warn_at_ceiling(backends)
            label = backends[0].label
            gauge = self._metrics.queued.labels(label) if self._metrics is not None else None
            if gauge is not None:
                gauge.inc()
            self._waiting += 1
            try:
                while chosen is None:
                    await self._freed.wait()
                    chosen = self._pick(backends, avoid)
            finally:
                self._waiting -= 1
                if gauge is not None:
                    gauge.dec()
        chosen.in_flight += 1
        return chosen

    @staticmethod
    def _warn_at_ceiling(backends: list[Backend]) -> None:
        """Once: calls wait because the *configured* ceiling is reached (a 429-lowered limit logs on its own)."""
        full = [b for b in backends if not b.warned_full and b.in_flight >= b.ceiling]
        if len(full) < len(backends):
            return
        for b in full:
            b.warned_full = True
        log.warning("model calls wait for a slot: %s at model.max_concurrency (%d in flight each); raise it if the "
                    "server takes more at once (vLLM: --max-num-seqs), or add replicas",
                    ", ".join(b.label for b in backends), backends[0].ceiling,
                    extra={"backend": backends[0].label})

    def release(self, b: Backend, result: Result, cfg: ModelEndpoint) -> None:
        """Give the slot back and learn from how the call went."""
        b.in_flight -= 1
        b.since_decrease += 1
        if result == "ok":
            b.failures = 0
            b.down_until = 0.0
            b.limit = min(float(b.ceiling), b.limit + 1.0 / max(1.0, b.limit))
        elif result == "overloaded":
            if b.since_decrease >= int(b.limit):
                old = b.limit
                b.limit = max(1.0, b.limit / 2)
                b.since_decrease = 0
                log.warning("backend %s answered 429: concurrency limit %d -> %d", b.label, int(old),
                            int(b.limit), extra={"backend": b.label})
        elif result == "failed":
            b.failures += 1
            if b.failures >= cfg.failures_before_cooldown and not b.cooling(time.monotonic()):
                b.down_until = time.monotonic() + cfg.cooldown_s
                b.failures = 0
                log.warning("replica %s failed %d times in a row: cooling down for %gs", b.label,
                            cfg.failures_before_cooldown, cfg.cooldown_s, extra={"backend": b.label})
        self._publish(b)
        if self._waiting:
            # Wake every waiter once; those that still find no slot wait on the next event.
            self._freed.set()
            self._freed = asyncio.Event()

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per URL: in flight, limit, and whether it is cooling down (for tests and the admin API)."""
        now = time.monotonic()
        return {b.label: {"in_flight": b.in_flight, "limit": int(b.limit), "cooling": float(b.cooling(now))}
                for b in self._backends.values()}
