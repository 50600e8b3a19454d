"""The gateway config: agents by name, each with its model endpoint, verifier and budgets.

Validated once at start-up; a bad value fails before any work starts, naming the file and the key.

    cfg = load_config("agents.yaml")
    cfg.agents["my_agent"].model.base_urls  # ['http://127.0.0.1:8000/v1']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rollgate.gateway.errors import ConfigError

__all__ = ["AgentConfig", "GatewayConfig", "HttpLimits", "ModelEndpoint", "RetryConfig", "Timeouts", "config_files",
           "load_config", "parse_config"]


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class ModelEndpoint(_Strict):
    """Where an agent's model lives and how to talk to it.

        model = ModelEndpoint(base_urls=["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"],
                              name="Qwen/Qwen3-8B", api="chat_completions")
    """

    base_urls: list[str] = Field(min_length=1)
    """OpenAI-style base URLs including ``/v1``; several are replicas, used in turn."""
    name: str = Field(min_length=1)
    """The ``model`` field sent to the backend."""
    api: Literal["responses", "chat_completions"] = "chat_completions"
    """``responses`` posts to ``/responses``; ``chat_completions`` converts to ``/chat/completions`` and back."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself); sent as a Bearer token."""
    max_concurrency: int = Field(default=256, ge=1)
    """Ceiling of the in-flight calls per base URL; the live limit falls on load-related 429s, climbs on success."""
    min_concurrency: int = Field(default=1, ge=1)
    """Floor of the live limit: 429s never take it below this (capped at ``max_concurrency``)."""
    failures_before_cooldown: int = Field(default=3, ge=1)
    """Consecutive connection errors/timeouts/5xx after which a replica sits out a cool-down."""
    cooldown_s: float = Field(default=10.0, ge=0)
    """How long a failing replica is left out before it is tried again."""
    version: str | None = Field(default=None, min_length=1)
    """The policy version this model serves (a checkpoint name, e.g. ``iter_002``): recorded on every model call
    it serves (the row's ``_rollout.policy_versions``). Change it with the checkpoint, by config reload or
    ``rollgate gateway set AGENT +model.version=iter_003``: model calls made after the change record the new one."""
    token_prompts: bool = False
    """Training mode only (``api: chat_completions``, vLLM): every model call after a rollout's first is sent to
    ``/v1/completions`` with a token-id prompt, the previous call's prompt and generated ids followed by the new
    turns' tokens from the backend's own ``/tokenize`` and chat template, so the trajectory stays token-exact where
    re-rendering the chat would not (non-canonical sampled tokens, a template that rewrites history). Where that
    prompt cannot be built exactly the call goes to the chat path and is checked as usual (see ``_token_prompts``)."""
    reasoning_parser: Literal["think"] | None = None
    """How the model marks its reasoning in its text, split off by the gateway on the ``token_prompts`` path (a
    completions answer is raw text; on the chat path vLLM's own ``--reasoning-parser`` does it): ``think``
    (``<think>…</think>``, Qwen3, DeepSeek-R1). The reasoning becomes a reasoning item, as on the chat path, and
    tool calls are parsed from the text after it only. Set it when vLLM runs with a reasoning parser."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Fields merged into every request body sent to this model, as NeMo Gym's ``extra_body``: vLLM/SGLang knobs
    such as ``top_k``, ``min_p``, ``repetition_penalty``. A row's ``responses_create_params.metadata.extra_body``
    (JSON text, as NeMo Gym rows carry it) adds to them per request; the request's own fields win over both."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to the backend's chat template on every call (``{"enable_thinking": false}``); the request's own
    ``chat_template_kwargs`` and its ``metadata.chat_template_kwargs`` override them key by key, in that order."""
    tool_call_format: Literal["smollm2", "hermes"] | None = None
    """How the model writes tool calls in its text, parsed by the gateway on the ``token_prompts`` path (a
    completions answer is raw text): ``smollm2`` (``<tool_call>[{"name": …, "arguments": {…}}]</tool_call>``) or
    ``hermes`` (Hermes/Qwen: ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` per call). Required with
    ``token_prompts`` for a ``tool_calling`` agent."""


class Timeouts(_Strict):
    """Per-call timeouts and the whole-rollout deadline, in seconds.

        timeouts = Timeouts(model_s=120, rollout_s=600)  # tool_s and verify_s keep their 60 s defaults
    """

    model_s: float = Field(default=600.0, gt=0)
    """One model call (one attempt)."""
    tool_s: float = Field(default=60.0, gt=0)
    """One tool call on the resources server."""
    verify_s: float = Field(default=60.0, gt=0)
    """One ``/seed_session``, ``/verify`` or ``/close_session`` call."""
    rollout_s: float = Field(default=1800.0, gt=0)
    """The whole rollout, when the request carries no deadline of its own."""


class RetryConfig(_Strict):
    """How transient failures are retried (connection errors, timeouts, 408, 429, 5xx); see ``_retry``.

    Outages and overload (connection failures, 429, 502, 503, 529) are retried until ``budget_s`` is spent; other
    transient failures (timeouts, 408, 500, 504 …) at most ``attempts`` times. Retries to one target stay within
    the retry budget (``retry_budget_percent`` of the calls in flight, at least ``min_retry_concurrency``).

        retries = RetryConfig(budget_s=300, initial_wait_s=1.0)  # ride out a 5-minute outage; waits 1, 2, 4 … 10 s
    """

    budget_s: float = Field(default=120.0, ge=0)
    """Per call: seconds from its first attempt after which an outage or overload (connection failure, 429, 502,
    503, 529) is no longer retried; a wait that would end past it is not started (0 = never retry those)."""
    attempts: int = Field(default=3, ge=1, le=100)
    """Per call: attempts at most that fail with a timeout, 408 or another 5xx (500, 504 …); 1 = no retry of those.
    Outage and overload answers do not count here: ``budget_s`` bounds them."""
    initial_wait_s: float = Field(default=0.5, ge=0)
    """Wait before the second attempt; doubles each time."""
    max_wait_s: float = Field(default=10.0, ge=0)
    """Cap on the exponential wait."""
    jitter_s: float = Field(default=0.25, ge=0)
    """Random extra wait in [0, jitter_s], so replicas are not hit in lockstep."""
    retry_after_cap_s: float = Field(default=30.0, ge=0)
    """Longest wait a server's ``Retry-After`` can ask for; the backoff is the floor."""
    retry_budget_percent: float = Field(default=20.0, ge=0, le=100)
    """Retry budget (as Envoy's): retries in flight to one target (an agent's model, verifier or tools) at most
    this percent of all its calls in flight; past it a failed call fails at once instead of retrying."""
    min_retry_concurrency: int = Field(default=10, ge=0)
    """Retries in flight always allowed per target, whatever the percent says (the budget's floor)."""


class AgentConfig(_Strict):
    """One agent: a model, a verifier/resources server, and how the rollout loop runs.

        agent = AgentConfig(model=ModelEndpoint(base_urls=["http://127.0.0.1:8000/v1"], name="my-model"),
                            verifier_url="http://127.0.0.1:9000", max_steps=8, timeouts=Timeouts(model_s=120))
    """

    kind: Literal["single_turn", "tool_calling"] = "tool_calling"
    """``single_turn``: one model call (function calls recorded, not run); ``tool_calling``: the tool loop."""
    model: ModelEndpoint
    """The model endpoint."""
    verifier_url: str = Field(min_length=1)
    """Resources server base URL: ``/seed_session``, ``/<tool>``, ``/verify``, ``/close_session``."""
    verifier_token_env: str | None = None
    """Name of the environment variable holding the resources server's bearer token (never the token itself)."""
    max_steps: int = Field(default=10, ge=1)
    """Model calls per rollout in the tool loop."""
    default_params: dict[str, Any] = Field(default_factory=dict)
    """Lowest-precedence ``responses_create_params``."""
    timeouts: Timeouts = Timeouts()
    """Per-call timeouts and the rollout deadline."""
    retries: RetryConfig = RetryConfig()
    """Retry budget for transient model and verifier failures."""
    training: bool = False
    """Training mode (RL): every model call asks the backend (vLLM, ``api: chat_completions``) for token ids and
    log-probs and records ``prompt_token_ids``, ``generation_token_ids``, ``generation_log_probs`` on one output
    item per call; a call whose prompt ids do not extend the previous call's is marked in the response's
    ``metadata.rollgate_token_prefix_mismatch``. A backend without them is refused at start-up (see ``_training``)."""

    @model_validator(mode="after")
    def _training_needs_chat(self) -> AgentConfig:
        if self.training and self.model.api != "chat_completions":
            raise ValueError("training: true needs model.api: chat_completions (token ids come from vLLM's "
                             "/chat/completions with return_token_ids)")
        if self.model.token_prompts and self.model.api != "chat_completions":
            raise ValueError("model.token_prompts needs model.api: chat_completions (the prompt ids come from vLLM's "
                             "/tokenize and go to its /v1/completions)")
        if self.model.token_prompts and self.kind == "tool_calling" and self.model.tool_call_format is None:
            raise ValueError("model.token_prompts on a tool_calling agent needs model.tool_call_format (smollm2 or "
                             "hermes): a /v1/completions answer is raw text, so the gateway parses its tool calls")
        return self


class HttpLimits(_Strict):
    """Limits of the gateway's HTTP client (every model, verifier and tool call), read at start-up.

        http = HttpLimits(max_response_bytes=64 * 2**20, keepalive_expiry_s=2)
    """

    max_response_bytes: int = Field(default=256 * 2**20, ge=1024)
    """Largest answer body (after decompression); a bigger one fails its call (kind ``invalid_response``, not
    retried) as soon as it passes the limit, instead of being buffered whole."""
    keepalive_expiry_s: float = Field(default=4.0, gt=0)
    """How long an idle connection is reused when the server does not say; a server's ``Keep-Alive: timeout=N``
    takes its place (less a margin). Keep it below the servers' idle timeout (uvicorn's default: 5 s)."""


class GatewayConfig(_Strict):
    """Everything a gateway serves: agents by name.

        cfg = load_config("agents.yaml")  # or a directory of them; raises ConfigError naming the bad key
        cfg = GatewayConfig(agents={"my_agent": agent})
    """

    agents: dict[str, AgentConfig] = Field(min_length=1)
    """Agent name -> its config."""
    http: HttpLimits = HttpLimits()
    """The HTTP client's limits (read at start-up; a reload does not change them)."""


def _format(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{source}: {loc}: {err['msg']}")
    return "invalid gateway config:\n  " + "\n  ".join(lines)


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate an already-loaded mapping; errors name ``source`` and the dotted key."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def config_files(path: str | Path) -> list[Path]:
    """The files a config path stands for: itself, or a directory's ``*.yaml``/``*.yml``/``*.json`` by name.

    Hidden entries are skipped: a Kubernetes ConfigMap mount keeps its data in ``..data``/``..2024_…`` dirs and
    exposes each key as a symlink at the top level.
    """
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted(f for f in p.iterdir()
                  if not f.name.startswith(".") and f.suffix in (".yaml", ".yml", ".json") and f.is_file())


def load_config(path: str | Path) -> GatewayConfig:
    """Read a gateway config: a YAML or JSON file, or a directory whose files' ``agents`` are merged.

    In a directory a later file (by name) replaces an agent of the same name from an earlier one.
    """
    files = config_files(path)
    if not files:
        raise ConfigError(f"{path}: the directory holds no *.yaml, *.yml or *.json config file")
    agents: dict[str, Any] = {}
    merged: dict[str, Any] = {}
    for f in files:
        data = _load_file(f)
        agents.update(data.get("agents") or {})
        merged.update(data)
    merged["agents"] = agents
    return parse_config(merged, str(path))


def _load_file(path: str | Path) -> dict[str, Any]:
    """Read one YAML or JSON config file (JSON is YAML, but ``.json`` gets JSON's clearer errors)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read gateway config: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping with an 'agents' key, got {type(data).__name__}")
    if not isinstance(data.get("agents", {}), dict):
        raise ConfigError(f"{p}: 'agents' must be a mapping of agent name -> config")
    return data
