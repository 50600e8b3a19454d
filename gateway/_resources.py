"""One rollout's conversation with the resources/verifier server (NeMo Gym protocol).

``/seed_session`` first; its cookies live in this object only (the shared session uses a dummy jar), so two
concurrent rollouts never see each other's state. Then tool calls ``POST /<tool>``, ``POST /verify`` and a
best-effort ``POST /close_session`` (third-party servers lack it; a 404 there is fine).

The bodies are NeMo Gym 0.7's ``simple_agent``'s (its legacy ``run()``, which is what NeMo Gym's collector
drives), so NeMo Gym's own servers take them as they take its agent's:

- ``/seed_session``: the task row with the effective ``responses_create_params`` (servers read task fields
  there: ``example_session_state_mgmt`` needs ``initial_count``);
- ``/<tool>``: the call's parsed JSON arguments; a 2xx answer's body text, as it came, is the
  ``function_call_output`` the model sees;
- ``/verify``: the seed body plus ``response``;
- ``/close_session``: ``{"resources_session_id": <rollout id>, "episode_id": {"rollout_id": <rollout id>}}``.
  ``simple_agent`` never closes; NeMo Gym's ``SimpleResourcesServer`` validates this route as
  ``ResourcesCloseSessionRequest`` (no other field allowed) and answers 422 to ``{}``. The episode's
  ``rollout_id`` must match ``[A-Za-z0-9][A-Za-z0-9._-]*`` and not end in ``-a<N>``: the collector's hex ids do;
  any other id is replaced there by a hash of it (``episode_rollout_id``). A rollgate verifier ignores the body.

A seeded session is always closed, also when the rollout is cancelled (its deadline passed, its collector went
away): ``close_detached`` sends ``/close_session`` from a task of its own, with a short timeout, so the close
neither stretches the cancelled rollout nor dies with it. ``wait_detached_closes`` lets those calls finish (or
time out) before the HTTP client closes. Close failures are logged at debug only: the rollout's fate is decided.

Skipping the session: a rollgate verifier says on every answer whether it needs sessions
(``X-Rollgate-Session: none|required``). ``SessionHints`` remembers, per verifier URL, what the last answer said;
``open(uses_tools=False)`` skips seed (and so close) when it said ``none``: two HTTP calls fewer per rollout. A
server without the header (any third-party one) gets the full protocol. If a hot reload swapped in a verify that
needs a session after the seed was skipped, ``/verify`` answers 400 with ``X-Rollgate-Session: required``: the
session is then seeded and ``/verify`` asked once more, so that rollout is scored properly, and later ones seed.

Batching: such a sessionless rollout's ``/verify`` goes through ``VerifyBatches`` (``POST /verify_batch`` with the
rollouts that finished together) when the verifier also says ``X-Rollgate-Verify-Batch: N``.

A verifier answer ``{"error": {"kind": "timeout"}}`` (a rollgate verifier's verify ran past its
``--verify-timeout-s``; HTTP 504) fails the rollout as kind ``timeout`` at stage ``verify``, and is not retried.

    rs = ResourcesSession(http, "http://127.0.0.1:8001", cfg, rollout_id="r1", seed_body=row, hints=hints)
    await rs.open(uses_tools=True); text = await rs.call_tool("add", '{"a": 1, "b": 2}')
    verdict, attempts = await rs.verify(body); await rs.close()
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from rollgate.gateway._config import AgentConfig
from rollgate.gateway._http import Answer, HttpClient, error_text, parse_object, raise_for_status
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway._retry import call_with_retry, never_reached, not_a_verify_timeout
from rollgate.gateway._verify_batch import BATCH_HEADER, VerifyBatches
from rollgate.gateway.errors import ToolError, VerifyError

__all__ = ["CLOSE_TIMEOUT_S", "SESSION_HEADER", "ResourcesSession", "SessionHints", "Verdict", "episode_rollout_id",
           "wait_detached_closes"]

log = logging.getLogger("rollgate.gateway.resources")

# A detached /close_session gets this long at most: the rollout is over, and a server that does not answer
# promptly must not hold tasks (or a shutting-down gateway) for the full verify timeout.
CLOSE_TIMEOUT_S = 5.0
# The detached closes still in flight, by the HTTP client they use (a reference keeps each task alive).
_detached: dict[HttpClient, set[asyncio.Task[None]]] = {}


async def wait_detached_closes(http: HttpClient) -> None:
    """Wait for the detached ``/close_session`` calls on ``http`` (each bounded by ``CLOSE_TIMEOUT_S``)."""
    tasks = _detached.get(http)
    while tasks:  # bounded: no new rollout starts on a client that is closing, and each close times out
        await asyncio.gather(*list(tasks), return_exceptions=True)


@dataclass(slots=True)
class Verdict:
    """What ``/verify`` said: the reward, every field it added, and the verifier's version."""

    reward: float
    fields: dict[str, Any] = field(default_factory=dict)
    version: str = "unknown"


SESSION_HEADER = "x-rollgate-session"


class SessionHints:
    """Per verifier URL: did its last answer say it needs no session (``X-Rollgate-Session: none``)?

    Shared by every rollout of the gateway and kept across route swaps (keyed by URL, a small set from the config).
    Unknown and third-party servers are assumed to need sessions.
    """

    def __init__(self) -> None:
        self._sessionless: set[str] = set()
        self._batch: dict[str, int] = {}

    def sessionless(self, base_url: str) -> bool:
        return base_url in self._sessionless

    def batch_limit(self, base_url: str) -> int:
        """How many ``/verify`` bodies the verifier takes in one ``/verify_batch`` (0: it has no such route)."""
        return self._batch.get(base_url, 0)

    def learn(self, base_url: str, headers: dict[str, str]) -> None:
        # Anything but an explicit "none" (a missing header: a third-party server, or a proxy's error page)
        # means the full protocol again.
        if headers.get(SESSION_HEADER) == "none":
            self._sessionless.add(base_url)
        else:
            self._sessionless.discard(base_url)
        raw = headers.get(BATCH_HEADER, "")
        limit = int(raw) if raw.isdigit() else 0
        if limit > 1:
            self._batch[base_url] = limit
        else:
            self._batch.pop(base_url, None)


def _error_kind(ans: Answer) -> str:
    """The ``error.kind`` of a verifier's error answer, or "" (a third-party server, a proxy's error page)."""
    try:
        data = orjson.loads(ans.body)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    kind = error.get("kind") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else ""


def _json_text(data: Any) -> str:
    return orjson.dumps(data).decode()


# NeMo Gym's ``EpisodeId.rollout_id``: this pattern, and no ``-a<N>`` suffix (it marks an attempt there).
_EPISODE_ROLLOUT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ATTEMPT_SUFFIX = re.compile(r"-a[1-9][0-9]*\Z")


def episode_rollout_id(rollout_id: str) -> str:
    """``rollout_id`` as a valid NeMo Gym ``EpisodeId.rollout_id``: itself when it is one, else a hash of it."""
    if _EPISODE_ROLLOUT_ID.fullmatch(rollout_id) and not _ATTEMPT_SUFFIX.search(rollout_id):
        return rollout_id
    return hashlib.sha256(rollout_id.encode()).hexdigest()[:32]


class ResourcesSession:
    """The resources-server side of one rollout; not shared between rollouts."""

    def __init__(self, http: HttpClient, base_url: str, cfg: AgentConfig, *, rollout_id: str,
                 seed_body: dict[str, Any], metrics: GatewayMetrics | None = None, token: str | None = None,
                 hints: SessionHints | None = None, batches: VerifyBatches | None = None) -> None:
        self._http = http
        self._rollout_id = rollout_id
        self._seed_body = seed_body
        self._batches = batches
        self._base = base_url.rstrip("/")
        self._cfg = cfg
        self._metrics = metrics
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._cookies: dict[str, str] = {}
        self._hints = hints
        # True once open() skipped the seed: close() then has nothing to close.
        self.skipped_seed = False
        # True between a seed that the server answered and the end of a close: a session to close.
        self.seeded = False

    def _headers(self) -> dict[str, str] | None:
        if not self._cookies:
            return self._auth or None
        return {**self._auth, "Cookie": "; ".join(f"{k}={v}" for k, v in self._cookies.items())}

    async def _post(self, path: str, body: Any, *, error: type[ToolError] | type[VerifyError],
                    timeout_s: float) -> Answer:
        ans = await self._http.post(f"{self._base}/{path}", body, error=error, timeout_s=timeout_s,
                         headers=self._headers())
        if ans.cookies:
            self._cookies.update(ans.cookies)
        if self._hints is not None:
            self._hints.learn(self._base, ans.headers)
        return ans

    async def open(self, *, uses_tools: bool) -> None:
        """Start the rollout's session: ``seed()``, unless the verifier said it needs none and no tools will run
        (tools are the user's code: a tool-calling rollout keeps its session whatever the header said)."""
        if not uses_tools and self._hints is not None and self._hints.sessionless(self._base):
            self.skipped_seed = True
            return
        await self.seed()

    async def seed(self) -> int:
        """``POST /seed_session`` with the task row; keep its cookies. Returns the attempts made."""
        async def attempt(_n: int) -> None:
            ans = await self._post("seed_session", self._seed_body, error=VerifyError,
                                   timeout_s=self._cfg.timeouts.verify_s)
            if ans.status != 404:  # a server without sessions is stateless; nothing to seed
                raise_for_status(ans, VerifyError)

        _, attempts = await call_with_retry(attempt, self._cfg.retries, target="verifier", metrics=self._metrics)
        self.skipped_seed = False
        self.seeded = True
        return attempts

    async def call_tool(self, name: str, arguments: str) -> str:
        """Run one tool; its answer's body text, as the server wrote it (NeMo Gym's agent hands the model the raw
        text too, so a deterministic model sees the same bytes behind either). An error *answer* becomes
        ``{"error": ...}`` for the model.

        Only a missing answer (connection refused, timeout) raises ``ToolError``. Tools may not be idempotent,
        so a call is resent only when it provably never reached the server (connection refused, e.g. while a
        verifier restarts), never after a timeout or a dropped connection.
        """
        try:
            args = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError as exc:
            return _json_text({"error": f"arguments are not valid JSON: {exc}"})

        async def attempt(_n: int) -> Answer:
            return await self._post(name, args, error=ToolError, timeout_s=self._cfg.timeouts.tool_s)

        ans, _ = await call_with_retry(attempt, self._cfg.retries, target="tool", metrics=self._metrics,
                                       retry_on=never_reached)
        if ans.status == 404:
            return _json_text({"error": f"unknown tool {name!r}"})
        if ans.status >= 400:
            return _json_text({"error": f"tool {name!r} failed with HTTP {ans.status}: {error_text(ans)}"})
        return ans.body.decode("utf-8", "replace")

    async def verify(self, body: dict[str, Any]) -> tuple[Verdict, int]:
        """``POST /verify``; the verdict (added fields only) and the attempts made."""
        async def attempt(_n: int) -> Answer:
            ans = await self._verify_once(body)
            if self.skipped_seed and ans.status == 400 and ans.headers.get(SESSION_HEADER) == "required":
                # The verifier said "none" when this rollout started, and a hot reload has since swapped in a
                # verify that needs a session: seed one now and ask again, rather than failing a good rollout.
                log.warning("verifier %s now needs sessions (hot reload?): seeding and verifying again", self._base)
                await self.seed()
                ans = await self._post("verify", body, error=VerifyError, timeout_s=self._cfg.timeouts.verify_s)
            if ans.status >= 400 and _error_kind(ans) == "timeout":
                raise VerifyError(f"POST {ans.url}: HTTP {ans.status}: {error_text(ans)}", kind="timeout",
                                  http_status=ans.status, url=ans.url)
            raise_for_status(ans, VerifyError)
            return ans

        ans, attempts = await call_with_retry(attempt, self._cfg.retries, target="verifier", metrics=self._metrics,
                                              retry_on=not_a_verify_timeout)
        data = parse_object(ans, VerifyError)
        reward = data.get("reward")
        # bool is an int in Python, but a reward of True is a verifier bug, not 1.0.
        if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward):
            raise VerifyError(f"POST {ans.url}: 'reward' must be a finite number, got {reward!r}",
                              kind="invalid_response", http_status=ans.status, url=ans.url, attempts=attempts)
        added = {k: v for k, v in data.items() if k not in body}
        added["reward"] = float(reward)
        return Verdict(float(reward), added, ans.headers.get("x-verifier-version", "unknown")), attempts

    async def _verify_once(self, body: dict[str, Any]) -> Answer:
        """One ``/verify`` call: in a batch when this rollout has no session and the verifier batches."""
        hints, batches = self._hints, self._batches
        if self.skipped_seed and hints is not None and batches is not None and hints.batch_limit(self._base):
            ans = await batches.verify(self._base, self._auth, body, limit=hints.batch_limit(self._base),
                                       timeout_s=self._cfg.timeouts.verify_s)
            if ans is not None:
                hints.learn(self._base, ans.headers)
                return ans
            # Refused as a batch (404/405/413): alone, and that answer's headers say whether to batch again.
        return await self._post("verify", body, error=VerifyError, timeout_s=self._cfg.timeouts.verify_s)

    async def close(self, timeout_s: float | None = None) -> None:
        """Best-effort ``POST /close_session``: a failure is logged, never the rollout's failure."""
        if not self.seeded:
            return  # no session was opened (skipped, or the seed never answered)
        body = {"resources_session_id": self._rollout_id,
                "episode_id": {"rollout_id": episode_rollout_id(self._rollout_id)}}
        try:
            ans = await self._post("close_session", body, error=VerifyError,
                                   timeout_s=self._cfg.timeouts.verify_s if timeout_s is None else timeout_s)
        except VerifyError as exc:
            log.debug("close_session failed: %s", exc.message)
            return
        self.seeded = False
        if ans.status >= 400 and ans.status != 404:
            log.debug("close_session: HTTP %d: %s", ans.status, error_text(ans))

    def close_detached(self) -> None:
        """``close()`` on a task of its own (for a cancelled rollout), within ``CLOSE_TIMEOUT_S``.

        Cancelling the rollout does not cancel this; ``wait_detached_closes`` awaits it before shutdown.
        """
        if not self.seeded:
            return
        timeout_s = min(CLOSE_TIMEOUT_S, self._cfg.timeouts.verify_s)

        async def close() -> None:
            try:
                async with asyncio.timeout(timeout_s + 1.0):  # the HTTP timeout, plus room for a slow connect
                    await self.close(timeout_s)
            except Exception as exc:  # noqa: BLE001 (best effort: nothing may escape a detached task)
                log.debug("close_session failed: %s: %s", type(exc).__name__, exc)

        tasks = _detached.setdefault(self._http, set())
        task = asyncio.create_task(close())
        tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            if not tasks and _detached.get(self._http) is tasks:
                del _detached[self._http]

        task.add_done_callback(done)
