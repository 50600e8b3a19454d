"""Calling user code the same way everywhere: sync in a thread pool, async awaited, ``session`` by name.

A ``Handler`` is built once at load time (signature inspection is not free), then invoked per request. Where a
call runs: async code is awaited; ``inline`` built-ins run on the loop; a ``WorkerFunction`` (a built-in declared
``process=True``) in a worker process; any other sync code in the ``Isolation``'s bounded thread pool. A
``timeout_s`` (verify's) is enforced for the last two (``verifier._isolation``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollgate.verifier._base import Session
from rollgate.verifier._isolation import Isolation, WorkerFunction


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # A callable object with ``async def __call__`` is async too (looked up on the type, as a call does).
    return inspect.iscoroutinefunction(type(fn).__call__)


@dataclass(frozen=True)
class Handler:
    """One user callable: how to call it and whether it wants the session."""

    fn: Callable[..., Any]
    name: str
    is_async: bool
    wants_session: bool
    # The signature without ``session``, used to check tool arguments before calling.
    signature: inspect.Signature | None
    # Fast, non-blocking sync code (the built-ins) runs on the loop: a thread hop would cost more than the call.
    inline: bool = False
    # ``module:function`` of a built-in that runs in a worker process (``Builtin(process=True)``), else None.
    process_ref: str | None = None

    @classmethod
    def of(cls, fn: Callable[..., Any], name: str, *, inline: bool = False) -> Handler:
        try:
            sig: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have no signature; call them as they are
            sig = None
        wants_session = sig is not None and "session" in sig.parameters
        if sig is not None and wants_session:
            sig = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "session"])
        process_ref = fn.ref if isinstance(fn, WorkerFunction) else None
        return cls(fn=fn, name=name, is_async=_is_async(fn), wants_session=wants_session, signature=sig,
                   inline=inline and process_ref is None, process_ref=process_ref)

    def check_kwargs(self, kwargs: dict[str, Any]) -> str | None:
        """Why ``kwargs`` cannot be passed to this handler, or None when they can."""
        if self.signature is None:
            return None
        try:
            self.signature.bind(**kwargs)
        except TypeError as exc:
            takes = ", ".join(self.signature.parameters) or "no arguments"
            return f"{exc} (it takes: {takes}; got: {', '.join(kwargs) or 'nothing'})"
        return None

    async def call(self, args: tuple[Any, ...], kwargs: dict[str, Any], session: Session | None, *,
                   isolation: Isolation | None = None, timeout_s: float | None = None) -> Any:
        """Call it; sync code goes to ``isolation``'s pools (without one, asyncio's default executor and no
        limit: direct use in tests and scripts)."""
        if self.wants_session:
            kwargs = {**kwargs, "session": session}
        if self.is_async:
            result = await self.fn(*args, **kwargs)
        elif self.inline:
            result = self.fn(*args, **kwargs)
        elif isolation is None:
            result = await asyncio.to_thread(functools.partial(self.fn, *args, **kwargs))
        elif self.process_ref is not None and not kwargs:
            result = await isolation.in_process(self.process_ref, args,
                                                timeout_s=timeout_s or isolation.limits.timeout_s)
        else:
            # Sync user code may block (files, subprocesses, slow checkers): keep the event loop free.
            result = await isolation.in_thread(self.fn, args, kwargs, timeout_s=timeout_s)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result
