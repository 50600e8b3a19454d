"""Model replicas: least-in-flight choice, cool-down after repeated failures, an adaptive concurrency limit.

State lives per base URL in one ``BackendPool`` for the whole gateway, so it survives a hot-swap that keeps the
URL, and two agents on the same server share its limit (the limit protects the *server*).

- Choice: among replicas not cooling down and below their limit, the one with the fewest calls in flight
  relative to its limit; the retry of a failed call prefers another replica.
- Cool-down: ``failures_before_cooldown`` consecutive connection errors/timeouts/5xx take a replica out for
  ``cooldown_s``; afterwards it is tried again and one success makes it healthy. When every replica is cooling
  down, the one back soonest is used anyway: retries and the rollout deadline decide, not the balancer.
- Limit (``AdaptiveLimit``, AIMD judged once per round of calls, like TCP's once per window): see its docstring.
  A call that finds every replica at its limit waits for a slot (``rollgate_gateway_model_requests_queued``).

    lease = await pool.acquire(["http://a/v1", "http://b/v1"], endpoint_cfg)
    try: ... finally: pool.release(lease, "ok", endpoint_cfg)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

from rollgate.gateway._config import ModelEndpoint
from rollgate.gateway._metrics import GatewayMetrics, safe_url

__all__ = ["AdaptiveLimit", "Backend", "BackendPool", "Lease", "LimitChange", "Result"]

log = logging.getLogger("rollgate.gateway.backends")
Result = Literal["ok", "overloaded", "failed", "neutral"]

BETA = 0.75
"""A load-related round of 429s multiplies the limit by this (TCP CUBIC uses 0.7)."""
MIN_ROUND = 32
"""Fewest calls in a round: fewer say too little about a 429 rate (at a low limit a round spans several
latencies)."""
SAME_SHARE = 0.75
"""429s "as common as before" once the limit is halved: at least this share of their rate at the start. A server
admitting K calls at a time refusing s of them at L refuses 2s - 1 at L/2: as common as that only for s >= 0.8,
and then still more than half the calls, so it is never mistaken for background."""
BACKGROUND_WEIGHT = 0.1
"""How fast the background (load-independent) 429 rate follows the rounds judged not overloaded."""


@dataclass(slots=True)
class _Round:
    """The calls numbered from ``start`` that started while it was open, and how they ended."""

    start: int
    cap: int  # it closes after this many calls even when none was answered
    size: int = 0
    closed: bool = False
    returned: int = 0
    ok: int = 0
    overloaded: int = 0
    peak: int = 0  # most calls in flight (any round's) at a start while this round was open

    def __contains__(self, seq: int) -> bool:
        return self.start <= seq < self.start + self.size


@dataclass(slots=True)
class _Chain:
    """Decreases made in consecutive rounds: the limit before them, the level and 429 share that began them."""

    before: float
    level: float
    share: float


@dataclass(frozen=True, slots=True)
class LimitChange:
    """What a round changed: ``decreased`` (its 429s look load-related) or ``restored`` (they came at the same
    rate whatever the limit: not load-related, so the limit goes back and their rate is the background)."""

    kind: Literal["decreased", "restored"]
    old: float
    new: float
    overloaded_share: float


class AdaptiveLimit:
    """One server's concurrency limit: multiplicative decrease at most once per round trip, additive increase.

    Calls are numbered as they start; no clock. A *round* is the calls that start from the last judgement until
    one of them is answered (about one latency: TCP's window; at least ``MIN_ROUND`` calls), or until the
    limit's worth started with none answered; it is judged once all of its calls have returned. So 429s from
    calls that started before a decrease never count against the lowered limit, however fast they come back.

    - Decrease: a round whose share of 429s is above the background rate by more than noise (three standard
      deviations) takes the limit to ``BETA`` x the lower of the limit and the calls in flight (TCP's flight
      size), never below ``floor``.
    - A server that admits K calls at a time refuses fewer calls as the limit comes down, and none below K. If
      decreases in a row have halved the limit and 429s still come, under half of the calls and about as
      common as at first (``SAME_SHARE``), they are not caused by our load (a rate limiter, overload from
      elsewhere): the limit goes back to where the decreases began and their rate becomes the *background*
      that later rounds are judged against. A server refusing most calls gets less load either way.
    - Increase: while the calls in flight reach the limit (this round or the last), each success adds
      ``1/limit`` (about +1 per round), up to ``ceiling``; a limit that is not reached does not grow, nor one
      in a run of decreases while the current round has 429s (growth would hold it up against them).

        limit = AdaptiveLimit(ceiling=256)
        seq = limit.issue(in_flight=1); change = limit.done(seq, "overloaded")
    """

    def __init__(self, ceiling: int, floor: int = 1) -> None:
        self.ceiling = ceiling
        self.floor = max(1, min(floor, ceiling))
        self.limit = float(ceiling)
        self.background = 0.0
        self._seq = 0
        self._round = _Round(0, max(MIN_ROUND, ceiling))
        self._chain: _Chain | None = None
        self._last_peak = 0  # the last judged round's peak

    def set_bounds(self, ceiling: int, floor: int) -> None:
        """A hot-swap changed ``max_concurrency`` or ``min_concurrency``."""
        self.ceiling = ceiling
        self.floor = max(1, min(floor, ceiling))
        self.limit = min(max(self.limit, float(self.floor)), float(ceiling))

    def slots(self) -> int:
        return max(1, int(self.limit))

    def issue(self, in_flight: int) -> int:
        """A call starts, ``in_flight`` calls (itself included) now in flight: its number, for ``done``."""
        seq = self._seq
        self._seq += 1
        r = self._round
        if not r.closed:
            r.size += 1
            r.closed = r.size >= r.cap
        if in_flight > r.peak:
            r.peak = in_flight
        return seq

    def done(self, seq: int, result: Result) -> LimitChange | None:
        """Call ``seq`` ended with ``result``: the change to the limit, if this completed a round."""
        r = self._round
        if (result == "ok" and (self._chain is None or not r.overloaded)
                and max(r.peak, self._last_peak) >= self.slots()):
            self.limit = min(float(self.ceiling), self.limit + 1.0 / max(1.0, self.limit))
        if seq not in r:
            return None
        r.returned += 1
        if result == "ok":
            r.ok += 1
            r.closed = r.closed or r.size >= MIN_ROUND
        elif result == "overloaded":
            r.overloaded += 1
        if not r.closed or r.returned < r.size:
            return None
        change = self._judge(r)
        self._last_peak = r.peak
        self._round = _Round(self._seq, max(MIN_ROUND, self.slots()))
        return change

    def _judge(self, r: _Round) -> LimitChange | None:
        answered = r.ok + r.overloaded
        if answered == 0:
            return None  # only failures and cancellations: nothing said about load
        share = r.overloaded / answered
        noise = 3 * math.sqrt(self.background * (1 - self.background) / answered)
        if not (r.overloaded and share > self.background + noise):
            self._chain = None
            self.background += BACKGROUND_WEIGHT * (share - self.background)
            return None
        chain = self._chain
        if (chain is not None and self.limit <= chain.level / 2 and share < 0.5
                and share >= SAME_SHARE * chain.share):
            old = self.limit
            self.limit = max(self.limit, min(chain.before, float(self.ceiling)))
            self.background = (chain.share + share) / 2
            self._chain = None
            return LimitChange("restored", old, self.limit, share)
        old = self.limit
        base = min(self.limit, float(r.peak)) if r.peak else self.limit
        self.limit = max(float(self.floor), base * BETA)
        if self.limit >= old:
            return None
        if chain is None:
            self._chain = _Chain(old, base, share)
        return LimitChange("decreased", old, self.limit, share)


@dataclass(slots=True)
class Backend:
    """One base URL's live state."""

    url: str
    label: str
    aimd: AdaptiveLimit
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    warned_full: bool = False
    logged_change_at: float = -math.inf  # the last limit change logged as a warning

    @property
    def ceiling(self) -> int:
        return self.aimd.ceiling

    @property
    def limit(self) -> float:
        return self.aimd.limit

    def cooling(self, now: float) -> bool:
        return now < self.down_until

    def has_slot(self) -> bool:
        return self.in_flight < self.aimd.slots()


@dataclass(frozen=True, slots=True)
class Lease:
    """One call's slot on a backend: give it back with ``BackendPool.release``."""

    backend: Backend
    seq: int

    @property
    def url(self) -> str:
        return self.backend.url


class BackendPool:
    """Every model base URL the gateway talks to."""

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self._backends: dict[str, Backend] = {}
        self._metrics = metrics
        self._freed = asyncio.Event()
        self._waiting = 0

    def backend(self, url: str, cfg: ModelEndpoint) -> Backend:
        b = self._backends.get(url)
        floor = cfg.min_concurrency
        if b is None:
            b = Backend(url, safe_url(url), AdaptiveLimit(cfg.max_concurrency, floor))
            self._backends[url] = b
            self._publish(b)
        elif b.aimd.ceiling != cfg.max_concurrency or b.aimd.floor != max(1, min(floor, cfg.max_concurrency)):
            b.aimd.set_bounds(cfg.max_concurrency, floor)  # a hot-swap changed the bounds
            b.warned_full = False
            self._publish(b)
        return b

    def _publish(self, b: Backend) -> None:
        if self._metrics is not None:
            m = self._metrics
            m.child(m.concurrency_limit, b.label).set(b.aimd.slots())
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

    async def acquire(self, urls: list[str], cfg: ModelEndpoint, avoid: str | None = None) -> Lease:
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
        return Lease(chosen, chosen.aimd.issue(chosen.in_flight))

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

    def release(self, lease: Lease, result: Result, cfg: ModelEndpoint) -> None:
        """Give the slot back and learn from how the call went."""
        b = lease.backend
        b.in_flight -= 1
        if result == "ok":
            b.failures = 0
            b.down_until = 0.0
        elif result == "failed":
            b.failures += 1
            if b.failures >= cfg.failures_before_cooldown and not b.cooling(time.monotonic()):
                b.down_until = time.monotonic() + cfg.cooldown_s
                b.failures = 0
                log.warning("replica %s failed %d times in a row: cooling down for %gs", b.label,
                            cfg.failures_before_cooldown, cfg.cooldown_s, extra={"backend": b.label})
        change = b.aimd.done(lease.seq, result)
        if change is not None:
            self._log_change(b, change)
        self._publish(b)
        if self._waiting:
            # Wake every waiter once; those that still find no slot wait on the next event.
            self._freed.set()
            self._freed = asyncio.Event()

    @staticmethod
    def _log_change(b: Backend, change: LimitChange) -> None:
        # A limit settling near a server's capacity changes every few seconds: a warning a minute, the rest info.
        now = time.monotonic()
        level = logging.WARNING if now - b.logged_change_at >= 60.0 else logging.INFO
        if level == logging.WARNING:
            b.logged_change_at = now
        pct = round(100 * change.overloaded_share)
        if change.kind == "decreased":
            log.log(level, "backend %s answered 429 to %d%% of a round of calls: concurrency limit %d -> %d", b.label,
                    pct, int(change.old), int(change.new), extra={"backend": b.label})
        else:
            log.log(level, "backend %s: 429s (%d%% of calls) did not fall as the limit was lowered, so they are not "
                    "load-related: concurrency limit back to %d", b.label, pct, int(change.new),
                    extra={"backend": b.label})

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per URL: in flight, limit, and whether it is cooling down (for tests and the admin API)."""
        now = time.monotonic()
        return {b.label: {"in_flight": b.in_flight, "limit": int(b.limit), "cooling": float(b.cooling(now)),
                          "background_429": round(b.aimd.background, 3)}
                for b in self._backends.values()}
