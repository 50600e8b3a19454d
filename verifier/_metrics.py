"""Prometheus metrics of one verifier server, on a registry of its own (tests pass a fresh one).

Besides requests and durations: the reward histogram, the loaded version (an info metric: one series, replaced on
reload), reloads by outcome, and whether the last reload failed. Labels come from a small fixed set: ``endpoint``
is verify / verify_batch / seed_session / close_session / tool / aggregate_metrics (never the tool name a client
typed, which is unbounded) and ``outcome`` is ``ok`` or the error kind (a fixed vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["VerifierMetrics"]


class VerifierMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "rollgate_verifier_requests_total",
            "Requests answered, by endpoint and outcome (ok or the error kind).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "rollgate_verifier_request_duration_seconds",
            "Time spent answering a request, body parsing included, by endpoint.",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.sessions = Gauge(
            "rollgate_verifier_sessions", "Sessions seeded and not yet closed.", registry=self.registry
        )
        self.rewards = Histogram(
            "rollgate_verifier_reward",
            "Rewards returned by verify.",
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=self.registry,
        )
        self.loaded = Info(
            "rollgate_verifier_loaded", "The verifier being served: name and version.", registry=self.registry
        )
        self.reloads = Counter(
            "rollgate_verifier_reloads_total", "Hot reloads, by outcome (ok or load_error).", ["outcome"],
            registry=self.registry,
        )
        self.load_error = Gauge(
            "rollgate_verifier_load_error", "1 while the last reload failed (the previous version serves).",
            registry=self.registry,
        )

        # ``labels()`` takes a lock and builds a key on each call; the children are looked up once per label set
        # (a small fixed set: endpoints by outcome kinds) and reused on every request.
        self._requests: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One answered request: its endpoint, its outcome (``ok`` or the error kind) and how long it took."""
        duration = self._durations.get(endpoint)
        if duration is None:
            duration = self._durations[endpoint] = self.duration.labels(endpoint)
        duration.observe(seconds)
        counter = self._requests.get((endpoint, outcome))
        if counter is None:
            counter = self._requests[(endpoint, outcome)] = self.requests.labels(endpoint, outcome)
        counter.inc()

    def reward(self, value: float) -> None:
        self.rewards.observe(value)

    def track_sessions(self, count: Callable[[], int]) -> None:
        """Read the open-session count at scrape time rather than setting the gauge on every request."""
        self.sessions.set_function(count)

    def show_loaded(self, name: str, version: str, load_error: str | None) -> None:
        self.loaded.info({"verifier": name, "version": version})
        self.load_error.set(0 if load_error is None else 1)
