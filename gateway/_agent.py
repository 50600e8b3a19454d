"""The gateway's core: runs one rollout for a named agent, knowing nothing of gRPC.

``GatewayCore.run_rollout`` never raises for a failed rollout (only ``CancelledError`` passes): every failure
is a ``RolloutOutcome`` with ``error`` set to (stage, kind, message, http_status, attempts) and no reward.

Tool loop (``kind: tool_calling``): call the model; run every ``function_call`` it asked for concurrently on
the resources server; append the calls and their ``function_call_output`` items; call again; stop at an answer
without calls. At ``max_steps`` model calls the trajectory is verified as it is and marked ``truncated``.
Design choice: a tool the server does not know (404) or that answers an error (e.g. 500) is **not** a rollout
failure: its output is ``{"error": "..."}`` so the model can react, as it would to any tool result. Only an
unreachable resources server fails the rollout (stage ``tool``).

Training mode (an agent's ``training: true``, see ``_training``): its backend is probed when routes are built (a
backend without token ids or ``/tokenize`` refuses the agent), each model call's last output item carries the
call's token ids and log-probs, and a call whose prompt ids do not extend the previous call's marks the rollout
(``response.metadata.rollgate_token_prefix_mismatch``); with ``model.token_prompts`` the calls after the first
continue the rollout's token ids on ``/v1/completions`` (``_token_prompts``). Without it none of this runs.

Re-verify, never regenerate: a request with ``prior_response_json`` (a resume's stored response of a rollout whose
verify failed) skips the model loop: the session is seeded, that response verified as it is (only the fields it
lacks filled, as for any response), and the session closed; the result carries it as the response (no model
attempts). Only where that is safe: a ``single_turn`` agent, a trajectory in which no tool ran, or a verifier that
said it needs no session. Tools that ran in the first run's session may have left state there that a stateful
server's ``/verify`` reads and a fresh session lacks, so such a rollout runs again from the start instead.

Only declared tools run: a call is sent to ``POST /<name>`` only when the request's ``tools`` declared a function
of that name, the name is a plain identifier (``[A-Za-z0-9_-]``, at most 64 characters, as OpenAI allows), and it is
not one of the server's protocol routes (``PROTOCOL_ROUTES``: ``seed_session``, ``verify``, ``close_session`` …).
Anything else (a hallucinated name, ``../x``, ``a?b``) never reaches the server: the model gets an
``unknown tool`` output, as for a 404, and the rollout goes on.

    async with GatewayCore(config) as core:
        outcome = await core.run_rollout(RolloutRequest.from_dicts("r1", "my_agent", task))
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Self

import orjson

from rollgate._backend_params import metadata_as_text, metadata_objects
from rollgate.gateway._backends import BackendPool
from rollgate.gateway._config import AgentConfig, GatewayConfig, parse_config
from rollgate.gateway._convert import input_items
from rollgate.gateway._http import HttpClient
from rollgate.gateway._logging import rollout_id_var
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway._model_client import ModelClient
from rollgate.gateway._outcome import RolloutErrorInfo, RolloutOutcome, RolloutRequest
from rollgate.gateway._resources import ResourcesSession, SessionHints, wait_detached_closes
from rollgate.gateway._response import complete_response, verifier_params
from rollgate.gateway._retry import RetryBudgets, RetryScope, retry_scope_var
from rollgate.gateway._tally import Tally
from rollgate.gateway._training import PrefixCheck, TrainingGate
from rollgate.gateway._verify_batch import VerifyBatches
from rollgate.gateway.errors import ConfigError, InputError, ModelError, RolloutFailure, UnknownAgentError

__all__ = ["PROTOCOL_ROUTES", "GatewayCore", "Route", "callable_tools"]

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


# The resources server's own routes (NeMo Gym's and rollgate's): never a tool, whatever the request declared.
PROTOCOL_ROUTES = frozenset({"seed_session", "verify", "close_session", "aggregate_metrics", "verify_batch",
                             "healthz", "readyz", "metrics", "docs", "redoc", "openapi.json"})
# A function name as OpenAI accepts it; nothing that could change the path (``/``, ``.``, ``?``, ``%``, ``#``).
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def callable_tools(tools: Any) -> frozenset[str]:
    """The names a rollout may call on the resources server: the functions its ``tools`` declared (Responses or
    Chat Completions shape), less any name that is not a plain identifier or is a protocol route."""
    names: set[str] = set()
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function")
        name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
        if isinstance(name, str) and _TOOL_NAME.fullmatch(name) and name not in PROTOCOL_ROUTES:
            names.add(name)
    return frozenset(names)


def _rescorable(agent: AgentConfig, prior: dict[str, Any], sessionless: bool) -> bool:
    """May a stored response be verified again, in a fresh session, as it stands? (See the module docstring.)"""
    if agent.kind == "single_turn" or sessionless:
        return True
    return not any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in prior["output"])


def _unanswered_calls(output: list[dict[str, Any]]) -> bool:
    """Does the trajectory end with function calls nobody answered (a tool loop cut at ``max_steps``)?"""
    answered = {i.get("call_id") for i in output if i.get("type") == "function_call_output"}
    return any(i.get("type") == "function_call" and i.get("call_id") not in answered for i in output)


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

    def __init__(self, outcome: RolloutOutcome, scope: RetryScope, training: bool = False) -> None:
        self.outcome = outcome
        self.training = training  # asked for by the request (the agent's own ``training`` is on its route)
        self.usage: dict[str, Any] = {}
        self.last: dict[str, Any] | None = None
        self.stage = "input"
        # The attempts of its latest call (model, tool or verifier), kept by the retry policy as they are made.
        self.scope = scope
        # Training mode: the token-exactness check across its model calls (created at its first training call).
        self.tokens: PrefixCheck | None = None
        # Its params' metadata extras (``_extras``), read once when the rollout starts.
        self.meta: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True, slots=True)
class Route:
    """An agent's route at one moment: a rollout keeps the route it started on, whatever swaps happen after."""

    name: str
    cfg: AgentConfig
    model: ModelClient
    verifier_token: str | None
    generation: int
    training: TrainingGate | None = None
    """A training agent's backend check (None when ``training`` is off)."""


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
        # Per agent and target: retries in flight against calls in flight (the retry budget); kept across swaps.
        self.retry_budgets = RetryBudgets(self.metrics)
        # What each verifier URL last said about sessions; kept across route swaps, like the backend pool.
        self.session_hints = SessionHints()
        self._routes: dict[str, Route] = {}
        self._generation = 0
        self._swap_lock = asyncio.Lock()
        self._tokens = itertools.count()
        # Rollouts running now (``wait_idle``).
        self.rollouts = Tally()
        self.draining = asyncio.Event()
        # Open Collect streams: a drain waits for them to end (each tells its client the gateway is shutting down
        # once its last result is out), not only for the rollouts, before the server cuts what is left.
        self.streams = Tally()

    @property
    def config(self) -> GatewayConfig:
        """The config in force now (hot-swaps included)."""
        return self._config

    async def start(self) -> None:
        self._http = HttpClient(limits=self._config.http)
        if os.environ.get("ROLLGATE_VERIFY_BATCH", "on").strip().lower() not in ("0", "off", "false", "no"):
            self.verify_batches = VerifyBatches(self._http, self.metrics)
        try:
            routes = self._build(self._config)
            await self._check_training(routes)
            self._routes = routes
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
            gate = None
            # Every chat agent may serve a training rollout (its own ``training`` or a run's ``+training=true``);
            # only a training agent is probed now. The same backend keeps its verdict across swaps.
            if cfg.model.api == "chat_completions":
                gate = old.training if old is not None and old.training is not None else None
                if gate is None or gate.key != TrainingGate(name, cfg).key:
                    gate = TrainingGate(name, cfg)
            routes[name] = Route(name, cfg, model, token, self._generation, gate)
        return routes

    async def _check_training(self, routes: dict[str, Route]) -> None:
        """Probe the training agents' backends; ``ConfigError`` with the reason when one cannot serve training."""
        gates = [(r.training, r.model.headers) for r in routes.values() if r.training is not None and r.cfg.training]
        if gates:
            await asyncio.gather(*(gate.check(self.http, headers) for gate, headers in gates))

    async def apply_config(self, config: GatewayConfig, source: str) -> None:
        """Swap every route to ``config``; rollouts in flight finish on their old route. ``ConfigError`` = refused."""
        async with self._swap_lock:
            try:
                routes = self._build(config)
                await self._check_training(routes)
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
            await wait_detached_closes(self._http)  # cancelled rollouts' /close_session calls (each bounded)
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

    @property
    def in_flight(self) -> int:
        """How many rollouts are running now."""
        return self.rollouts.count

    async def wait_idle(self) -> None:
        """Return once no rollout is in flight."""
        await self.rollouts.wait_zero()

    async def run_rollout(self, request: RolloutRequest) -> RolloutOutcome:
        """Run one rollout to its outcome; failures are returned, not raised."""
        start = time.perf_counter()
        ctx_token = rollout_id_var.set(request.rollout_id)
        route = self._routes.get(request.agent)  # the route this rollout keeps, whatever swaps come
        label = request.agent if route is not None else "unknown"
        run = _Run(RolloutOutcome(request.rollout_id), RetryScope(self.retry_budgets, label), request.training)
        scope_token = retry_scope_var.set(run.scope)
        out = run.outcome
        token = next(self._tokens)
        self.rollouts.enter()
        self.metrics.rollout_started(token, label)
        try:
            await self._run_outer(request, route, run)
        finally:
            out.timings.total_s = time.perf_counter() - start
            self.rollouts.leave()
            self.metrics.rollout_done(token, label, out)
            retry_scope_var.reset(scope_token)
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
                # The attempts of the call the deadline cut short (the model's, a tool's or the verifier's).
                attempts = run.scope.attempts or out.attempts
                raise RolloutFailure(f"rollout did not finish within its {deadline:g}s deadline "
                                     f"(it was in the {run.stage} stage, after {attempts} attempt(s) of its "
                                     f"latest call)",
                                     stage="rollout", kind="timeout", attempts=attempts) from None
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
            run.meta = metadata_objects(params)  # bad backend extras fail the rollout here, before a session opens
            params = metadata_as_text(params)
        except ValueError as exc:
            raise InputError(f"responses_create_params: {exc}", kind="invalid_request", attempts=0) from None
        out.params = params
        prior = self._prior_response(request, agent)
        # The task row as sent, with the effective params (the Responses API's fields of them): the /seed_session
        # body, and /verify's with the response (NeMo Gym's simple_agent sends the same two).
        row = {k: v for k, v in task.items() if k != "responses_create_params"}
        row["responses_create_params"] = verifier_params(params)
        resources = ResourcesSession(self.http, agent.verifier_url, agent, rollout_id=request.rollout_id,
                                     seed_body=row, metrics=self.metrics, token=route.verifier_token,
                                     hints=self.session_hints, batches=self.verify_batches)
        run.stage = "verify"
        t0 = time.perf_counter()
        # Only a tool-calling rollout that offers the model tools will call the server's tools.
        await resources.open(uses_tools=prior is None and agent.kind == "tool_calling" and bool(params.get("tools")))
        out.timings.verify_s += time.perf_counter() - t0
        try:
            if prior is None:
                await self._loop(route, params, conversation, resources, run)
                assert run.last is not None
                response = complete_response(run.last, params, output=out.output, usage=run.usage)
                if run.tokens is not None:
                    run.tokens.mark(response)
            else:  # re-verify the stored response: the model is not called
                out.output = [i for i in prior["output"] if isinstance(i, dict)]
                out.truncated = agent.kind == "tool_calling" and _unanswered_calls(out.output)
                usage = prior.get("usage")
                response = complete_response(prior, params, output=out.output,
                                             usage=usage if isinstance(usage, dict) else None)
            out.response = response
            out.model = str(response.get("model") or agent.model.name)
            body = {**row, "response": response}
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
            # Deadline passed or the client left: the session is still closed, but from a task of its own (short
            # timeout), so the close neither stretches the rollout nor is cancelled with it.
            resources.close_detached()
            raise
        except BaseException:
            await self._close(resources, out)
            raise
        await self._close(resources, out)

    def _prior_response(self, request: RolloutRequest, agent: AgentConfig) -> dict[str, Any] | None:
        """The stored response to re-verify, or None: none was sent, or re-scoring it would not be safe."""
        if not request.prior_response_json:
            return None
        prior = _parse_object(request.prior_response_json, "prior_response_json")
        if not isinstance(prior.get("output"), list):
            raise InputError("prior_response_json has no 'output' list", kind="invalid_request", attempts=0)
        if not _rescorable(agent, prior, self.session_hints.sessionless(agent.verifier_url.rstrip("/"))):
            log.info("the stored response ran tools in a session that a fresh one cannot reproduce: "
                     "running the rollout again instead of re-verifying it")
            return None
        return prior

    @staticmethod
    async def _close(resources: ResourcesSession, out: RolloutOutcome) -> None:
        t0 = time.perf_counter()
        try:
            await resources.close()
        except asyncio.CancelledError:
            resources.close_detached()  # cancelled mid-close: the session may still be open
            raise
        out.timings.verify_s += time.perf_counter() - t0

    async def _call_model(self, route: Route, params: dict[str, Any], run: _Run) -> dict[str, Any]:
        out = run.outcome
        run.stage = "model"
        # Model calls follow the agent's current model (its resources session stays the rollout's own): a new
        # checkpoint set mid-rollout serves the calls after it, as an in-place weight update would, and each call
        # records the version that served it.
        current = self._routes.get(route.name)
        if current is not None and current.generation != route.generation:
            route = current
            params = {**params, "model": current.cfg.model.name}
        out.policy_versions.append(route.cfg.model.version)
        t0 = time.perf_counter()
        training = route.cfg.training or run.training
        try:
            if training:
                if route.training is None:
                    raise ModelError(f"training mode needs the agent's model.api: chat_completions (agent "
                                     f"{route.name!r} has {route.cfg.model.api}): token ids come from vLLM's chat "
                                     f"completions", kind="invalid_request", attempts=0)
                await route.training.ensure(self.http, route.model.headers)
            response, attempts = await route.model.create(params, training=training,
                                                          tokens=run.tokens if training else None, meta=run.meta)
        except RolloutFailure as exc:
            out.attempts += exc.attempts
            raise
        except asyncio.CancelledError:  # the deadline (or the client) cut the call short: its attempts still count
            out.attempts += run.scope.attempts
            raise
        finally:
            out.timings.model_s += time.perf_counter() - t0
        out.attempts += attempts
        run.last = response
        if training:
            if run.tokens is None:
                run.tokens = PrefixCheck()
            run.tokens.observe(response)
        usage = response.get("usage")
        _sum_usage(run.usage, usage)
        if isinstance(usage, dict):
            self.metrics.usage(route.name, usage)
        return response

    async def _loop(self, route: Route, params: dict[str, Any],
                    conversation: list[dict[str, Any]], resources: ResourcesSession, run: _Run) -> None:
        out = run.outcome
        agent = route.cfg
        allowed = callable_tools(params.get("tools"))
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
                results = await _run_tools(resources, calls, allowed)
            finally:
                out.timings.tool_s += time.perf_counter() - t0
            out.output.extend(
                {"type": "function_call_output", "call_id": c.get("call_id"), "output": r}
                for c, r in zip(calls, results, strict=True)
            )
            response = await self._call_model(route, {**params, "input": conversation + out.output}, run)


def _unknown_tool(name: str, allowed: frozenset[str]) -> str:
    declared = ", ".join(sorted(allowed)) or "none"
    return orjson.dumps({"error": f"unknown tool {name!r} (the request declared: {declared})"}).decode()


async def _run_tools(resources: ResourcesSession, calls: list[dict[str, Any]], allowed: frozenset[str]) -> list[str]:
    """Run the calls concurrently; if one cannot reach the server, cancel the others and raise its failure.

    A call to a name outside ``allowed`` is answered here, as unknown, and never sent."""
    results: list[str] = []
    sent: dict[int, asyncio.Task[str]] = {}
    try:
        async with asyncio.TaskGroup() as tg:
            for i, call in enumerate(calls):
                name = call.get("name")
                if isinstance(name, str) and name in allowed:
                    sent[i] = tg.create_task(resources.call_tool(name, str(call.get("arguments") or "{}")))
                    results.append("")
                else:
                    results.append(_unknown_tool(str(name), allowed))
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    for i, task in sent.items():
        results[i] = task.result()
    return results
