"""Calls one agent's model: ``/responses`` directly, or ``/chat/completions`` converted both ways.

Replicas (several ``base_urls``) are chosen by ``BackendPool`` (least in flight, cool-down, AIMD limit), and a
retry prefers another replica. Parameters that the chat backend has no slot for are dropped with one warning
per agent and parameter, never one per rollout. A training agent's calls ask for token ids and log-probs and
carry them on one output item each (``_training.attach_token_fields``); with ``model.token_prompts`` a training
call after the first continues the rollout's tokens on ``/v1/completions`` (``_token_prompts``).

    client = ModelClient("my_agent", agent_cfg, http, pool)
    response, attempts = await client.create({"model": "m", "input": "hi"})
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from rollgate.gateway._backends import BackendPool, Result
from rollgate.gateway._config import AgentConfig
from rollgate.gateway._convert import chat_to_response, responses_to_chat
from rollgate.gateway._extras import with_extras
from rollgate.gateway._http import HttpClient, parse_object, raise_for_status
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway._retry import call_with_retry
from rollgate.gateway._token_prompts import (
    build_prompt,
    chat_answer,
    completions_body,
    prefix_messages,
    tokenize_body,
)
from rollgate.gateway._training import PrefixCheck, attach_token_fields, training_body, wants_logprobs
from rollgate.gateway.errors import ConfigError, ModelError, RolloutFailure

__all__ = ["ModelClient"]

log = logging.getLogger("rollgate.gateway.model")

T = TypeVar("T")


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

    async def create(self, params: dict[str, Any], *, training: bool | None = None,
                     tokens: PrefixCheck | None = None,
                     meta: Mapping[str, dict[str, Any]] | None = None) -> tuple[dict[str, Any], int]:
        """One model call (retried on transient failures): the Responses object and the attempts made.

        ``training`` (default: the agent's own) asks for token ids and log-probs and attaches them. ``tokens``:
        the rollout's calls so far; with ``model.token_prompts`` a training call after a training call continues
        their tokens on ``/v1/completions`` (``_token_prompts``). ``meta``: ``params``' metadata extras, when the
        caller has read them already (``_extras``)."""
        if self.cfg.model.api == "responses":
            body = {k: v for k, v in params.items() if k != "stream"}  # one JSON answer, never SSE
            path = "/responses"
        else:
            body, dropped = responses_to_chat(params, model=self.cfg.model.name)
            if dropped:
                self._warn_dropped(dropped)
            path = "/chat/completions"
        body = with_extras(body, params, self.cfg.model, meta)
        if training is None:
            training = self.cfg.training
        keep_logprobs = False
        if training:
            keep_logprobs = wants_logprobs(params)
            training_body(body)
            if (path == "/chat/completions" and self.cfg.model.token_prompts and tokens is not None
                    and tokens.previous is not None):
                return await self._continue(body, tokens, keep_logprobs)

        def convert(data: dict[str, Any]) -> dict[str, Any]:
            if path == "/responses":
                if not isinstance(data.get("output"), list):
                    raise ValueError("Responses answer has no 'output' list")
                return data
            response = chat_to_response(data)
            if training:
                attach_token_fields(data, response, keep_logprobs=keep_logprobs)
            return response

        return await self._call(path, body, convert)

    async def _continue(self, chat: dict[str, Any], tokens: PrefixCheck,
                        keep_logprobs: bool) -> tuple[dict[str, Any], int]:
        """A training call whose prompt is the rollout's tokens so far plus the new turns' (or, where that cannot
        be built exactly, the chat call, whose prompt ``PrefixCheck`` then checks)."""
        assert tokens.previous is not None
        attempts = 0
        max_model_len: int | None = None
        history = prefix_messages(chat["messages"])
        prompt: list[int] | str = "the conversation has no assistant turn to continue"
        if history is not None:
            try:
                (full, max_model_len), n = await self._call(
                    "/tokenize", tokenize_body(chat, chat["messages"], generation_prompt=True), _token_list, root=True)
                attempts += n
                (head, _), n = await self._call(
                    "/tokenize", tokenize_body(chat, history, generation_prompt=False), _token_list, root=True)
                attempts += n
            except RolloutFailure as exc:
                exc.attempts += attempts
                raise
            prompt = build_prompt(tokens.previous, tokens.ended, full, head)
        tools = bool(chat.get("tools")) and chat.get("tool_choice") != "none"
        top = chat.get("top_logprobs") if keep_logprobs else None

        def convert(data: dict[str, Any]) -> dict[str, Any]:
            answer = data if path == "/chat/completions" else chat_answer(
                data, tools=tools, fmt=self.cfg.model.tool_call_format,
                top_logprobs=top if isinstance(top, int) else None, reasoning=self.cfg.model.reasoning_parser)
            response = chat_to_response(answer)
            attach_token_fields(answer, response, keep_logprobs=keep_logprobs)
            return response

        if isinstance(prompt, str):
            log.info("agent %s: no token-id prompt for this call (%s); sent as a chat call, its prompt checked",
                     self.agent, prompt, extra={"agent": self.agent})
            path, body = "/chat/completions", chat
        else:
            path = "/completions"
            try:
                body = completions_body(chat, prompt, max_model_len)
            except ValueError as exc:
                raise ModelError(f"agent {self.agent!r}: {exc}", kind="invalid_response",
                                 attempts=attempts) from None
        try:
            response, n = await self._call(path, body, convert)
        except RolloutFailure as exc:
            exc.attempts += attempts
            raise
        return response, attempts + n

    async def _call(self, path: str, body: dict[str, Any], convert: Callable[[dict[str, Any]], T], *,
                    root: bool = False) -> tuple[T, int]:
        """POST ``body`` to ``path`` on a replica (its root, without ``/v1``, when ``root``), retried; the
        answer through ``convert`` (a ``ValueError`` there fails the call: ``invalid_response``)."""
        timeout_s = self.cfg.timeouts.model_s
        endpoint = self.cfg.model
        last: list[str] = []

        async def attempt(_n: int) -> T:
            backend = await self._pool.acquire(self._urls, endpoint, avoid=last[0] if last else None)
            last[:] = [backend.url]
            base = backend.url[: -len("/v1")] if root and backend.url.endswith("/v1") else backend.url
            result: Result = "neutral"
            try:
                ans = await self._http.post(base + path, body, error=ModelError,
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
            try:
                return convert(data)
            except ValueError as exc:
                raise ModelError(f"POST {ans.url}: {exc}", kind="invalid_response",
                                 http_status=ans.status, url=ans.url) from None

        return await call_with_retry(attempt, self.cfg.retries, target="model", metrics=self._metrics)


def _token_list(data: dict[str, Any]) -> tuple[list[int], int | None]:
    """A ``/tokenize`` answer: its token ids and ``max_model_len``."""
    ids = data.get("tokens")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError("the /tokenize answer has no 'tokens' list of ids")
    limit = data.get("max_model_len")
    return ids, limit if isinstance(limit, int) and not isinstance(limit, bool) else None
