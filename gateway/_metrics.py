"""The gateway's Prometheus metrics, in one registry that a test can make fresh.

Names carry their unit (``_seconds``, ``_total``); label values come from fixed sets only: agent names from the
config (``unknown`` for a request naming none), the DESIGN stage/kind vocabulary (``other`` for anything else),
retry causes, token directions, and backend URLs from the config. Never a rollout or task id.

    metrics = GatewayMetrics(registry=CollectorRegistry())
    metrics.rollout_started(token, "my_agent")
    metrics.rollout_done(token, "my_agent", outcome)
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rollgate.gateway._outcome import RolloutOutcome

__all__ = ["GatewayMetrics", "safe_url"]

STAGES = frozenset({"input", "model", "tool", "verify", "gateway", "rollout"})
KINDS = frozenset({"timeout", "http_error", "connection", "invalid_response", "invalid_request", "unknown_agent",
                   "exception", "cancelled"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_REWARD_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def safe_url(url: str) -> str:
    """A URL without user:password, query or fragment: safe for a label or a log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "invalid-url"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class GatewayMetrics:
    """Every series the gateway exports; ``registry=None`` makes a private registry.

        metrics = GatewayMetrics(registry=CollectorRegistry())
        async with GatewayCore(cfg, metrics=metrics) as core: ...
        metrics.exposition()  # Prometheus text format, as /metrics serves it
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rollouts = Counter("rollgate_gateway_rollouts", "Rollouts finished, by agent and status (ok/failed).",
                                ["agent", "status"], registry=r)
        self.failures = Counter("rollgate_gateway_rollout_failures", "Failed rollouts by agent, stage and kind.",
                                ["agent", "stage", "kind"], registry=r)
        self.stage_seconds = Histogram("rollgate_gateway_stage_duration_seconds",
                                       "Seconds per rollout spent in each stage (model, tool, verify, total).",
                                       ["agent", "stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("rollgate_gateway_rollouts_in_flight", "Rollouts running now.", ["agent"],
                               registry=r)
        self.waiting = Gauge("rollgate_gateway_rollouts_waiting",
                             "Rollouts a collector sent ahead, waiting for a slot of their stream (max_running).",
                             registry=r)
        self.queued = Gauge("rollgate_gateway_model_requests_queued",
                            "Model calls waiting for a backend concurrency slot.", ["backend"], registry=r)
        self.retries = Counter("rollgate_gateway_retries", "Retried calls by target (model/verifier/tool) and cause.",
                               ["target", "cause"], registry=r)
        self.retry_budget_exhausted = Counter(
            "rollgate_gateway_retry_budget_exhausted",
            "Retries held back (waiting for room, within retries.budget_s) because the target's retry budget was "
            "spent, by agent and target.",
            ["agent", "target"], registry=r)
        self.retries_in_flight = Gauge("rollgate_gateway_retries_in_flight",
                                       "Retried calls on the wire now, by agent and target.", ["agent", "target"],
                                       registry=r)
        self.tokens = Counter("rollgate_gateway_model_tokens", "Model tokens by agent and direction (input/output).",
                              ["agent", "direction"], registry=r)
        self.reward = Histogram("rollgate_gateway_reward", "Rewards of successful rollouts.", ["agent"],
                                buckets=_REWARD_BUCKETS, registry=r)
        self.replica_healthy = Gauge("rollgate_gateway_replica_healthy",
                                     "1 while a model replica takes requests, 0 during its cool-down.",
                                     ["backend"], registry=r)
        self.concurrency_limit = Gauge("rollgate_gateway_backend_concurrency_limit",
                                       "Current AIMD concurrency limit per model backend.", ["backend"], registry=r)
        self.route_changes = Counter("rollgate_gateway_route_changes", "Routing changes applied, by source.",
                                     ["source"], registry=r)
        self.route_rejections = Counter("rollgate_gateway_route_rejections",
                                        "Routing changes refused as invalid, by source.", ["source"], registry=r)
        self.verify_batch_size = Histogram(
            "rollgate_gateway_verify_batch_size",
            "Rollouts per /verify request to a batching verifier (1: sent alone to /verify).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self._started: dict[int, float] = {}
        # labels() takes a lock and builds a key per call (a dozen calls per rollout); the label sets are few and
        # fixed (agents from the config, stages, kinds), so each child is looked up once and kept.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        oldest = Gauge("rollgate_gateway_oldest_rollout_age_seconds",
                       "Age of the oldest rollout in flight (0 when none).", registry=r)
        oldest.set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        if not self._started:
            return 0.0
        return max(0.0, time.monotonic() - min(self._started.values()))

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once and kept (for the series updated on every rollout)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def rollout_started(self, token: int, agent: str) -> None:
        self._started[token] = time.monotonic()
        self.child(self.in_flight, agent).inc()

    def rollout_done(self, token: int, agent: str, out: RolloutOutcome) -> None:
        self._started.pop(token, None)
        self.child(self.in_flight, agent).dec()
        if out.error is None:
            self.child(self.rollouts, agent, "ok").inc()
            if out.reward is not None:
                self.child(self.reward, agent).observe(out.reward)
        else:
            self.child(self.rollouts, agent, "failed").inc()
            stage = out.error.stage if out.error.stage in STAGES else "other"
            kind = out.error.kind if out.error.kind in KINDS else "other"
            self.child(self.failures, agent, stage, kind).inc()
        t = out.timings
        for stage, seconds in (("model", t.model_s), ("tool", t.tool_s), ("verify", t.verify_s),
                               ("total", t.total_s)):
            self.child(self.stage_seconds, agent, stage).observe(seconds)

    def usage(self, agent: str, usage: dict[str, Any]) -> None:
        for key, direction in (("input_tokens", "input"), ("output_tokens", "output")):
            value = usage.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                self.child(self.tokens, agent, direction).inc(value)

    def retry(self, target: str, cause: str) -> None:
        self.child(self.retries, target, cause).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
