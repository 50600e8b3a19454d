"""Running sync verify code away from the event loop, with a hard time limit per call.

    isolation = Isolation(VerifyLimits(timeout_s=30, threads=8, processes=2))
    fields = await isolation.in_thread(verify, (task, response), {}, timeout_s=30)      # user code
    fields = await isolation.in_process("rollgate.verifier._math:math_verify", (task, response), timeout_s=30)
    await isolation.aclose()                      # with the server: every worker process stopped and reaped

Two pools, apart, so neither can starve the other (and neither is asyncio's default executor, which hot reload
uses):

- **Threads** (``threads`` of them, daemon threads started on demand) run the user's sync code: verify, tools,
  session hooks. A verify past its time limit fails as ``VerifyTimeout``; Python cannot stop a thread, so the call
  keeps its thread until it returns (logged), and the pool stays bounded meanwhile. Daemon threads, so a stuck call
  never holds up the process's exit (``concurrent.futures`` joins its threads at exit).
- **Processes** (two warm, then always one idle spare while any are busy, at most ``processes``) run CPU-heavy
  built-ins (``Builtin(process=True)``: ``math``); one that has run past a second drops to the lowest CPU priority
  (and retires after its call), so stuck answers cannot starve ordinary ones on a small machine. Functions are
  referenced by ``module:function``, so nothing but names and JSON-like values crosses the pipe. A call past its
  limit gets its worker killed (SIGKILL: sympy stuck in C code ignores everything else); the next call
  starts a replacement. The start method is forkserver (spawn where there is none), never a plain fork of this
  threaded asyncio process; the forkserver preloads the built-in's module, so a replacement starts in
  milliseconds. A worker runs the function in its main thread, so a library's own SIGALRM timeouts work there.
  Workers are stopped by ``aclose()``; on Linux they also die with the server (``PR_SET_PDEATHSIG``).

Waiting for a free thread or worker is bounded by the same limit: past it the call fails as ``VerifierBusy`` (503,
it never ran; a gateway retries it later). The time limit itself counts from when the call starts running, so a
call queued behind stuck ones is not charged for their time. Code with its own time bound reads
``time_left_s()`` (``regex`` matches with it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import functools
import importlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollgate.verifier.errors import RequestError, VerifierBusy, VerifyTimeout

__all__ = ["DEFAULT_TIMEOUT_S", "Isolation", "VerifyLimits", "WorkerFunction", "time_left_s"]

log = logging.getLogger("rollgate.verifier")

DEFAULT_TIMEOUT_S = 30.0
# A call running longer than this is not an ordinary answer: its worker drops to the lowest CPU priority.
_DEMOTE_AFTER_S = 1.0
# A worker that has not said "ready" by then (the forkserver's first start imports sympy: ~2 s) never will.
_START_TIMEOUT_S = 60.0


def _default_threads() -> int:
    return min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor size, which this pool replaces


def _default_processes() -> int:
    # A cap, not a count: only ``_warm_processes()`` start with the first call; more are forked (milliseconds,
    # from the preloaded forkserver) only while every one is busy, so a few hostile answers stuck until their
    # time limit never keep an ordinary answer waiting.
    return max(8, 2 * (os.cpu_count() or 1))


def _warm_processes(cap: int) -> int:
    return min(2, os.cpu_count() or 1, cap)


class VerifyLimits(BaseModel):
    """How sync verify code runs: its time limit and the two pools' sizes.

        VerifyLimits(timeout_s=10)        # 10 s per verify call; the pools at their defaults
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    """Hard limit on one sync ``verify()`` call (``serve --verify-timeout-s``); past it the rollout fails as
    ``timeout`` (504). Also bounds the wait for a free thread or worker (past it: ``busy``, 503)."""
    threads: int = Field(default_factory=_default_threads, ge=1, le=1024)
    """Threads for the user's sync code (``serve --verify-threads``); default min(32, CPUs + 4)."""
    processes: int = Field(default_factory=_default_processes, ge=1, le=256)
    """Most worker processes for CPU-heavy built-ins such as ``math`` (``serve --verify-processes``); default
    max(8, 2 x CPUs). Two start with the first call; another is added only while all are busy. Each hostile
    answer holds one for up to ``timeout_s``."""


_local = threading.local()


def time_left_s(default: float = DEFAULT_TIMEOUT_S) -> float:
    """Seconds until the running verify call's time limit, or ``default`` outside a limited call."""
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return default
    return max(0.0, deadline - time.monotonic())


def _with_deadline(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   deadline: float | None) -> Any:
    _local.deadline = deadline
    try:
        return fn(*args, **kwargs)
    finally:
        _local.deadline = None


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


class WorkerFunction:
    """A built-in run in a worker process, named by ``module:function`` (what crosses the pipe).

    Called directly it runs here, like the function itself; ``Handler`` sends it to a worker instead.

        math = WorkerFunction("rollgate.verifier._math:math_verify")
        math(task, response)          # in this process
    """

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.fn = _resolve(ref)
        functools.update_wrapper(self, self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class _Threads:
    """At most ``size`` daemon threads, started on demand; each ``submit`` reserves an idle thread or starts one
    (the caller never submits more than ``size`` at once)."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._started < self.size:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()
        self._jobs.put((fn, future))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                del fn, future, job  # drop references while idle
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Idle threads exit; a stuck one is a daemon and dies with the process."""
        for _ in range(self._started):
            self._jobs.put(None)


def _release_from_thread(loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore) -> None:
    try:
        loop.call_soon_threadsafe(slots.release)
    except RuntimeError:  # the loop is closed: nobody waits for the slot any more
        pass


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A result that arrives after its caller timed out is dropped; this keeps asyncio from logging it as lost.
    if not future.cancelled():
        future.exception()


async def _take(slots: asyncio.Semaphore, timeout_s: float | None, what: str, size: int) -> None:
    if timeout_s is None or not slots.locked():
        await slots.acquire()
        return
    try:
        await asyncio.wait_for(slots.acquire(), timeout_s)
    except TimeoutError:
        raise VerifierBusy(
            f"no free verify {what} within {timeout_s:g}s: all {size} are busy with slow or stuck verify calls; "
            "try again later"
        ) from None


class _RemoteTraceback(Exception):
    """The worker's traceback, chained to the exception it raised so the server's log shows where."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n(in the worker process)\n{self.text}"


def _portable(exc: BaseException) -> BaseException:
    try:
        back: BaseException = pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return back


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us if the parent dies
    except (OSError, AttributeError):
        pass


def _worker_main(conn: Connection, ref: str) -> None:
    """A worker process: answer ``(ref, args, timeout_s)`` with ``(status, value, traceback)`` until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server decides when we stop
    _die_with_parent()
    functions: dict[str, Callable[..., Any]] = {}
    try:
        functions[ref] = _resolve(ref)
    except BaseException as exc:
        conn.send(("error", _portable(exc), traceback.format_exc()))
        return
    conn.send(("ready", os.getpid(), ""))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if message is None:
            return
        ref, args, timeout_s = message
        _local.deadline = time.monotonic() + timeout_s
        try:
            fn = functions.get(ref) or functions.setdefault(ref, _resolve(ref))
            reply: tuple[str, Any, str] = ("ok", fn(*args), "")
        except Exception as exc:
            reply = ("error", _portable(exc), traceback.format_exc())
        try:
            conn.send(reply)
        except Exception as exc:  # the result does not pickle
            conn.send(("error", _portable(exc), traceback.format_exc()))


def _roundtrip(conn: Connection, message: Any) -> Any:
    conn.send(message)
    return conn.recv()


def _stop(process: BaseProcess, grace_s: float) -> None:
    process.join(grace_s)
    if process.is_alive():
        process.kill()
        process.join(5)


def _stop_all(processes: list[BaseProcess], grace_s: float) -> None:
    for process in processes:
        _stop(process, grace_s)


class _Worker:
    __slots__ = ("conn", "demoted", "killed", "process")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.killed = False
        self.demoted = False

    def demote(self) -> None:
        """Lowest CPU priority for the rest of this worker's life (only root could raise it back)."""
        self.demoted = True
        try:
            if self.process.pid is not None:
                os.setpriority(os.PRIO_PROCESS, self.process.pid, 19)
        except (OSError, AttributeError):  # gone already, or a platform without setpriority
            pass

    def kill(self) -> None:
        """SIGKILL and reap in the background (an instant for a killed process, but never on the loop).

        The pipe is not closed here: an I/O thread may still be blocked reading it (it gets EOF now), and closing
        a descriptor under a reader lets its number be reused; it is closed when the last reference goes.
        """
        if self.killed:
            return
        self.killed = True
        self.process.kill()
        threading.Thread(target=_stop, args=(self.process, 5.0), name="rollgate-verify-reap", daemon=True).start()


class _Processes:
    """``size`` worker processes, all started (in the background) by the first call and each replaced as soon as
    it is killed, so a call finds a warm one whenever one is free; see the module docstring."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.warm = _warm_processes(size)
        # Ready workers; None means "a start failed": the caller that takes it fails with ``_start_error``.
        self._ready: asyncio.Queue[_Worker | None] = asyncio.Queue()
        self._busy: set[_Worker] = set()
        self._live = 0  # ready + busy + starting: never above size
        self._waiting = 0  # calls waiting for a worker
        self._starts: set[asyncio.Task[None]] = set()
        self._start_error = ""
        # One blocking send+recv per busy worker; the killed one's thread ends at its EOF, hence the spare room.
        self._io = _Threads(2 * size, "rollgate-verify-io")
        self._context: ForkServerContext | SpawnContext | None = None
        self._closed = False

    def pids(self) -> list[int]:
        ready = [w for w in self._ready._queue if w is not None]  # type: ignore[attr-defined]
        return [w.process.pid for w in (*ready, *self._busy) if w.process.pid is not None and not w.killed]

    def busy(self) -> int:
        return len(self._busy)

    def busy_pids(self) -> list[int]:
        return [w.process.pid for w in self._busy if w.process.pid is not None and not w.killed]

    def _ctx(self, ref: str) -> ForkServerContext | SpawnContext:
        if self._context is None:
            if "forkserver" not in multiprocessing.get_all_start_methods():
                self._context = multiprocessing.get_context("spawn")
            else:
                self._context = multiprocessing.get_context("forkserver")
                # Imported once in the forkserver, inherited by every worker it forks (ignored if it already runs).
                # The main module too when it has a name (python -m …): each worker imports it, as multiprocessing
                # does, and its imports are then already there.
                main_spec = getattr(sys.modules["__main__"], "__spec__", None)
                preload = [__name__, ref.partition(":")[0]]
                if main_spec is not None and main_spec.name not in preload:
                    preload.append(main_spec.name)
                self._context.set_forkserver_preload(preload)
        return self._context

    def _fill(self, ref: str, target: int | None = None) -> None:
        """Start workers until ``target`` (default: the warm count) are live; never more than ``size``."""
        target = min(self.size, self.warm if target is None else target)
        while self._live < target and not self._closed:
            self._live += 1
            task = asyncio.get_running_loop().create_task(self._start(ref), name="rollgate-verify-worker-start")
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)

    async def _start(self, ref: str) -> None:
        try:
            worker = await self._spawn(ref)
        except Exception as exc:
            self._live -= 1
            self._start_error = str(exc)
            log.error("%s", exc)
            self._ready.put_nowait(None)
            return
        except BaseException:
            self._live -= 1
            raise
        self._ready.put_nowait(worker)

    async def _spawn(self, ref: str) -> _Worker:
        ctx = self._ctx(ref)
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(theirs, ref), name="rollgate-verify-worker", daemon=True)
        # Blocking: the first start boots the forkserver and waits for its preload.
        await asyncio.to_thread(process.start)
        theirs.close()
        worker = _Worker(process, ours)
        try:
            status, value, where = await asyncio.wait_for(asyncio.to_thread(ours.recv), _START_TIMEOUT_S)
        except BaseException as exc:
            worker.kill()
            if isinstance(exc, (EOFError, OSError, TimeoutError)):
                raise RuntimeError(f"a verify worker process for {ref} did not start ({exc!r})") from None
            raise
        if status != "ready":
            worker.kill()
            raise RuntimeError(f"a verify worker process cannot load {ref}: {value}\n{where}")
        log.info("verify worker process %s started for %s", value, ref)
        return worker

    async def _take(self, ref: str, timeout_s: float) -> _Worker:
        try:
            worker = self._ready.get_nowait()
        except asyncio.QueueEmpty:
            # Every worker is busy or starting: enough for the busy ones and every call waiting, up to the cap.
            self._waiting += 1
            try:
                self._fill(ref, len(self._busy) + self._waiting)
                try:
                    worker = await asyncio.wait_for(self._ready.get(), timeout_s)
                except TimeoutError:
                    if not self._starts:
                        raise VerifierBusy(
                            f"no free verify worker process within {timeout_s:g}s: all {self.size} are busy with "
                            "slow or stuck verify calls (the verifier's --verify-processes); try again later"
                        ) from None
                    # Workers are still starting (the first start imports the built-in): that wait is bounded by
                    # the start timeout, and is not a sign of stuck calls.
                    worker = await self._ready.get()
            finally:
                self._waiting -= 1
        if worker is None:
            raise RuntimeError(self._start_error)
        return worker

    async def _wait(self, worker: _Worker, future: asyncio.Future[Any], timeout_s: float) -> Any:
        """The worker's answer within ``timeout_s``. A call still running after ``_DEMOTE_AFTER_S`` is lowered in
        CPU priority, so answers stuck on hostile input cannot starve the ordinary ones that keep arriving on a
        small machine; such a worker is retired after its call (its priority cannot be raised back)."""
        if timeout_s <= _DEMOTE_AFTER_S:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(future), _DEMOTE_AFTER_S)
        except TimeoutError:
            worker.demote()
        return await asyncio.wait_for(asyncio.shield(future), timeout_s - (time.monotonic() - started))

    async def run(self, ref: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        if self._closed:
            raise RuntimeError("the verifier is shutting down")
        self._fill(ref)
        worker = await self._take(ref, timeout_s)
        self._busy.add(worker)
        # Keep one warm worker spare (up to the cap), so the next call does not wait for a fork while every other
        # worker is stuck on a hostile answer.
        self._fill(ref, len(self._busy) + self._waiting + 1)
        healthy = False
        try:
            loop = asyncio.get_running_loop()
            future = asyncio.wrap_future(self._io.submit(functools.partial(_roundtrip, worker.conn,
                                                                           (ref, args, timeout_s))), loop=loop)
            future.add_done_callback(_retrieve)
            try:
                status, value, where = await self._wait(worker, future, timeout_s)
            except TimeoutError:
                log.warning("verify worker process %s ran past %gs: killed", worker.process.pid, timeout_s)
                raise VerifyTimeout(
                    f"verify ran past its time limit of {timeout_s:g}s (the verifier's --verify-timeout-s); its "
                    "worker process was killed and is being replaced"
                ) from None
            except (EOFError, OSError) as exc:
                raise RuntimeError(f"the verify worker process died ({exc!r})") from None
            healthy = True
        finally:
            self._busy.discard(worker)
            if healthy and not self._closed and not worker.demoted:
                self._ready.put_nowait(worker)
            else:
                worker.kill()
                self._live -= 1
                if not self._closed:
                    self._fill(ref)  # the replacement starts now, not when the next call needs it
        if status == "ok":
            return value
        if isinstance(value, BaseException):
            if where and not isinstance(value, RequestError):
                value.__cause__ = _RemoteTraceback(where)
            raise value
        raise RuntimeError(f"unexpected answer from a verify worker: {status!r}")

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._starts):
            task.cancel()
        if self._starts:
            await asyncio.wait(list(self._starts))
        idle: list[_Worker] = []
        while not self._ready.empty():
            worker = self._ready.get_nowait()
            if worker is not None:
                idle.append(worker)
        for worker in idle:
            try:
                worker.conn.send(None)  # finish and exit
            except OSError:
                pass
        for worker in list(self._busy):
            worker.kill()
        if idle:
            await asyncio.to_thread(_stop_all, [w.process for w in idle], 2.0)
            for worker in idle:
                worker.conn.close()
        self._io.close()


class Isolation:
    """The verifier's two pools and its time limit; see the module docstring. One per ``VerifierCore``, created
    idle: threads and processes start on the first call that needs them.

        isolation = Isolation(VerifyLimits(timeout_s=5))
        await isolation.in_thread(fn, (task, response), {}, timeout_s=5)
    """

    def __init__(self, limits: VerifyLimits | None = None) -> None:
        self.limits = limits or VerifyLimits()
        self._threads = _Threads(self.limits.threads, "rollgate-verify")
        self._thread_slots: asyncio.Semaphore | None = None
        self._processes: _Processes | None = None
        self.overran = 0
        """Thread calls that ran past their limit (each still holds its thread until it returns)."""

    def worker_pids(self) -> list[int]:
        """The worker processes alive now (tests check none is left after ``aclose``)."""
        return self._processes.pids() if self._processes is not None else []

    def busy_workers(self) -> int:
        """Worker processes running a call now."""
        return self._processes.busy() if self._processes is not None else 0

    def busy_pids(self) -> list[int]:
        """The worker processes running a call now."""
        return self._processes.busy_pids() if self._processes is not None else []

    async def in_thread(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                        timeout_s: float | None) -> Any:
        """``fn(*args, **kwargs)`` in a pool thread; ``VerifyTimeout`` past ``timeout_s`` (None: no limit)."""
        loop = asyncio.get_running_loop()
        if self._thread_slots is None:
            self._thread_slots = asyncio.Semaphore(self.limits.threads)
        slots = self._thread_slots
        await _take(slots, timeout_s, "thread", self.limits.threads)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        call = functools.partial(contextvars.copy_context().run, _with_deadline, fn, args, kwargs, deadline)
        try:
            done = self._threads.submit(call)
        except BaseException:
            slots.release()
            raise
        # The slot is free when the thread is, not when the caller stops waiting.
        done.add_done_callback(lambda _: _release_from_thread(loop, slots))
        future = asyncio.wrap_future(done, loop=loop)
        if timeout_s is None:
            return await future
        future.add_done_callback(_retrieve)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            self.overran += 1
            log.warning("a verify call (%s) ran past %gs; it keeps its thread until it returns", _name(fn), timeout_s)
            raise VerifyTimeout(
                f"verify ran past its time limit of {timeout_s:g}s (the verifier's --verify-timeout-s)"
            ) from None

    async def in_process(self, ref: str, args: tuple[Any, ...], *, timeout_s: float) -> Any:
        """``ref`` (``module:function``) called with ``args`` in a worker process; killed past ``timeout_s``."""
        if self._processes is None:
            self._processes = _Processes(self.limits.processes)
        return await self._processes.run(ref, args, timeout_s)

    async def aclose(self) -> None:
        """Stop the worker processes (idle ones asked, busy ones killed; all reaped) and the idle threads."""
        if self._processes is not None:
            await self._processes.aclose()
        self._threads.close()


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__
