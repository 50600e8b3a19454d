"""The verifier core: sessions, ``verify``, tools. Plain async Python with dicts in and out; no HTTP here.

``_app.py`` only turns bytes into dicts and ``RequestError`` into error bodies around these calls, so tests
(and a future hot reload, which swaps ``core.loaded``) can drive the core directly. Sync user code runs in the
core's ``Isolation`` (a bounded thread pool; worker processes for heavy built-ins), a sync verify under the hard
time limit of its ``VerifyLimits``; ``aclose()`` stops them with the server.

    core = VerifierCore(load_target("exact_match"))
    answer = await core.verify({"responses_create_params": {...}, "response": {...}, "expected_answer": "42"})
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import secrets
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel, ValidationError

from rollgate.verifier._aggregate import HookFailed, aggregate_metrics
from rollgate.verifier._base import Session
from rollgate.verifier._calls import Handler
from rollgate.verifier._isolation import Isolation, VerifyLimits
from rollgate.verifier._loader import LoadedVerifier
from rollgate.verifier.errors import (
    InvalidRequest,
    InvalidReward,
    InvalidSession,
    RequestError,
    SessionHookFailed,
    ToolFailed,
    UnknownTool,
    VerifyFailed,
)
from rollgate.verifier.protocol import AggregateMetricsRequest

__all__ = ["VerifierCore", "session_mode"]

log = logging.getLogger("rollgate.verifier")


def _plain(result: Any) -> Any:
    # NeMo Gym servers return pydantic models; accept them so such code ports unchanged.
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result


def reward_fields(result: Any) -> dict[str, Any]:
    """What ``verify`` returned, as the fields to add to the answer; the reward must be a finite number."""
    result = _plain(result)
    if isinstance(result, dict):
        if "reward" not in result:
            keys = ", ".join(sorted(map(str, result))) or "none"
            raise InvalidReward(f"verify returned a dict without 'reward' (its keys: {keys})")
        fields = result
    else:
        fields = {"reward": result}
    reward = fields["reward"]
    # bool is an int subclass, and True as a reward is almost always a forgotten float(); refuse it.
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise InvalidReward(f"reward must be a finite number, got {type(reward).__name__} {reward!r}")
    value = float(reward)
    if not math.isfinite(value):
        raise InvalidReward(f"reward must be a finite number, got {value}")
    return {**fields, "reward": value}


class VerifierCore:
    """Serves one ``LoadedVerifier``: owns the sessions and calls the user's code; no HTTP.

        core = VerifierCore(load_target("exact_match"))
        answer = await core.verify({"response": response, "expected_answer": "42"})  # the body plus "reward"
    """

    def __init__(self, loaded: LoadedVerifier, *, max_sessions: int = 100_000,
                 limits: VerifyLimits | None = None) -> None:
        self.loaded = loaded
        # Kept across hot reloads: the pools belong to the server, not to one version of the code.
        self.isolation = Isolation(limits)
        self.max_sessions = max_sessions
        # The last failed reload (None once a reload succeeds): the old version keeps serving meanwhile.
        self.load_error: str | None = None
        self.reloads = 0
        # Insertion order = age, so the oldest abandoned session is evicted first when full.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._evictions: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Stop the worker processes and idle threads (the server calls it once it has stopped serving)."""
        await self.isolation.aclose()

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def swap(self, loaded: LoadedVerifier) -> None:
        """Serve ``loaded`` from the next request on. One attribute store, so it is atomic for the event loop;
        a request already running holds its own reference to the old handler and finishes on it."""
        self.loaded = loaded
        self.load_error = None
        self.reloads += 1

    def health(self) -> dict[str, Any]:
        # Still 200 and still serving with a load error: the previous version answers; the error says why the
        # edit is not live yet.
        return {
            "status": "ok" if self.load_error is None else "load_error",
            "verifier": self.loaded.name,
            "version": self.loaded.version,
            "load_error": self.load_error,
            "reloads": self.reloads,
            "session": self.session_mode,
        }

    @property
    def session_mode(self) -> str:
        """``required`` or ``none``: what the ``X-Rollgate-Session`` header says for the version serving now."""
        return session_mode(self.loaded)

    def _session_for(self, handler: Handler, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is None and handler.wants_session:
            why = "no session cookie was sent" if not session_id else "its session is unknown (closed or expired)"
            raise InvalidSession(
                f"{handler.name} needs a session but {why}: POST /seed_session first and send back its "
                "rollgate_session cookie",
                session_id=session_id,
            )
        return session

    async def seed_session(self, body: dict[str, Any]) -> Session:
        session = Session(id=secrets.token_urlsafe(18))
        while len(self._sessions) >= self.max_sessions:
            old_id, old = self._sessions.popitem(last=False)
            log.warning("session limit %d reached: closing the oldest session %s", self.max_sessions, old_id)
            self._close_evicted(old)
        self._sessions[session.id] = session
        hook = self.loaded.seed_hook
        if hook is not None:
            try:
                await hook.call((), {"body": body} if _takes(hook, "body") else {}, session,
                                isolation=self.isolation)
            except RequestError:
                self._sessions.pop(session.id, None)
                raise
            except Exception as exc:
                self._sessions.pop(session.id, None)
                log.exception("seed_session raised")
                raise SessionHookFailed(f"seed_session raised {type(exc).__name__}: {exc}") from exc
        return session

    def _close_evicted(self, session: Session) -> None:
        """An abandoned session (its rollout never closed it) still gets the close hook: it may hold resources."""
        hook = self.loaded.close_hook
        if hook is None:
            return

        async def close() -> None:
            try:
                await hook.call((), {}, session, isolation=self.isolation)
            except Exception:
                log.exception("close_session raised for an evicted session")

        task = asyncio.get_running_loop().create_task(close())
        self._evictions.add(task)
        task.add_done_callback(self._evictions.discard)

    async def close_session(self, session_id: str | None) -> dict[str, Any]:
        # Closing twice, or a session this process never saw, is not an error: the rollout is over either way.
        session = self._sessions.pop(session_id, None) if session_id else None
        hook = self.loaded.close_hook
        if session is not None and hook is not None:
            try:
                await hook.call((), {}, session, isolation=self.isolation)
            except RequestError:
                raise
            except Exception as exc:
                log.exception("close_session raised")
                raise SessionHookFailed(f"close_session raised {type(exc).__name__}: {exc}") from exc
        return {}

    async def verify(self, body: dict[str, Any], session_id: str | None = None) -> dict[str, Any]:
        """The body echoed, plus ``reward`` (a float) and every field verify returned (those win)."""
        answer, _ = await self.verify_versioned(body, session_id)
        return answer

    async def verify_versioned(self, body: dict[str, Any], session_id: str | None = None) -> tuple[dict[str, Any], str]:
        """``verify`` and the version that actually scored it (a reload may land while it runs)."""
        answer, loaded = await self.verify_loaded(body, session_id)
        return answer, loaded.version

    async def verify_loaded(self, body: dict[str, Any],
                            session_id: str | None = None) -> tuple[dict[str, Any], LoadedVerifier]:
        """``verify`` and the ``LoadedVerifier`` that scored it (its version and session needs label the answer)."""
        fields, loaded = await self.verify_fields(body, session_id)
        return {**body, **fields}, loaded

    async def verify_fields(self, body: dict[str, Any],
                            session_id: str | None = None) -> tuple[dict[str, Any], LoadedVerifier]:
        """Only what verify added (``reward`` and its fields), and the ``LoadedVerifier`` that scored it."""
        response = body.get("response")
        if not isinstance(response, dict):
            raise InvalidRequest("the body needs 'response': the Responses API object to verify")
        loaded = self.loaded  # pinned: this request finishes on this version even if a reload swaps it
        handler = loaded.verify
        session = self._session_for(handler, session_id)
        task = {k: v for k, v in body.items() if k != "response"}
        try:
            result = await handler.call((task, response), {}, session, isolation=self.isolation,
                                        timeout_s=self.isolation.limits.timeout_s)
        except RequestError:
            raise  # e.g. InvalidTask raised on purpose by the user's code, or VerifyTimeout
        except Exception as exc:
            # The client gets the type and message; the stack trace stays in this process's log.
            log.exception("verify raised (verifier %s, version %s)", loaded.name, loaded.version)
            raise VerifyFailed(f"{type(exc).__name__}: {exc}", exception_type=type(exc).__name__) from exc
        return reward_fields(result), loaded

    async def aggregate_metrics(self, body: dict[str, Any]) -> Any:
        """The server's own ``aggregate_metrics(body)`` when it has one, else NeMo Gym's default answer
        (``_aggregate``), computed in a pool thread so a large run's rows do not hold up the loop."""
        hook = self.loaded.aggregate_hook
        if hook is None:
            try:
                rows = AggregateMetricsRequest.model_validate(body).verify_responses
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(map(str, first["loc"])) or "the body"
                raise InvalidRequest(f'aggregate_metrics needs {{"verify_responses": [objects]}}: {where}: '
                                     f"{first['msg']}") from None
            try:
                return await self.isolation.in_thread(aggregate_metrics, (rows, self.loaded.metrics_hooks), {},
                                                      timeout_s=None)
            except HookFailed as exc:
                log.error("aggregate_metrics: %s", exc, exc_info=exc.__cause__)
                raise VerifyFailed(f"aggregate_metrics: {exc}") from exc
            except ValueError as exc:
                raise InvalidRequest(f"aggregate_metrics: {exc}") from None
        try:
            return _plain(await hook.call((body,), {}, None, isolation=self.isolation))
        except RequestError:
            raise
        except Exception as exc:
            log.exception("aggregate_metrics raised")
            raise VerifyFailed(f"aggregate_metrics raised {type(exc).__name__}: {exc}") from exc

    async def call_tool(self, name: str, args: Any, session_id: str | None = None) -> Any:
        handler = self.loaded.tools.get(name)
        if handler is None:
            have = ", ".join(sorted(self.loaded.tools)) or "none"
            raise UnknownTool(f"no tool {name!r} on verifier {self.loaded.name}; its tools: {have}", tool=name)
        if not isinstance(args, dict):
            raise InvalidRequest(f"tool {name!r}: the body must be a JSON object of arguments, got {json_type(args)}")
        problem = handler.check_kwargs(args)
        if problem is not None:
            raise InvalidRequest(f"tool {name!r}: {problem}", tool=name)
        session = self._session_for(handler, session_id)
        try:
            result = await handler.call((), args, session, isolation=self.isolation)
        except RequestError:
            raise
        except Exception as exc:
            log.exception("tool %s raised", name)
            raise ToolFailed(f"tool {name!r} raised {type(exc).__name__}: {exc}", tool=name) from exc
        return _plain(result)


def session_mode(loaded: LoadedVerifier) -> str:
    """The ``X-Rollgate-Session`` value for ``loaded``: ``required`` or ``none``."""
    return "required" if loaded.needs_session else "none"


def _takes(handler: Handler, param: str) -> bool:
    return handler.signature is None or param in handler.signature.parameters


def json_type(value: Any) -> str:
    """How a parsed JSON value is named in error messages."""
    if value is None:
        return "null"
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
