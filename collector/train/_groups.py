"""Rollout groups streamed to a trainer as they complete: the collector's machinery as a Python API.

An RL trainer (GRPO and kin) wants a task's K rollouts together, as soon as all K are done, not a file in input
order at the end of a run. ``GroupStream`` sends tasks through a gateway's ``Collect`` streams (the CLI's client:
flow control, reconnects, exactly-once by rollout id) and yields each ``Group`` when its last rollout arrives,
in completion order. Its rows are exactly the rows ``ng_collect_rollouts`` writes.

Rules, as in the CLI:
- A group with a failed rollout is never yielded (a failure is not a reward of 0): it goes to ``on_failure`` (or
  the ``failures`` list) with every row of the group, the failed ones carrying ``error``.
- ``drop_uniform=True`` drops groups whose rewards are all equal (no GRPO signal); they are counted.
- ``policy_ok`` bounds policy lag: a group any of whose model calls was served by a policy version it rejects
  (``_rollout.policy_versions``, from the agent's ``model.version``) is dropped as stale and counted, e.g.
  ``policy_ok=lambda v: v is not None and v >= "iter_004"`` after ``rollgate gateway set … +model.version=iter_005``.
- ``want=N`` ends the stream after exactly N yielded groups: a new task starts only while the groups yielded or
  kept for yielding plus those still running are fewer than N, so a dropped or failed group is refilled and no
  rollout is run for a group that could not be used.
- Backpressure: at most ``max_in_flight`` rollouts run (plus as many waiting at the gateway when it works
  ahead) and at most ``buffer_groups`` finished groups wait for the consumer; while they do, no new task
  starts. A slow consumer therefore bounds memory (at most ``max_in_flight`` groups partly done, their rows held
  until each is whole, and ``buffer_groups`` done) instead of growing a queue.

Tasks are rows like an input JSONL file's (``responses_create_params`` and the verifier's fields); the iterable
is read lazily and may be endless (``itertools.cycle``). Task indices count from 0 in the order read.

    async with GroupStream("127.0.0.1:50051", "my_rl_agent", tasks, group_size=8, want=64,
                           drop_uniform=True) as stream:
        async for group in stream:
            batch.append(group)        # group.rows: the 8 rows; group.rewards: their rewards
    stream.stats                       # kept, dropped_uniform, failed, rollouts
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rollgate.collector._json import RawJSON, dumps
from rollgate.collector.errors import UnknownAgentError
from rollgate.collector.run._channels import TlsFiles
from rollgate.collector.run._gateway_client import GatewayClient
from rollgate.collector.run._ids import rollout_id
from rollgate.collector.run._rows import build_row
from rollgate.collector.run._tasks import RolloutSpec, effective_params, task_fields
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb

__all__ = ["Group", "GroupFailure", "GroupStream", "StreamStats"]


@dataclass(frozen=True)
class Group:
    """A task's rollouts, all succeeded: ``rows`` in repeat order, as the CLI writes them.

        async for group in stream:
            texts = [row["output"] for row in group.rows]; rewards = group.rewards
    """

    task_index: int
    task: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def rewards(self) -> list[float]:
        return [float(row["reward"]) for row in self.rows]


@dataclass(frozen=True)
class GroupFailure:
    """A task whose group had at least one failed rollout: every row, the failed ones with ``error``.

        GroupStream(..., on_failure=lambda f: log.warning("task %d: %s", f.task_index, f.errors))
    """

    task_index: int
    task: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [row["error"] for row in self.rows if "error" in row]


@dataclass
class StreamStats:
    """What a stream did so far (groups by outcome, rollouts answered).

        print(stream.stats.kept, stream.stats.dropped_uniform, stream.stats.failed)
    """

    kept: int = 0
    dropped_uniform: int = 0
    dropped_stale: int = 0
    failed: int = 0
    rollouts: int = 0
    tasks_started: int = 0


@dataclass
class _Pending:
    task: dict[str, Any]
    rows: list[dict[str, Any] | None]
    ok: list[bool] = field(default_factory=list)
    left: int = 0


class GroupStream:
    """Stream groups of ``group_size`` rollouts per task through the gateway at ``gateway`` (see the module doc).

    ``overrides`` are ``responses_create_params`` overrides, as the CLI's ``+responses_create_params.*``; an
    integer ``seed`` becomes ``seed + repeat`` per repeat. ``training=True`` runs every rollout in training mode
    (token ids and log-probs per model call), as the CLI's ``+training=true``. ``gateway`` takes what the CLI's
    ``+gateway`` takes (several addresses, ``dns:///``); the token comes from ``ROLLGATE_TOKEN``.

        async with GroupStream("127.0.0.1:50051", "my_rl_agent", tasks, group_size=8, want=64) as stream:
            async for group in stream:
                train_on(group.rows, group.rewards)
    """

    def __init__(
        self,
        gateway: str,
        agent: str,
        tasks: Iterable[Mapping[str, Any]],
        *,
        group_size: int,
        want: int | None = None,
        drop_uniform: bool = False,
        max_in_flight: int = 64,
        buffer_groups: int = 16,
        overrides: Mapping[str, Any] | None = None,
        deadline_s: float = 1800.0,
        tls: TlsFiles | None = None,
        on_failure: Callable[[GroupFailure], None] | None = None,
        policy_ok: Callable[[str | None], bool] | None = None,
        training: bool = False,
    ) -> None:
        if group_size < 1 or max_in_flight < 1 or buffer_groups < 1 or (want is not None and want < 1):
            raise ValueError("group_size, max_in_flight, buffer_groups and want must be at least 1")
        self.agent = agent
        self.group_size = group_size
        self.want = want
        self.drop_uniform = drop_uniform
        self.policy_ok = policy_ok
        self.training = training
        self.max_in_flight = max_in_flight
        self.buffer_groups = buffer_groups
        self.overrides = dict(overrides or {})
        self.deadline_s = deadline_s
        self.stats = StreamStats()
        self.failures: list[GroupFailure] = []
        self._on_failure = on_failure if on_failure is not None else self.failures.append
        self._tasks = iter(tasks)
        self._client = GatewayClient(gateway, tls=tls)
        self._pending: dict[int, _Pending] = {}
        self._ready: deque[Group] = deque()
        self._changed = asyncio.Event()
        self._run: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def __aenter__(self) -> GroupStream:
        try:
            names = [a.name for a in await self._client.list_agents()]
            if self.agent not in names:
                raise UnknownAgentError(self.agent, self._client.address, names)
        except BaseException:
            await self._client.close()
            raise
        self._run = asyncio.create_task(self._client.collect(
            self._specs(), agent=self.agent, deadline_s=self.deadline_s, max_in_flight=self.max_in_flight,
            on_result=self._on_result, admit=self._admit, training=self.training))
        self._run.add_done_callback(lambda _task: self._wake())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: rollouts still running are abandoned (their streams close, the gateway cancels them)."""
        self._closed = True
        self._wake()
        if self._run is not None and not self._run.done():
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
        await self._client.close()

    # -- the consumer's side -----------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Group]:
        return self

    async def __anext__(self) -> Group:
        if self._run is None:
            raise RuntimeError("use GroupStream as `async with GroupStream(...) as stream`")
        while not self._ready:
            if self._run.done():
                self._run.result()  # the client's own error (gateway unreachable, refused …) surfaces here
                raise StopAsyncIteration
            changed = self._changed
            await changed.wait()
        group = self._ready.popleft()
        self._wake()  # room in the buffer: the producer may start another task
        return group

    # -- the producer's side -----------------------------------------------------------------------------------
    def _wake(self) -> None:
        # A fresh event per change (as the client's): every waiter holds the old one, so no wake-up is lost.
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _done(self) -> bool:
        return self._closed or (self.want is not None and self.stats.kept >= self.want)

    def _specs(self) -> Iterator[RolloutSpec]:
        # Pulled by the client's producer one rollout at a time; ``_admit`` does the waiting (a generator cannot).
        for task_index in itertools.count():
            if self._done():
                return
            try:
                task = next(self._tasks)
            except StopIteration:
                return
            row = _check_task(task_index, task)
            self._pending[task_index] = _Pending(task=row, rows=[None] * self.group_size, left=self.group_size)
            row_json = dumps(row)
            for r in range(self.group_size):
                params = effective_params(row["responses_create_params"], self.overrides, r)
                yield RolloutSpec(seq=task_index * self.group_size + r, task_index=task_index, repeat_index=r,
                                  rollout_id=rollout_id(task_index, row, params, r, self.agent), row=row,
                                  params=params, row_json=row_json)

    async def _admit(self, spec: RolloutSpec) -> bool:
        """Awaited before each rollout takes a slot. A task's first rollout waits while the consumer's buffer is
        full or while the groups kept and running already make ``want``; the task is dropped unstarted if the
        stream ends meanwhile. Its other rollouts follow it."""
        if spec.repeat_index:
            return spec.task_index in self._pending
        while not self._done() and (len(self._ready) >= self.buffer_groups or self._no_room_for(spec)):
            changed = self._changed
            await changed.wait()
        if self._done():
            del self._pending[spec.task_index]
            return False
        self.stats.tasks_started += 1
        return True

    def _no_room_for(self, spec: RolloutSpec) -> bool:
        # The groups kept or running besides this one (already in _pending) leave no place for it under ``want``.
        return self.want is not None and self.stats.kept + len(self._pending) - 1 >= self.want

    def _on_result(self, spec: RolloutSpec, result: pb.RolloutResult) -> None:
        pending = self._pending.get(spec.task_index)
        if pending is None or pending.rows[spec.repeat_index] is not None:
            return
        built = build_row(spec, result, self.agent)
        # The CLI splices the gateway's JSON into its output line unparsed; a trainer gets plain values.
        pending.rows[spec.repeat_index] = {k: v.value() if isinstance(v, RawJSON) else v for k, v in built.row.items()}
        pending.ok.append(built.ok)
        pending.left -= 1
        self.stats.rollouts += 1
        if pending.left:
            return
        del self._pending[spec.task_index]
        rows = [row for row in pending.rows if row is not None]
        if not all(pending.ok):
            self.stats.failed += 1
            self._on_failure(GroupFailure(spec.task_index, pending.task, rows))
        elif self.policy_ok is not None and not all(
                self.policy_ok(v) for row in rows for v in row["_rollout"].get("policy_versions") or [None]):
            self.stats.dropped_stale += 1
        elif self.drop_uniform and len({row.get("reward") for row in rows}) == 1:
            self.stats.dropped_uniform += 1
        else:
            # _admit keeps kept + running <= want, so this never passes ``want``.
            self.stats.kept += 1
            self._ready.append(Group(spec.task_index, pending.task, rows))
        self._wake()


def _check_task(task_index: int, task: Mapping[str, Any]) -> dict[str, Any]:
    """A task row as the CLI's input checker would take it, or a ValueError naming the task."""
    if not isinstance(task, Mapping):
        raise ValueError(f"task {task_index}: expected an object (a dict), got {type(task).__name__}")
    params = task.get("responses_create_params")
    if not isinstance(params, Mapping):
        raise ValueError(f"task {task_index}: 'responses_create_params' must be an object")
    if "input" not in params:
        raise ValueError(f"task {task_index}: 'responses_create_params.input' is missing")
    return task_fields(dict(task))
