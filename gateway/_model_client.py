"""Calls one agent's model: ``/responses`` directly, or ``/chat/completions`` converted both ways.

Replicas (several ``base_urls``) are chosen by ``BackendPool`` (least in flight, cool-down, AIMD limit), and a
retry prefers another replica. Parameters that the chat backend has no slot for are dropped with one warning
per agent and parameter, never one per rollout. A training agent's calls ask for token ids and log-probs and
carry them on one output item each (``_training.attach_token_fields``).

    client = ModelClient("my_agent", agent_cfg, http, pool)
    response, attempts = await client.create({"model": "m", "input": "hi"})
"""

from __future__ import annotations

import logging
import os
from typing import Any

from rollgate.gateway._backends import BackendPool, Result
from rollgate.gateway._config import AgentConfig
from rollgate.gateway._convert import chat_to_response, responses_to_chat
from rollgate.gateway._http import HttpClient, parse_object, raise_for_status
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway._retry import call_with_retry
from rollgate.gateway._training import attach_token_fields, training_body, wants_logprobs
from rollgate.gateway.errors import ConfigError, ModelError, RolloutFailure

__all__ = ["ModelClient"]

log = logging.getLogger("rollgate.gateway.model")


class ModelClient:
    """One agent's model endpoint over the gateway's shared HTTP client."""

    def __init__(self, agent: str, cfg: AgentConfig, http: HttpClient,
                 pool: BackendPool | None = None, metrics: GatewayMetrics | None = None,
                 warned: set[str] | None = None) -> None:
        self.agent = agent
        self.cfg = cfg
        self._http = http
        self._pool = pool if pool is not None else BackendPool(metrics)
        self._metrics = metrics
        self._urls = [u.rstrip("/") for u in cfg.model.base_urls]
        # Shared across hot-swaps of the same agent, so a swap does not repeat the warnings.
        self._warned: set[str] = warned if warned is not None else set()
        self._headers: dict[str, str] = {}
        env = cfg.model.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:
                raise ConfigError(f"agents.{agent}.model.api_key_env: environment variable {env} is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    @property
    def headers(self) -> dict[str, str]:
        """The headers every call to this model sends (its API key)."""
        return self._headers

    @property
    def warned(self) -> set[str]:
        return self._warned

    def _warn_dropped(self, dropped: list[str]) -> None:
        new = [d for d in dropped if d not in self._warned]
        if new:
            self._warned.update(new)
            log.warning("agent %s: the chat_completions backend has no slot for %s; dropped (warned once)",
                        self.agent, ", ".join(new))

    async def create(self, params: dict[str, Any], *, training: bool | None = None) -> tuple[dict[str, Any], int]:
        """One model call (retried on transient failures): the Responses object and the attempts made.

        ``training`` (default: the agent's own) asks for token ids and log-probs and attaches them."""
        if self.cfg.model.api == "responses":
            body = {k: v for k, v in params.items() if k != "stream"}  # one JSON answer, never SSE
            path = "/responses"
        else:
            body, dropped = responses_to_chat(params, model=self.cfg.model.name)
            if dropped:
                self._warn_dropped(dropped)
            path = "/chat/completions"
        if training is None:
            training = self.cfg.training
        if training:
            keep_logprobs = wants_logprobs(params)
            training_body(body)
        timeout_s = self.cfg.timeouts.model_s
        endpoint = self.cfg.model
        last: list[str] = []

        async def attempt(_n: int) -> dict[str, Any]:
            backend = await self._pool.acquire(self._urls, endpoint, avoid=last[0] if last else None)
            last[:] = [backend.url]
            result: Result = "neutral"
            try:
                ans = await self._http.post(backend.url + path, body, error=ModelError,
                                 timeout_s=timeout_s, headers=self._headers)
                raise_for_status(ans, ModelError)
                result = "ok"
            except RolloutFailure as exc:
                if exc.http_status == 429:
                    result = "overloaded"
                elif exc.transient:
                    result = "failed"
                raise
            finally:
                self._pool.release(backend, result, endpoint)
            data = parse_object(ans, ModelError)
            if path == "/responses":
                if not isinstance(data.get("output"), list):
                    raise ModelError(f"POST {ans.url}: Responses answer has no 'output' list",
                                     kind="invalid_response", http_status=ans.status, url=ans.url)
                return data
            try:
                response = chat_to_response(data)
                if training:
                    attach_token_fields(data, response, keep_logprobs=keep_logprobs)
                return response
            except ValueError as exc:
                raise ModelError(f"POST {ans.url}: {exc}", kind="invalid_response",
                                 http_status=ans.status, url=ans.url) from None

        return await call_with_retry(attempt, self.cfg.retries, target="model", metrics=self._metrics)
