"""What user code builds on: the ``ResourcesServer`` base class, the ``@tool`` marker and ``Session``.

A resources server is instantiated once per process. Each rollout gets its own ``Session`` (created by
``POST /seed_session``, found again through the ``rollgate_session`` cookie); keep per-rollout state in
``session.state``, never on ``self``, so concurrent rollouts cannot see each other's state.

Any handler (``verify``, a tool, a hook) that declares a parameter named ``session`` receives the ``Session``;
handlers may be plain or ``async def``. Plain ones run in a thread pool so they never block the event loop.

    class Counter(ResourcesServer):
        def seed_session(self, session: Session, body: dict[str, Any]) -> None:
            session.state["n"] = 0

        @tool
        def add(self, session: Session, k: int) -> dict[str, int]:
            session.state["n"] += k
            return {"n": session.state["n"]}

        def verify(self, task: dict[str, Any], response: dict[str, Any], session: Session) -> float:
            return float(session.state["n"] == task["target"])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, overload

__all__ = ["ResourcesServer", "Session", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

# The attribute ``@tool`` sets on a function; the loader looks for it on the class.
TOOL_MARK = "__rollgate_tool__"


@dataclass
class Session:
    """One rollout's session: its id (the cookie value) and free-form ``state`` for the user's code.

    Any handler with a parameter named ``session`` gets the rollout's own:

        @tool
        def add(self, session: Session, k: int) -> int:
            session.state["n"] = session.state.get("n", 0) + k
            return session.state["n"]
    """

    id: str
    state: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic)


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(*, name: str | None = None) -> Callable[[F], F]: ...


def tool(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a ``ResourcesServer`` method as a tool served at ``POST /<name>`` (default: the method's name).

    The JSON object in the request body becomes the method's keyword arguments.
    """

    def mark(f: F) -> F:
        setattr(f, TOOL_MARK, name or f.__name__)
        return f

    if fn is not None:
        return mark(fn)
    return mark


class ResourcesServer:
    """Base class for a stateful verifier with tools (a longer example is in the module docstring).

        class Echo(ResourcesServer):
            @tool
            def echo(self, text: str) -> str:                   # POST /echo {"text": "hi"} answers "hi"
                return text

            def verify(self, task: dict[str, Any], response: dict[str, Any]) -> float:
                return 1.0                                      # or {"reward": 1.0, "any_metric": ...}

    Override ``verify`` (required); ``seed_session`` and ``close_session`` are optional hooks. A class attribute
    ``version`` declares the verifier version; without it the version is a hash of the source file(s).
    """

    version: ClassVar[str | None] = None

    def seed_session(self, session: Session, body: dict[str, Any]) -> Any:
        """Called by ``POST /seed_session`` with the new session and the request body: through the gateway, the
        task row (its fields and ``responses_create_params``), as NeMo Gym's ``simple_agent`` sends it; ``{}`` when
        a client posts nothing."""
        return None

    def close_session(self, session: Session) -> Any:
        """Called by ``POST /close_session`` before the session is forgotten."""
        return None

    def verify(self, task: dict[str, Any], response: dict[str, Any]) -> Any:
        """Return a float reward, or a dict with at least ``reward`` and any metrics."""
        raise NotImplementedError

    def compute_metrics(self, tasks: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """NeMo Gym's hook for ``/aggregate_metrics``: the run's verify answers grouped by task (``tasks[i]``: task
        i's rollouts, masked ones left out); what it returns is merged into ``agent_metrics``, and a
        ``per_task_metrics`` list of ``{"_ng_task_index": i, …}`` into that task's ``group_level_metrics``.
        For pass@k, confidence intervals, anything that needs the whole run. Default: nothing. A plain ``def``."""
        return {}

    def compute_repeat_metrics(self, tasks: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """NeMo Gym's per-repeat hook for ``/aggregate_metrics``: called once per repeat with that repeat's answers
        grouped by task; each number it returns replaces the generic repeat-level one of that name (kept where it
        is finite for every repeat) and is summarised across repeats. Default: nothing. A plain ``def``."""
        return {}

    def get_key_metrics(self, agent_metrics: dict[str, Any]) -> dict[str, Any]:
        """NeMo Gym's hook choosing ``key_metrics`` (the headline numbers) from ``agent_metrics``. Default: every
        ``mean/…`` entry. A plain ``def``."""
        return {k: v for k, v in agent_metrics.items() if k.startswith("mean/")}
