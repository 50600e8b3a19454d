"""The ``llm_judge`` built-in: ask an OpenAI-compatible model to grade the final answer against a rubric.

The judge sees the task's question (the last user message of ``responses_create_params.input``), the reference
(``expected_answer``, when the task has one), the rubric (the task's ``rubric`` field, else the judge's) and the
answer with reasoning set aside, and must end with ``SCORE: N`` (0..``max_score``). The reward is N/max_score.

Calls go to ``POST {base_url}/chat/completions`` and are retried the way the gateway retries model calls
(tenacity; connection errors, timeouts, 408, 429 and 5xx only; exponential backoff with jitter; ``Retry-After``
honoured). A judge that still fails, refuses (another 4xx) or answers without a score is a ``JudgeFailed``
(502 ``judge_error``), never a made-up reward.

    judge = LLMJudge(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen3-8B")
    # my_verifier.py: `verify = LLMJudge(...)`, served as my_verifier:verify; or the built-in `llm_judge`,
    # configured by ROLLGATE_JUDGE_BASE_URL, ROLLGATE_JUDGE_MODEL, ROLLGATE_JUDGE_API_KEY_ENV, ROLLGATE_JUDGE_RUBRIC.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from rollgate.verifier._text import final_answer, message_text, strip_think
from rollgate.verifier.errors import JudgeFailed, VerifierLoadError

__all__ = ["DEFAULT_RUBRIC", "LLMJudge"]

log = logging.getLogger("rollgate.verifier.judge")

DEFAULT_RUBRIC = (
    "Grade whether the answer correctly and completely answers the question. If a reference answer is given, "
    "the answer is correct only when it agrees with the reference. Ignore style."
)
_SCORE = re.compile(r"SCORE\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


class _Transient(Exception):
    """A judge call that may succeed if tried again; ``retry_after_s`` from the server when it said."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from model servers; fall back to our own backoff


def _question(task: dict[str, Any]) -> str:
    params = task.get("responses_create_params")
    items = params.get("input") if isinstance(params, dict) else None
    if isinstance(items, str):
        return items
    if isinstance(items, list):
        for item in reversed(items):
            if isinstance(item, dict) and item.get("role") == "user":
                return strip_think(message_text({"content": _as_output_text(item.get("content"))}))
    return ""


def _as_output_text(content: Any) -> Any:
    # Input messages use "input_text" parts; message_text reads "output_text" ones.
    if isinstance(content, list):
        return [{**p, "type": "output_text"} if isinstance(p, dict) and "text" in p else p for p in content]
    return content


@dataclass
class LLMJudge:
    """A verify function (async, callable) that scores with a judge model; see the module docstring.

        verify = LLMJudge(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen3-8B")  # serve it as MODULE:verify
        answer = await verify(task, response)  # {"reward": 0.8, "judge_score": 8.0, "judge_reasoning": "..."}
    """

    base_url: str
    model: str
    rubric: str = DEFAULT_RUBRIC
    max_score: float = 10.0
    api_key_env: str | None = None
    timeout_s: float = 120.0
    attempts: int = 4
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    temperature: float = 0.0

    @classmethod
    def from_env(cls) -> LLMJudge:
        base_url = os.environ.get("ROLLGATE_JUDGE_BASE_URL")
        model = os.environ.get("ROLLGATE_JUDGE_MODEL")
        if not base_url or not model:
            raise VerifierLoadError(
                "llm_judge needs ROLLGATE_JUDGE_BASE_URL (OpenAI style, with /v1) and ROLLGATE_JUDGE_MODEL; "
                "optional: ROLLGATE_JUDGE_API_KEY_ENV (the env var holding the key), ROLLGATE_JUDGE_RUBRIC",
                spec="llm_judge",
            )
        return cls(
            base_url=base_url,
            model=model,
            rubric=os.environ.get("ROLLGATE_JUDGE_RUBRIC") or DEFAULT_RUBRIC,
            api_key_env=os.environ.get("ROLLGATE_JUDGE_API_KEY_ENV") or None,
        )

    def prompt(self, task: dict[str, Any], answer: str) -> list[dict[str, str]]:
        rubric = task.get("rubric") if isinstance(task.get("rubric"), str) else self.rubric
        parts = [f"Rubric:\n{rubric}", f"Question:\n{_question(task)}"]
        if task.get("expected_answer") is not None:
            parts.append(f"Reference answer:\n{task['expected_answer']}")
        parts.append(f"Answer to grade:\n{answer}")
        parts.append(f"Think briefly, then end with one line: SCORE: N (an integer from 0 to {self.max_score:g}).")
        system = "You are a strict, fair grader. You only grade; you never answer the question yourself."
        return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]

    def parse_score(self, text: str) -> float:
        found = _SCORE.findall(strip_think(text))
        if not found:
            raise JudgeFailed(f"the judge's answer has no 'SCORE: N' line: {text[-200:]!r}")
        return min(1.0, max(0.0, float(found[-1]) / self.max_score))

    async def _once(self, http: aiohttp.ClientSession, body: bytes) -> str:
        headers = {"content-type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = f"{self.base_url.rstrip('/')}/chat/completions"
        try:
            async with http.post(url, data=body, headers=headers) as ans:
                raw = await ans.read()
                if ans.status in (408, 429) or ans.status >= 500:
                    raise _Transient(f"HTTP {ans.status}", _retry_after(ans.headers.get("retry-after")))
                if ans.status >= 400:
                    raise JudgeFailed(f"the judge at {url} refused: HTTP {ans.status}: {raw[:200]!r}")
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        try:
            return str(orjson.loads(raw)["choices"][0]["message"]["content"] or "")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise JudgeFailed(f"the judge at {url} answered something that is not a chat completion: {exc!r}") from None

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, self.max_wait_s)
        backoff = wait_exponential(multiplier=self.initial_wait_s, max=self.max_wait_s) + wait_random(0, 0.25)
        return float(backoff(state))

    async def __call__(self, task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        answer = final_answer(response)
        body = orjson.dumps(
            {"model": self.model, "messages": self.prompt(task, answer), "temperature": self.temperature}
        )
        text = ""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # One session per call: judge calls are slow model calls, and nothing is left open between requests.
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.attempts),
                    wait=self._wait,
                    retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
                    before_sleep=lambda s: log.warning("judge attempt %d failed; retrying", s.attempt_number),
                    reraise=True,
                ):
                    with attempt:
                        text = await self._once(http, body)
            except _Transient as exc:
                raise JudgeFailed(f"the judge failed after {self.attempts} attempts: {exc}") from None
        reward = self.parse_score(text)
        return {"reward": reward, "judge_score": reward * self.max_score, "judge_reasoning": text[-1000:]}
