"""The gateway's core: runs one rollout for a named agent, knowing nothing of gRPC.

``GatewayCore.run_rollout`` never raises for a failed rollout (only ``CancelledError`` passes): every failure
is a ``RolloutOutcome`` with ``error`` set to (stage, kind, message, http_status, attempts) and no reward.

Tool loop (``kind: tool_calling``): call the model; run every ``function_call`` it asked for concurrently on
the resources server; append the calls and their ``function_call_output`` items; call again; stop at an answer
without calls. At ``max_steps`` model calls the trajectory is verified as it is and marked ``truncated``.
Design choice: a tool the server does not know (404) or that answers an error (e.g. 500) is **not** a rollout
failure: its output is ``{"error": "..."}`` so the model can react, as it would to any tool result. Only an
unreachable resources server fails the rollout (stage ``tool``).

    async with GatewayCore(config) as core:
        outcome = await core.run_rollout(RolloutRequest.from_dicts("r1", "my_agent", task))
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Self

import orjson

from rollgate.gateway._backends import BackendPool
from rollgate.gateway._config import AgentConfig, GatewayConfig, parse_config
from rollgate.gateway._convert import input_items
from rollgate.gateway._http import HttpClient
from rollgate.gateway._logging import rollout_id_var
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway._model_client import ModelClient
from rollgate.gateway._outcome import RolloutErrorInfo, RolloutOutcome, RolloutRequest
from rollgate.gateway._resources import ResourcesSession, SessionHints
from rollgate.gateway._verify_batch import VerifyBatches
from rollgate.gateway.errors import ConfigError, InputError, RolloutFailure, UnknownAgentError

__all__ = ["GatewayCore", "Route"]

log = logging.getLogger("rollgate.gateway.agent")


def _sum_usage(total: dict[str, Any], usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            _sum_usage(total.setdefault(key, {}), value)


def _parse_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}", kind="invalid_request", attempts=0) from None
    if not isinstance(data, dict):
        raise InputError(f"{what} must be a JSON object, got {type(data).__name__}", kind="invalid_request",
                         attempts=0)
    return data


class _Run:
    """The mutable state of one rollout while it runs."""

    def __init__(self, outcome: RolloutOutcome) -> None:
        self.outcome = outcome
        self.usage: dict[str, Any] = {}
        self.last: dict[str, Any] | None = None
        self.stage = "input"


@dataclass(frozen=True, slots=True)
class Route:
    """An agent's route at one moment: a rollout keeps the route it started on, whatever swaps happen after."""

    name: str
    cfg: AgentConfig
    model: ModelClient
    verifier_token: str | None
    generation: int


def _env_secret(env: str | None, key: str) -> str | None:
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"{key}: environment variable {env} is not set")
    return value


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class GatewayCore:
    """All agents of one gateway over one shared HTTP client (an async context manager).

    Routing is hot-swappable (``apply_config``, ``set_route``): each rollout takes the current route when it
    starts and keeps it to the end. ``begin_drain`` stops new work for a graceful shutdown.

        async with GatewayCore(load_config("agents.yaml")) as core:
            outcome = await core.run_rollout(RolloutRequest.from_dicts("r1", "my_agent", task))
            await core.set_route("my_agent", {"model": {"name": "other-model"}})
    """

    def __init__(self, config: GatewayConfig, *, metrics: GatewayMetrics | None = None) -> None:
        self._config = config
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self._http: HttpClient | None = None
        # /verify of sessionless rollouts in batches (rollgate verifiers); ROLLGATE_VERIFY_BATCH=off sends each alone.
        self.verify_batches: VerifyBatches | None = None
        self._pool = BackendPool(self.metrics)
        # What each verifier URL last said about sessions; kept across route swaps, like the backend pool.
        self.session_hints = SessionHints()
        self._routes: dict[str, Route] = {}
        self._generation = 0
        self._swap_lock = asyncio.Lock()
        self._tokens = itertools.count()
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = asyncio.Event()

    @property
    def config(self) -> GatewayConfig:
        """The config in force now (hot-swaps included)."""
        return self._config

    async def start(self) -> None:
        self._http = HttpClient()
        if os.environ.get("ROLLGATE_VERIFY_BATCH", "on").strip().lower() not in ("0", "off", "false", "no"):
            self.verify_batches = VerifyBatches(self._http, self.metrics)
        try:
            self._routes = self._build(self._config)
        except BaseException:
            await self.aclose()
            raise

    def _build(self, config: GatewayConfig) -> dict[str, Route]:
        """Routes for ``config``; raises ``ConfigError`` (e.g. a secret's env var is unset) and changes nothing."""
        self._generation += 1
        routes = {}
        for name, cfg in config.agents.items():
            old = self._routes.get(name)
            warned = old.model.warned if old is not None else None
            model = ModelClient(name, cfg, self.http, self._pool, self.metrics, warned)
            token = _env_secret(cfg.verifier_token_env, f"agents.{name}.verifier_token_env")
            routes[name] = Route(name, cfg, model, token, self._generation)
        return routes

    async def apply_config(self, config: GatewayConfig, source: str) -> None:
        """Swap every route to ``config``; rollouts in flight finish on their old route. ``ConfigError`` = refused."""
        async with self._swap_lock:
            try:
                routes = self._build(config)
            except ConfigError:
                self.metrics.route_rejections.labels(source).inc()
                raise
            self._routes = routes
            self._config = config
        self.metrics.route_changes.labels(source).inc()
        log.info("routes updated from %s: agents %s", source, ", ".join(sorted(config.agents)),
                 extra={"source": source})

    async def set_route(self, agent: str, patch: dict[str, Any], source: str = "admin") -> AgentConfig:
        """Replace fields of one agent's config (nested keys merged); the new config is validated as a whole."""
        current = self._config.agents.get(agent)
        if current is None:
            served = ", ".join(sorted(self._config.agents))
            raise UnknownAgentError(f"unknown agent {agent!r}; this gateway serves: {served}",
                                    kind="unknown_agent", attempts=0)
        merged = _deep_merge(current.model_dump(), patch)
        data = self._config.model_dump()
        data["agents"][agent] = merged
        try:
            config = parse_config(data, f"route for agent {agent!r}")
        except ConfigError:
            self.metrics.route_rejections.labels(source).inc()
            raise
        await self.apply_config(config, source)
        return config.agents[agent]

    async def aclose(self) -> None:
        if self.verify_batches is not None:
            await self.verify_batches.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def http(self) -> HttpClient:
        if self._http is None:
            raise RuntimeError("GatewayCore is not started; use 'async with GatewayCore(config)'")
        return self._http

    @property
    def pool(self) -> BackendPool:
        return self._pool

    def begin_drain(self) -> None:
        """Stop taking new rollouts (streams finish what they started); see ``wait_idle``."""
        self.draining.set()

    async def wait_idle(self) -> None:
        """Return once no rollout is in flight."""
        await self._idle.wait()

    async def run_rollout(self, request: RolloutRequest) -> RolloutOutcome:
        """Run one rollout to its outcome; failures are returned, not raised."""
        start = time.perf_counter()
        ctx_token = rollout_id_var.set(request.rollout_id)
        run = _Run(RolloutOutcome(request.rollout_id))
        out = run.outcome
        route = self._routes.get(request.agent)  # the route this rollout keeps, whatever swaps come
        label = request.agent if route is not None else "unknown"
        token = next(self._tokens)
        self.in_flight += 1
        self._idle.clear()
        self.metrics.rollout_started(token, label)
        try:
            await self._run_outer(request, route, run)
        finally:
            out.timings.total_s = time.perf_counter() - start
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            self.metrics.rollout_done(token, label, out)
            rollout_id_var.reset(ctx_token)
        return out

    async def _run_outer(self, request: RolloutRequest, route: Route | None, run: _Run) -> None:
        out = run.outcome
        try:
            if route is None:
                raise UnknownAgentError(
                    f"unknown agent {request.agent!r}; this gateway serves: {', '.join(sorted(self._routes))}",
                    kind="unknown_agent", attempts=0)
            agent = route.cfg
            out.model = agent.model.name
            deadline = request.deadline_s if request.deadline_s > 0 else agent.timeouts.rollout_s
            try:
                async with asyncio.timeout(deadline):
                    await self._run(request, route, run)
            except TimeoutError:
                raise RolloutFailure(f"rollout did not finish within its {deadline:g}s deadline "
                                     f"(it was in the {run.stage} stage)",
                                     stage="rollout", kind="timeout", attempts=out.attempts) from None
        except RolloutFailure as exc:
            out.error = RolloutErrorInfo(exc.stage, exc.kind, exc.message, exc.http_status, exc.attempts)
        except Exception as exc:  # a bug or an unforeseen library error: still one failed rollout, not a crash
            log.error("unexpected error in rollout", exc_info=exc)
            out.error = RolloutErrorInfo("gateway", "exception", f"internal error ({type(exc).__name__})")
        if out.error is not None:
            out.reward = None
            out.verifier_fields = {}
            log.info("rollout failed: %s", out.error.message, extra={
                "agent": request.agent, "stage": out.error.stage, "kind": out.error.kind,
                "http_status": out.error.http_status, "attempts": out.error.attempts})

    async def _run(self, request: RolloutRequest, route: Route, run: _Run) -> None:
        out = run.outcome
        agent = route.cfg
        task = _parse_object(request.task_json, "task_json")
        if request.params_json:
            params = _parse_object(request.params_json, "params_json")
        else:
            rcp = task.get("responses_create_params", {})
            params = rcp if isinstance(rcp, dict) else {}
        params = {**agent.default_params, **params, "model": agent.model.name}
        try:
            conversation = input_items(params.get("input"))
        except ValueError as exc:
            raise InputError(f"responses_create_params: {exc}", kind="invalid_request", attempts=0) from None
        out.params = params
        resources = ResourcesSession(self.http, agent.verifier_url, agent, metrics=self.metrics,
                                     token=route.verifier_token, hints=self.session_hints,
                                     batches=self.verify_batches)
        run.stage = "verify"
        t0 = time.perf_counter()
        # Only a tool-calling rollout that offers the model tools will call the server's tools.
        await resources.open(uses_tools=agent.kind == "tool_calling" and bool(params.get("tools")))
        out.timings.verify_s += time.perf_counter() - t0
        try:
            await self._loop(route, params, conversation, resources, run)
            assert run.last is not None
            response = {**run.last, "output": out.output, "usage": run.usage}
            out.response = response
            out.model = str(response.get("model") or agent.model.name)
            body = {k: v for k, v in task.items() if k != "responses_create_params"}
            body["responses_create_params"] = params
            body["response"] = response
            run.stage = "verify"
            t0 = time.perf_counter()
            try:
                verdict, _ = await resources.verify(body)
            finally:
                out.timings.verify_s += time.perf_counter() - t0
            out.reward = verdict.reward
            out.verifier_fields = verdict.fields
            out.verifier_version = verdict.version
        except asyncio.CancelledError:
            # Deadline passed or the client left: no best-effort call may stretch the rollout further.
            raise
        except BaseException:
            await self._close(resources, out)
            raise
        await self._close(resources, out)

    @staticmethod
    async def _close(resources: ResourcesSession, out: RolloutOutcome) -> None:
        t0 = time.perf_counter()
        await resources.close()
        out.timings.verify_s += time.perf_counter() - t0

    async def _call_model(self, route: Route, params: dict[str, Any], run: _Run) -> dict[str, Any]:
        out = run.outcome
        run.stage = "model"
        t0 = time.perf_counter()
        try:
            response, attempts = await route.model.create(params)
        except RolloutFailure as exc:
            out.attempts += exc.attempts
            raise
        finally:
            out.timings.model_s += time.perf_counter() - t0
        out.attempts += attempts
        run.last = response
        usage = response.get("usage")
        _sum_usage(run.usage, usage)
        if isinstance(usage, dict):
            self.metrics.usage(route.name, usage)
        return response

    async def _loop(self, route: Route, params: dict[str, Any],
                    conversation: list[dict[str, Any]], resources: ResourcesSession, run: _Run) -> None:
        out = run.outcome
        agent = route.cfg
        response = await self._call_model(route, params, run)
        for step in range(1, agent.max_steps + 1):
            items = [i for i in response["output"] if isinstance(i, dict)]
            out.output.extend(items)
            calls = [i for i in items if i.get("type") == "function_call"]
            if agent.kind == "single_turn" or not calls:
                return
            if step == agent.max_steps:
                # The model still wants tools but has no calls left: verify what there is, flagged.
                out.truncated = True
                return
            run.stage = "tool"
            t0 = time.perf_counter()
            try:
                results = await _run_tools(resources, calls)
            finally:
                out.timings.tool_s += time.perf_counter() - t0
            out.output.extend(
                {"type": "function_call_output", "call_id": c.get("call_id"), "output": r}
                for c, r in zip(calls, results, strict=True)
            )
            response = await self._call_model(route, {**params, "input": conversation + out.output}, run)


async def _run_tools(resources: ResourcesSession, calls: list[dict[str, Any]]) -> list[str]:
    """Run the calls concurrently; if one cannot reach the server, cancel the others and raise its failure."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(resources.call_tool(str(c.get("name")), str(c.get("arguments") or "{}")))
                     for c in calls]
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]
