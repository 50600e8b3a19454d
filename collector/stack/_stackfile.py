"""The stack file of ``rollgate up --config stack.yaml``, and the quick form's command line, as one typed plan.

    models:    name -> model endpoint ({base_urls|base_url, name, api, api_key_env}) or {embedded: true}
    verifiers: name -> {target: module:attr | BUILTIN} (started locally) or {url: http://...}
    agents:    name -> {model: NAME, verifier: NAME, kind, max_steps, default_params, ...}

Agent keys other than ``model`` and ``verifier`` pass through to the gateway config unchanged; the gateway
validates them, so the two never disagree on what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rollgate.collector.errors import UsageError

__all__ = ["AgentEntry", "ModelEntry", "StackFile", "UpConfig", "VerifierEntry", "load_stack", "quick_stack"]

WORKFLOW_AGENTS = ["my_agent", "my_rl_agent", "test_verifier", "model_v1", "model_v2", "model_v3"]


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    embedded: bool = False
    """Serve the embedded demo model (started once, shared by every model entry that asks for it)."""
    base_urls: list[str] = Field(default_factory=list)
    """OpenAI-style base URLs including ``/v1``; several are replicas."""
    base_url: str | None = None
    """Shorthand for a single entry of ``base_urls``."""
    name: str | None = None
    """The ``model`` field sent to the backend."""
    api: Literal["responses", "chat_completions"] = "chat_completions"
    """Which OpenAI API the backend speaks."""
    api_key_env: str | None = None
    """Environment variable holding the API key (never the key itself)."""

    @model_validator(mode="after")
    def _endpoint_or_embedded(self) -> ModelEntry:
        if self.base_url:
            self.base_urls = [self.base_url, *self.base_urls]
        if not self.embedded and (not self.base_urls or not self.name):
            raise ValueError("a model needs base_urls (or base_url) and name, or embedded: true")
        return self


class VerifierEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    target: str | None = None
    """``module:attr`` or a built-in name (e.g. ``exact_match``): started locally as ``verifier serve``."""
    url: str | None = None
    """An already running verifier / resources server."""

    @model_validator(mode="after")
    def _exactly_one(self) -> VerifierEntry:
        if (self.target is None) == (self.url is None):
            raise ValueError("a verifier needs exactly one of target or url")
        return self


class AgentEntry(BaseModel):
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    model: str = "default"
    """A name under ``models``."""
    verifier: str
    """A name under ``verifiers``."""

    def gateway_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StackFile(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    models: dict[str, ModelEntry] = Field(default_factory=lambda: {"default": ModelEntry(embedded=True)})
    """Model endpoints by name."""
    verifiers: dict[str, VerifierEntry] = Field(min_length=1)
    """Verifiers by name."""
    agents: dict[str, AgentEntry] = Field(min_length=1)
    """Agents by name: what the collector's ``+agent_name`` picks."""

    @model_validator(mode="after")
    def _references(self) -> StackFile:
        for name, agent in self.agents.items():
            if agent.model not in self.models:
                raise ValueError(f"agent {name!r}: unknown model {agent.model!r} (models: {', '.join(self.models)})")
            if agent.verifier not in self.verifiers:
                raise ValueError(
                    f"agent {name!r}: unknown verifier {agent.verifier!r} (verifiers: {', '.join(self.verifiers)})"
                )
        return self


class UpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    config: str | None = None
    """A stack file (YAML); the quick-form keys below are then not allowed."""
    model_url: str | None = None
    """OpenAI-compatible base URL including ``/v1``; without it the embedded model is started."""
    model: str | None = None
    """The ``model`` name sent to the backend (required with ``model_url``)."""
    api: Literal["responses", "chat_completions"] = "chat_completions"
    """Which OpenAI API the backend speaks."""
    api_key_env: str | None = None
    """Environment variable holding the backend's API key."""
    verifier: str | None = None
    """``module:attr`` or a built-in name, started locally (default ``exact_match``)."""
    verifier_url: str | None = None
    """An already running verifier instead of a local one."""
    agents: list[str] | str = Field(default_factory=lambda: list(WORKFLOW_AGENTS))
    """Agent names (comma-separated or a list); default: every agent the documented workflows use."""
    host: str = "127.0.0.1"
    """Where the gateway listens."""
    port: int = Field(50051, ge=0, le=65535)
    """The gateway's port (0 picks a free one; the ready line says which)."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """The gateway's HTTP port for /metrics, /healthz, /readyz (default: the gateway's own, 9090 or a free one)."""
    kind: Literal["tool_calling", "single_turn"] = "tool_calling"
    """The agents' rollout loop."""
    max_steps: int = Field(10, ge=1)
    """Model calls per rollout in the tool loop."""
    ready_timeout_s: float = Field(120.0, gt=0)
    """How long each service may take to print its ready line."""

    def agent_names(self) -> list[str]:
        raw = self.agents if isinstance(self.agents, list) else self.agents.split(",")
        names = [str(n).strip() for n in raw if str(n).strip()]
        if not names:
            raise UsageError("--agents: give at least one agent name")
        return names


_QUICK_KEYS = ("model_url", "model", "api_key_env", "verifier", "verifier_url")


def quick_stack(cfg: UpConfig) -> StackFile:
    """The quick form as a stack: one model, one verifier, the named agents on both."""
    if cfg.verifier and cfg.verifier_url:
        raise UsageError("give --verifier or --verifier-url, not both")
    if cfg.model_url and not cfg.model:
        raise UsageError("--model-url needs --model (the model name the backend serves)")
    model = (
        ModelEntry(base_urls=[cfg.model_url], name=cfg.model, api=cfg.api, api_key_env=cfg.api_key_env)
        if cfg.model_url
        else ModelEntry(embedded=True)
    )
    verifier = VerifierEntry(url=cfg.verifier_url) if cfg.verifier_url else VerifierEntry(
        target=cfg.verifier or "exact_match"
    )
    agent = {"model": "default", "verifier": "default", "kind": cfg.kind, "max_steps": cfg.max_steps}
    return StackFile(
        models={"default": model},
        verifiers={"default": verifier},
        agents={name: AgentEntry.model_validate(agent) for name in cfg.agent_names()},
    )


def load_stack(cfg: UpConfig) -> StackFile:
    if cfg.config is None:
        return quick_stack(cfg)
    given = [k for k in _QUICK_KEYS if getattr(cfg, k) is not None]
    if given:
        raise UsageError(f"--config cannot be combined with {', '.join('--' + k for k in given)}")
    path = Path(cfg.config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the stack file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with models, verifiers and agents")
    try:
        return StackFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"{path}: invalid stack file: {problems}") from None
