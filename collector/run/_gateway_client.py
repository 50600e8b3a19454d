"""The gRPC side of the collector: check the agent, then ``Collect`` streams with flow control and reconnects.

Flow control: a slot is taken before a rollout is handed to a stream and given back when its result arrives (or
it is given up), so at most ``max_in_flight`` rollouts run at once, over every stream. Results come back in any
order and are matched by rollout id; ``on_result`` is called exactly once per spec.

Working ahead: a gateway that says ``runs_ahead`` takes a per-stream ``max_running``; the stream's share of
``max_in_flight`` runs there and as many rollouts again wait at the gateway, so a finished rollout's successor
starts there at once instead of after a round trip to the collector (which would otherwise idle every slot for
that round trip: milliseconds on one box, tens over a WAN). The shares sum to ``max_in_flight``, so the model
servers never see more than the user asked for. An older gateway (any that does not say so) means no working ahead.

Batching: a stream sends every rollout that is ready when it writes (its share of the queue, at most
``MAX_BATCH``) in one ``CollectRequest``, and reads ``CollectResponse`` messages of any size; it never waits to
fill a batch. Flow control, resends and duplicates still count rollouts, not messages.

Reconnect: when a stream breaks (gateway restart, network), its unanswered rollouts go back to the front of the
queue — another stream takes them, or the same one once it has reconnected (bounded exponential backoff with
jitter, for at most ``reconnect_timeout_s`` without a single answer). A result for a rollout that was already
answered (the resend raced the original) is dropped by id. Only when every gateway stays unreachable for the
whole budget are the remaining rollouts reported failed (stage ``gateway``, kind ``connection``).

A rollout still unanswered ``deadline_s`` (plus a grace) after it was sent is given up by the collector itself
(stage ``rollout``, kind ``timeout``): the gateway enforces the same deadline, this catches a gateway that never
answers at all. Such a rollout leaves its stream's books (it no longer takes room there), and once every rollout
is answered a stream the gateway has not ended within ``END_GRACE_S`` is cancelled rather than waited on.

    async with GatewayClient("127.0.0.1:50051") as client:
        agents = await client.list_agents()
        await client.collect(specs, agent="my_agent", deadline_s=1800, max_in_flight=16, on_result=cb)
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

import grpc
import grpc.aio

from rollgate.collector._json import dumps
from rollgate.collector.errors import GatewayRefused, GatewayUnreachable
from rollgate.collector.run._channels import MAX_MESSAGE_BYTES, Endpoint, TlsFiles, auth_metadata, open_endpoints
from rollgate.collector.run._rows import failed_result
from rollgate.collector.run._tasks import RolloutSpec
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc

__all__ = ["MAX_BATCH", "MAX_BATCH_BYTES", "GatewayClient", "OnResult", "to_request"]

OnResult = Callable[[RolloutSpec, pb.RolloutResult], None]
# Awaited before a spec takes a slot; False means "already done, do not send" (a resumed rollout).
Admit = Callable[[RolloutSpec], Awaitable[bool]]

_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Rollouts per CollectRequest at most: enough to cut per-message costs by an order of magnitude, small enough
# that one message stays far below gRPC's size limit for ordinary task rows.
MAX_BATCH = 64
# ... and at most about this many bytes of task and params JSON, so big rows (long documents, images) never make a
# message the gateway refuses (its limit is 64 MiB); a single row larger than this still goes, alone.
MAX_BATCH_BYTES = 8 * 1024 * 1024
# What a gateway that does not say its limit (an older one) is assumed to take: the gateway's default.
DEFAULT_GATEWAY_MESSAGE_BYTES = 64 * 1024 * 1024
_ENVELOPE_BYTES = 1024
# How long a stream may stay open once every rollout is answered (see ``_send``).
END_GRACE_S = 2.0
# How long the other gateways may take to answer ListAgents once the first has (see ``list_agents``).
LIST_GRACE_S = 1.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def to_request(spec: RolloutSpec, agent: str, deadline_s: float, training: bool = False) -> pb.RolloutRequest:
    return pb.RolloutRequest(
        rollout_id=spec.rollout_id,
        task_index=spec.task_index,
        repeat_index=spec.repeat_index,
        agent=agent,
        deadline_s=deadline_s,
        task_json=spec.row_json or dumps(spec.row),
        params_json=dumps(spec.params),
        prior_response_json=spec.prior_response_json,
        training=training,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


# How a stream that a gateway going away ends looks, depending on the moment: a killed process, a restart, a
# proxy in between. grpc's own text for them ("Internal error from Core", "Socket closed") says nothing to a user.
_CONNECTION_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.CANCELLED)


def _stream_lost(exc: grpc.aio.AioRpcError) -> str:
    """Why a Collect stream broke, in words: what the gateway did, not grpc's text (kept for other codes)."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in details:
        return "it is shutting down"
    if exc.code() in _CONNECTION_LOST:
        return "the connection was lost"
    return _describe(exc)


class GatewayClient:
    def __init__(
        self,
        address: str,
        *,
        connect_timeout_s: float = 10.0,
        tls: TlsFiles | None = None,
        reconnect_timeout_s: float = 300.0,
    ) -> None:
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.endpoints: list[Endpoint] = open_endpoints(address, tls)
        self.metadata = auth_metadata()
        self.reconnects = 0
        self.duplicates_dropped = 0
        # Messages on the Collect streams, each way: with rollouts counted elsewhere, they show the batching.
        self.messages_sent = 0
        self.messages_received = 0
        # The largest message the gateway takes (from ListAgents): a rollout whose request alone is larger fails
        # here, by itself, instead of breaking the stream for every rollout on it.
        self.max_message_bytes = DEFAULT_GATEWAY_MESSAGE_BYTES
        # The gateways honour CollectRequest.max_running, so rollouts may wait there (from ListAgents).
        self.runs_ahead = False
        # The most rollouts one stream holds at a gateway (the smallest any said; 0: none said).
        self.max_stream_rollouts = 0
        self._run: _Run | None = None

    def where(self, rollout_id: str) -> tuple[str, float] | None:
        """Where an unanswered rollout of the current ``collect`` is, in words, and the seconds since it was
        (last) handed to a stream or queued; None when it is not outstanding."""
        run = self._run
        if run is None or (entry := run.outstanding.get(rollout_id)) is None:
            return None
        age = time.monotonic() - entry[1]
        for wid, mine in run.on_stream.items():
            if rollout_id in mine:
                target = run.targets.get(wid, "?")
                if run.ahead:
                    return f"running at the gateway {target} (or waiting there for a free slot)", age
                return f"running at the gateway {target}", age
        return "waiting in the collector to be sent (a gateway stream is reconnecting or full)", age

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.channel.close()

    async def list_agents(self) -> list[pb.AgentInfo]:
        """The agents of the first gateway (in the order given) that answers; a refused token is an error of its own.

        Every gateway is asked at once, so what the run assumes of them (the message limit, working ahead) holds
        for all: the smallest limit wins, and rollouts are sent ahead only if every gateway said ``runs_ahead``.
        Once one has answered, the others get ``LIST_GRACE_S`` more; one silent by then counts as not running
        ahead (it may be an older gateway) and the run goes on with the others, as before.
        """
        asks = {asyncio.create_task(self._ask(endpoint)): i for i, endpoint in enumerate(self.endpoints)}
        answers: dict[int, pb.ListAgentsResponse | str] = {}
        loop = asyncio.get_running_loop()
        grace_ends: float | None = None
        pending = set(asks)
        try:
            while pending:
                timeout = None if grace_ends is None else max(grace_ends - loop.time(), 0.0)
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break  # the grace is over
                for task in done:
                    answers[asks[task]] = task.result()  # GatewayRefused propagates from here
                if grace_ends is None and any(isinstance(a, pb.ListAgentsResponse) for a in answers.values()):
                    grace_ends = loop.time() + LIST_GRACE_S
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        replies = [a for i in range(len(self.endpoints)) if isinstance(a := answers.get(i), pb.ListAgentsResponse)]
        problems = [f"{e.target}: {answers.get(i, 'no answer yet')}" for i, e in enumerate(self.endpoints)
                    if not isinstance(answers.get(i), pb.ListAgentsResponse)]
        if not replies:
            raise GatewayUnreachable(self.address, "; ".join(problems))
        for problem in problems:
            _log(f"warning: gateway {problem}; using the others")
        limits = [r.max_message_bytes or DEFAULT_GATEWAY_MESSAGE_BYTES for r in replies]
        self.max_message_bytes = min(*limits, MAX_MESSAGE_BYTES)
        # A gateway that did not answer may be an older one that would run everything it is sent.
        self.runs_ahead = not problems and all(r.runs_ahead for r in replies)
        self.max_stream_rollouts = min((r.max_stream_rollouts for r in replies if r.max_stream_rollouts), default=0)
        return list(replies[0].agents)

    async def _ask(self, endpoint: Endpoint) -> pb.ListAgentsResponse | str:
        """The gateway's ListAgents answer, or why there is none."""
        stub = pb_grpc.GatewayStub(endpoint.channel)
        try:
            reply: pb.ListAgentsResponse = await stub.ListAgents(
                pb.ListAgentsRequest(), timeout=self.connect_timeout_s, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REFUSED:
                raise GatewayRefused(endpoint.target, _describe(exc)) from None
            return _describe(exc)
        return reply

    async def collect(
        self,
        specs: Iterable[RolloutSpec],
        *,
        agent: str,
        deadline_s: float,
        max_in_flight: int,
        on_result: OnResult,
        admit: Admit | None = None,
        training: bool = False,
    ) -> None:
        """Run every spec through the gateway streams; ``on_result`` is called exactly once per spec.

        ``training``: every rollout in training mode (token ids and log-probs per model call)."""
        run = _Run(self, agent, deadline_s, max_in_flight, on_result)
        run.training = training
        self._run = run
        streams = [endpoint for endpoint in self.endpoints for _ in range(endpoint.streams)]
        cap = self.max_stream_rollouts
        if cap and max_in_flight > cap * len(streams):
            _log(f"warning: a gateway stream runs at most {cap} rollouts at once (gateway --max-stream-rollouts): "
                 f"{cap * len(streams)} of the {max_in_flight} asked for run at once over {len(streams)} stream(s)")
        workers = [asyncio.create_task(run.worker(endpoint, wid)) for wid, endpoint in enumerate(streams)]
        watchdog = asyncio.create_task(run.watchdog())
        try:
            await run.produce(specs, admit)
            await asyncio.gather(*workers)
        finally:
            for task in [*workers, watchdog]:
                task.cancel()
            await asyncio.gather(*workers, watchdog, return_exceptions=True)


class _Run:
    """The state one ``collect`` call shares between its producer, its stream workers and its watchdog."""

    def __init__(
        self, client: GatewayClient, agent: str, deadline_s: float, max_in_flight: int, on_result: OnResult
    ) -> None:
        self.client = client
        self.agent = agent
        self.deadline_s = deadline_s
        self.training = False
        self.max_running = max_in_flight
        self.ahead = client.runs_ahead
        # The gateway enforces deadline_s itself; the collector waits a little longer before giving up — and, when
        # rollouts wait at the gateway, for as long again, since one may wait a whole rollout for its place.
        self.give_up_s = (2 if self.ahead else 1) * deadline_s + max(5.0, 0.1 * deadline_s)
        self.on_result = on_result
        self.slots = asyncio.Semaphore(2 * max_in_flight if self.ahead else max_in_flight)
        self.outstanding: dict[str, tuple[RolloutSpec, float]] = {}  # id -> (spec, last sent at)
        self.queue: deque[RolloutSpec] = deque()  # taken (slot held) but not on a stream: new or to resend
        self.produced_all = False
        self.live_workers = sum(e.streams for e in client.endpoints)
        # The streams up now, by worker id: max_in_flight is shared among them, so one that is reconnecting
        # leaves its part to the others.
        self.connected = list(range(self.live_workers))
        # What each stream has sent and not had answered (its worker's ``mine``), for the watchdog.
        self.on_stream: dict[int, dict[str, RolloutSpec]] = {}
        self.targets: dict[int, str] = {}  # worker id -> its gateway's address (for messages)
        self.dead_reason: str | None = None
        self._changed = asyncio.Event()

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def notify(self) -> None:
        # A fresh event per change: every waiter captured the old one synchronously, so no wake-up is lost.
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def share(self, wid: int) -> int:
        """How many rollouts stream ``wid`` may have running: its part of ``max_in_flight`` among live streams."""
        if wid not in self.connected:
            return 0
        whole, rest = divmod(self.max_running, len(self.connected))
        return whole + (self.connected.index(wid) < rest)

    def room(self, wid: int, mine: dict[str, RolloutSpec]) -> int:
        """How many more rollouts stream ``wid`` may send now, at most ``MAX_BATCH``."""
        if not self.ahead:
            return MAX_BATCH  # the slots alone bound what runs
        share = self.share(wid)
        room = 2 * share - len(mine)
        # Refill in batches: the rollouts waiting at the gateway keep its slots busy meanwhile, and a message per
        # finished rollout costs both ends a wake-up and a write each.
        return min(room, MAX_BATCH) if room >= min(MAX_BATCH, max(share // 2, 1)) else 0

    @property
    def finished(self) -> bool:
        return self.produced_all and not self.outstanding

    def answer(self, spec: RolloutSpec, result: pb.RolloutResult) -> bool:
        if self.outstanding.pop(spec.rollout_id, None) is None:
            return False
        self.slots.release()
        self.on_result(spec, result)
        self.notify()
        return True

    def fail_everything(self, reason: str) -> None:
        self.dead_reason = reason
        for spec, _ in list(self.outstanding.values()):
            self.answer(spec, failed_result(spec.rollout_id, "gateway", "connection", reason))
        self.queue.clear()

    # -- producer ----------------------------------------------------------------------------------------------
    async def produce(self, specs: Iterable[RolloutSpec], admit: Admit | None) -> None:
        for spec in specs:
            if admit is not None and not await admit(spec):
                continue
            await self.slots.acquire()
            self.outstanding[spec.rollout_id] = (spec, time.monotonic())
            if self.dead_reason is not None:
                self.answer(spec, failed_result(spec.rollout_id, "gateway", "connection", self.dead_reason))
                continue
            self.queue.append(spec)
            self.notify()
        self.produced_all = True
        self.notify()

    async def next_batch(self, wid: int, mine: dict[str, RolloutSpec]) -> list[RolloutSpec]:
        """The specs stream ``wid`` sends next (resends first, then new work); empty once everything is answered.

        Waits only for the first one; then takes what else is ready now — this stream's share of the queue when
        several streams are live, so work still spreads over gateways — up to ``MAX_BATCH`` and the stream's room.
        """
        while True:
            room = self.room(wid, mine)
            if self.queue and room:
                share = -(-len(self.queue) // max(self.live_workers, 1))
                limit = min(share, room)
                batch: list[RolloutSpec] = []
                size = 0
                while self.queue and len(batch) < limit:
                    # The params are mostly a copy of the row's own, hence twice the row as the estimate.
                    cost = 2 * len(self.queue[0].row_json)
                    if batch and size + cost > MAX_BATCH_BYTES:
                        break
                    spec = self.queue.popleft()
                    if spec.rollout_id in self.outstanding:  # not given up by the watchdog meanwhile
                        batch.append(spec)
                        size += cost
                if batch:
                    return batch
                continue
            if self.finished or self.dead_reason is not None:
                return []
            await self._changed.wait()

    # -- one stream worker -------------------------------------------------------------------------------------
    async def worker(self, endpoint: Endpoint, wid: int) -> None:
        stub = pb_grpc.GatewayStub(endpoint.channel)
        self.targets[wid] = endpoint.target
        down_since: float | None = None
        attempt = 0
        while True:
            mine: dict[str, RolloutSpec] = {}
            self.on_stream[wid] = mine
            answered: list[int] = [0]
            call = stub.Collect(metadata=self.client.metadata)
            sender = asyncio.create_task(self._send(call, mine, wid))
            try:
                reason = await self._receive(call, mine, answered)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                call.cancel()
            if reason is None:
                return
            if wid in self.connected:
                self.connected.remove(wid)
            # Whatever this stream still owed goes back to the front, in order, for any stream to resend.
            owed = sorted((s for s in mine.values() if s.rollout_id in self.outstanding), key=lambda s: s.seq)
            self.queue.extendleft(reversed(owed))
            self.notify()
            if answered[0] or down_since is None:
                down_since = time.monotonic()
                attempt = 0
                if not self.finished:
                    _log(f"warning: gateway {endpoint.target} restarting or unavailable ({reason}); reconnecting "
                         f"and resending {len(owed)} rollout(s)")
            if self.finished:
                return
            if not await self._reconnect(endpoint, down_since, attempt, reason):
                return
            self.connected = sorted([*self.connected, wid])
            attempt += 1

    async def _reconnect(self, endpoint: Endpoint, down_since: float, attempt: int, reason: str) -> bool:
        remaining = self.client.reconnect_timeout_s - (time.monotonic() - down_since)
        if remaining > 0:
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(delay, remaining))
            remaining = self.client.reconnect_timeout_s - (time.monotonic() - down_since)
            try:
                await asyncio.wait_for(endpoint.channel.channel_ready(), timeout=max(remaining, 0.001))
                self.client.reconnects += 1
                return True
            except TimeoutError:
                pass
        self.live_workers -= 1
        _log(f"error: the gateway at {endpoint.target} stayed unreachable for "
             f"{self.client.reconnect_timeout_s:g} s ({reason})")
        if self.live_workers == 0:
            self.fail_everything(f"no gateway reachable for {self.client.reconnect_timeout_s:g} s: {reason}")
        self.notify()
        return False

    async def _send(self, call: grpc.aio.StreamStreamCall[pb.CollectRequest, pb.CollectResponse],
                    mine: dict[str, RolloutSpec], wid: int) -> None:
        agent, deadline_s, training = self.agent, self.deadline_s, self.training
        while True:
            batch = await self.next_batch(wid, mine)
            if not batch:
                await call.done_writing()
                if self.finished:
                    # Every rollout is answered, so the gateway should end the stream now. One still holding
                    # rollouts the watchdog gave up on never would: stop waiting for it after a moment.
                    await asyncio.sleep(END_GRACE_S)
                    call.cancel()
                return
            now = time.monotonic()
            requests = []
            for spec in batch:
                request = to_request(spec, agent, deadline_s, training)
                size = request.ByteSize()
                if size + _ENVELOPE_BYTES > self.client.max_message_bytes:
                    self._too_big(spec, size)
                    continue
                requests.append(request)
                mine[spec.rollout_id] = spec  # tracked before the write, so a failed write is resent
                self.outstanding[spec.rollout_id] = (spec, now)
            if not requests:
                continue
            self.client.messages_sent += 1
            try:
                await call.write(pb.CollectRequest(rollouts=requests, max_running=self.share(wid) if self.ahead else 0))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the stream is gone; the receiver sees why and the worker resends ``mine``

    def _too_big(self, spec: RolloutSpec, size: int) -> None:
        limit = self.client.max_message_bytes
        self.answer(spec, failed_result(
            spec.rollout_id, "input", "invalid_request",
            f"the task row makes a {size / 2**20:.1f} MiB request, over the gateway's message limit of "
            f"{limit / 2**20:.0f} MiB (raise it with gateway serve --max-message-mb)",
        ))

    async def _receive(self, call: grpc.aio.StreamStreamCall[pb.CollectRequest, pb.CollectResponse],
                       mine: dict[str, RolloutSpec], answered: list[int]) -> str | None:
        """None when the stream ended because everything is done, else why it broke (in words, for the log)."""
        shutting_down = False
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                self.client.messages_received += 1
                shutting_down = shutting_down or reply.shutting_down
                for result in reply.results:
                    spec = mine.pop(result.rollout_id, None)
                    if spec is None or not self.answer(spec, result):
                        self.client.duplicates_dropped += 1
                        continue
                    answered[0] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REFUSED:
                self.fail_everything(f"the gateway refused the stream: {_describe(exc)}")
                return None
            return "it is shutting down" if shutting_down else _stream_lost(exc)
        except asyncio.CancelledError:
            # The call, not this task, was cancelled: ``_send`` stopped waiting for a gateway that holds rollouts
            # the watchdog gave up on. Anything else is this task's own cancellation.
            if call.cancelled() and self.finished and not mine:
                return None
            raise
        if self.finished and not mine:
            return None
        return "the gateway ended the stream before answering every rollout"

    # -- the collector-side deadline ---------------------------------------------------------------------------
    async def watchdog(self) -> None:
        period = min(1.0, self.give_up_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for spec, sent_at in list(self.outstanding.values()):
                if now - sent_at > self.give_up_s:
                    # Off its stream's books too, so it no longer takes room there; a late answer is dropped.
                    for mine in self.on_stream.values():
                        mine.pop(spec.rollout_id, None)
                    self.answer(spec, failed_result(
                        spec.rollout_id, "rollout", "timeout",
                        f"no answer from the gateway within {self.give_up_s:g} s (deadline_s {self.deadline_s:g})",
                    ))
