"""Training mode (an agent's ``training: true``): token-exact model calls for RL, checked across turns.

A training agent (``api: chat_completions`` only) asks its vLLM backend for token ids and log-probs on every model
call (``logprobs: true, return_token_ids: true``) and records them as the backend produced them, never
re-tokenized, on exactly ONE output item per model call (the call's last item, as NeMo Gym's converter does),
under NeMo Gym's names:

- ``prompt_token_ids``: the prompt the backend generated from (vLLM's top-level ``prompt_token_ids``);
- ``generation_token_ids``: ``choices[0].token_ids`` (the end-of-turn token included, as generated);
- ``generation_log_probs``: ``choices[0].logprobs.content[*].logprob``, one per generated token.

The transport copies (the response's top-level ``prompt_token_ids``, the text part's ``token_ids``, and its
``logprobs`` unless the request asked for log-probs itself) are dropped, so the arrays are on the row once. An
answer without them, or with as many log-probs as tokens, fails the call (``invalid_response``), never guessed.

Across one rollout, call k's prompt must begin with call k-1's prompt ids followed by its generated ids, exactly
(what makes the concatenated trajectory on-policy). A call whose prompt does not (a template that rewrites
history, a server that truncated the prompt, a re-tokenization that merges tokens) is NOT repaired: the rollout is
marked in ``response.metadata[MISMATCH_KEY]`` (``"rollgate_token_prefix_mismatch"``) with the 1-based indices of
those calls, comma-separated (Responses metadata values are strings), e.g. ``"2"`` or ``"2,3"``.

Start-up: each replica of a training agent is probed (``TrainingGate``): ``POST {root}/tokenize`` must answer 200
and a one-token chat call with ``return_token_ids: true`` must return ``prompt_token_ids`` and
``choices[0].token_ids`` (with ``model.token_prompts``, so must a one-token ``/v1/completions`` call whose prompt
is token ids). A backend that answers otherwise refuses the agent (``ConfigError`` naming the agent,
the URL and what is missing); one that cannot be reached yet is probed again at the agent's first model call
(a refusal then fails that rollout, and every later one, with the same reason).

    gate = TrainingGate("my_rl_agent", agent_cfg)
    await gate.check(http, headers)   # ConfigError: the backend cannot serve training
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from rollgate.gateway._config import AgentConfig
from rollgate.gateway._http import Answer, HttpClient, error_text
from rollgate.gateway.errors import ConfigError, ModelError, RolloutFailure

__all__ = ["MISMATCH_KEY", "TOKEN_FIELDS", "PrefixCheck", "TrainingGate", "attach_token_fields", "training_body"]

log = logging.getLogger("rollgate.gateway.training")

TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
MISMATCH_KEY = "rollgate_token_prefix_mismatch"
# The longest a start-up probe waits for one answer (a model's own ``timeouts.model_s`` may be minutes).
_PROBE_TIMEOUT_S = 30.0
_PROBE_MESSAGES = [{"role": "user", "content": "hi"}]


def training_body(body: dict[str, Any]) -> None:
    """Ask the chat backend for what training mode records (in place)."""
    body["logprobs"] = True
    body["return_token_ids"] = True


def wants_logprobs(params: dict[str, Any]) -> bool:
    """Did the request itself ask for log-probs (then the text part keeps vLLM's ``logprobs`` as well)?"""
    include = params.get("include")
    return (params.get("top_logprobs") is not None or bool(params.get("logprobs"))
            or (isinstance(include, list) and "message.output_text.logprobs" in include))


def _id_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return value
    return None


def attach_token_fields(chat: dict[str, Any], response: dict[str, Any], *, keep_logprobs: bool) -> None:
    """Put one chat answer's token ids and log-probs on the last item of its converted ``response`` (in place).

    Raises ``ValueError`` naming what is missing or inconsistent."""
    choice = chat["choices"][0]
    prompt = _id_list(chat.get("prompt_token_ids", choice.get("prompt_token_ids")))
    generated = _id_list(choice.get("token_ids"))
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    missing = [name for name, v in (("prompt_token_ids", prompt), ("choices[0].token_ids", generated),
                                    ("choices[0].logprobs.content", content)) if v is None]
    if missing:
        raise ValueError(f"training mode: the answer has no {', '.join(missing)} (asked for with logprobs: true, "
                         "return_token_ids: true)")
    assert prompt is not None and generated is not None and isinstance(content, list)
    log_probs: list[float] = []
    for entry in content:
        lp = entry.get("logprob") if isinstance(entry, dict) else None
        if isinstance(lp, bool) or not isinstance(lp, int | float):
            raise ValueError(f"training mode: choices[0].logprobs.content[{len(log_probs)}] has no numeric logprob")
        log_probs.append(float(lp))
    if len(log_probs) != len(generated):
        raise ValueError(f"training mode: {len(generated)} generated token ids but {len(log_probs)} log-probs")
    response.pop("prompt_token_ids", None)
    output = response["output"]
    parts = (p for i in output if i.get("type") == "message" for p in i.get("content") or ())
    for part in parts:
        if isinstance(part, dict):
            part.pop("token_ids", None)
            if not keep_logprobs:
                part.pop("logprobs", None)
    if not output:  # nothing generated but the end of turn: the ids still need an item to live on
        output.append({"type": "message", "id": f"msg_{response.get('id', '')}", "role": "assistant",
                       "status": "completed", "content": [{"type": "output_text", "text": "", "annotations": []}]})
    output[-1].update(prompt_token_ids=prompt, generation_token_ids=generated, generation_log_probs=log_probs)


class PrefixCheck:
    """One rollout's token-exactness check: each call's prompt must extend the previous prompt + generation."""

    __slots__ = ("_calls", "_previous", "ended", "mismatches")

    def __init__(self) -> None:
        self._previous: list[int] | None = None
        self._calls = 0
        self.mismatches: list[int] = []
        """1-based indices of the model calls whose prompt did not begin with the previous call's tokens."""
        self.ended = False
        """Whether the last call ended its turn itself (not cut short by ``max_output_tokens``)."""

    @property
    def previous(self) -> list[int] | None:
        """The last call's prompt ids followed by its generated ids (None before a training call)."""
        return self._previous

    def observe(self, response: dict[str, Any]) -> None:
        """Record one model call's answer (a Responses object from ``attach_token_fields``)."""
        self._calls += 1
        output = response.get("output") or []
        last = output[-1] if output else {}
        prompt, generated = last.get("prompt_token_ids"), last.get("generation_token_ids")
        if not isinstance(prompt, list) or not isinstance(generated, list):
            self._previous = None  # a call on a route without training mode: nothing to chain from
            return
        prev = self._previous
        if prev is not None and prompt[:len(prev)] != prev:
            at = next((i for i, (a, b) in enumerate(zip(prev, prompt, strict=False)) if a != b),
                      min(len(prev), len(prompt)))
            log.info("model call %d: its prompt ids do not begin with the previous call's prompt and generation "
                     "(they differ from token %d of %d): rollout marked %s", self._calls, at, len(prev),
                     MISMATCH_KEY)
            self.mismatches.append(self._calls)
        self._previous = prompt + generated
        self.ended = response.get("status") == "completed"

    def mark(self, response: dict[str, Any]) -> None:
        """Mark the rollout's final ``response`` when a call's prefix did not match (metadata copied, not shared)."""
        if self.mismatches:
            metadata = response.get("metadata")
            response["metadata"] = {**(metadata if isinstance(metadata, dict) else {}),
                                    MISMATCH_KEY: ",".join(map(str, self.mismatches))}


class _Unreachable(Exception):
    """The backend gave no usable answer yet (connection, timeout, 408/429/5xx): probe again later."""


class TrainingGate:
    """Whether a training agent's backends can serve token-exact calls: probed once, the verdict kept.

        gate = TrainingGate("my_rl_agent", cfg)
        await gate.check(http, headers)  # ConfigError with the reason, or fine / deferred
        await gate.ensure(http, headers)                # before a model call: ModelError once refused
    """

    def __init__(self, agent: str, cfg: AgentConfig) -> None:
        self.agent = agent
        self.key = (tuple(u.rstrip("/") for u in cfg.model.base_urls), cfg.model.name, cfg.model.api_key_env,
                    cfg.model.token_prompts)
        self._name = cfg.model.name
        self._token_prompts = cfg.model.token_prompts
        self._timeout_s = min(cfg.timeouts.model_s, _PROBE_TIMEOUT_S)
        self.ok = False
        self.refusal: str | None = None
        self._lock = asyncio.Lock()

    async def check(self, http: HttpClient, headers: dict[str, str]) -> None:
        """Probe every replica unless a verdict is in; a refusal raises ``ConfigError`` (kept for ``ensure``)."""
        async with self._lock:
            if not self.ok and self.refusal is None:
                try:
                    for url in self.key[0]:
                        reason = await self._probe(http, url, headers)
                        if reason is not None:
                            self.refusal = (f"agent {self.agent!r} in training mode: its model backend {url} "
                                            f"cannot serve token-exact rollouts: {reason}")
                            break
                    else:
                        self.ok = True
                except _Unreachable as exc:
                    log.warning("agent %s: training backend not checked yet (%s); checked again at its first "
                                "model call", self.agent, exc, extra={"agent": self.agent})
                    return  # at first use, the model call itself rides out the outage (its retries)
        if self.refusal is not None:
            raise ConfigError(self.refusal)

    async def ensure(self, http: HttpClient, headers: dict[str, str]) -> None:
        """Before a model call: nothing once the backend passed; ``ModelError`` (not retried) once it is refused."""
        if self.ok:
            return
        try:
            await self.check(http, headers)
        except ConfigError as exc:
            raise ModelError(str(exc), kind="invalid_request", attempts=0) from None

    async def _probe(self, http: HttpClient, url: str, headers: dict[str, str]) -> str | None:
        """None when ``url`` serves what training needs, else why not; ``_Unreachable`` when it cannot tell."""
        root = url[: -len("/v1")] if url.endswith("/v1") else url
        tokenize = await self._post(http, f"{root}/tokenize", {
            "model": self._name, "messages": _PROBE_MESSAGES, "add_generation_prompt": True}, headers)
        if tokenize.status != 200:
            return (f"POST {root}/tokenize answered HTTP {tokenize.status} ({error_text(tokenize, 200)}); "
                    "training needs vLLM's /tokenize")
        chat = await self._post(http, f"{url}/chat/completions", {
            "model": self._name, "messages": _PROBE_MESSAGES, "max_tokens": 1, "logprobs": True,
            "return_token_ids": True}, headers)
        if chat.status != 200:
            return f"a one-token chat call answered HTTP {chat.status} ({error_text(chat, 200)})"
        try:
            attach_token_fields(_json_object(chat.body), {"output": []}, keep_logprobs=False)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return (f"a one-token chat call with return_token_ids: true returned no usable token ids ({exc}); "
                    "vLLM >= 0.10.2 returns prompt_token_ids and choices[0].token_ids")
        if self._token_prompts:  # model.token_prompts: later calls send token-id prompts to /v1/completions
            reason = await self._probe_completions(http, url, tokenize, headers)
            if reason is not None:
                return reason
        return None

    async def _probe_completions(self, http: HttpClient, url: str, tokenize: Answer,
                                 headers: dict[str, str]) -> str | None:
        try:
            ids = _id_list(_json_object(tokenize.body).get("tokens"))
        except ValueError:
            ids = None
        if not ids:
            return f"POST /tokenize answered no 'tokens' list ({error_text(tokenize, 200)})"
        done = await self._post(http, f"{url}/completions", {
            "model": self._name, "prompt": ids, "max_tokens": 1, "logprobs": 0, "return_token_ids": True}, headers)
        try:
            choices = _json_object(done.body).get("choices") if done.status == 200 else None
        except ValueError:
            choices = None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        if _id_list(choice.get("token_ids")) is None or _id_list(choice.get("prompt_token_ids")) is None:
            return (f"model.token_prompts: a one-token /v1/completions call with a token-id prompt answered HTTP "
                    f"{done.status} without choices[0].token_ids and prompt_token_ids ({error_text(done, 200)})")
        return None

    async def _post(self, http: HttpClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        try:
            ans = await http.post(url, body, error=ModelError, timeout_s=self._timeout_s, headers=headers)
        except RolloutFailure as exc:
            raise _Unreachable(exc.message) from None
        if ans.status in (408, 429) or ans.status >= 500:
            raise _Unreachable(f"POST {url}: HTTP {ans.status}")
        return ans


def _json_object(raw: bytes) -> dict[str, Any]:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    return data
