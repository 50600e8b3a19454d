"""``rollgate.v1.Gateway`` over gRPC: converts to and from the wire and calls ``GatewayCore``.

``Collect`` reads requests while rollouts run: one task per rollout (a request message may carry several), each
result sent as soon as it is done (any order, matched by rollout id). Results that finished together — whatever
is waiting when the stream writes, up to ``MAX_RESULTS_PER_MESSAGE``, ``MAX_BATCH_BYTES`` or the message limit,
whichever comes first — go out in one message; no result ever waits for a batch to fill, and a batch is closed
*before* a result would take it over the limit. A failed rollout is a result like any other, so the stream goes
on; when the client goes away, the outstanding rollouts are cancelled. A rollout task that raises (a bug) is a
failed result too (stage ``gateway``, kind ``exception``), never a stream left waiting for it.

Backpressure: a stream holds at most ``max_stream_rollouts`` rollouts at once (running, waiting for the client's
``max_running``, or finished and not yet sent). At that mark it stops reading the request stream, so gRPC's flow
control holds the client back instead of the gateway queueing without end; it reads again as results go out.
At most that many run at once even when the client asked for none to wait (``max_running`` 0).

Draining (SIGTERM): a stream starts nothing new, sends the results of what it started, then ends with
UNAVAILABLE so the client resends the rest to another gateway (or ends normally if the client had finished).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson

from rollgate.gateway._agent import GatewayCore
from rollgate.gateway._outcome import RolloutOutcome, RolloutRequest
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc

__all__ = ["MAX_BATCH_BYTES", "MAX_MESSAGE_BYTES", "MAX_RESULTS_PER_MESSAGE", "MAX_STREAM_ROLLOUTS", "GatewayServicer",
           "outcome_to_pb", "request_from_pb"]

log = logging.getLogger("rollgate.gateway.servicer")
_READER_DONE = object()
_DRAIN = object()
# A batch is closed at this many results or bytes (whichever first); a single larger result still goes alone.
# The byte cap keeps several large responses (logprobs) well under the 64 MiB message limit of both ends.
MAX_RESULTS_PER_MESSAGE = 64
MAX_BATCH_BYTES = 8 * 1024 * 1024
# The default for ``gateway serve --max-message-mb``: the largest message taken or sent.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The default for ``gateway serve --max-stream-rollouts``: twice a large run's share of one stream (the collector
# sends as many rollouts ahead as it has running), so it bounds memory without slowing such a run.
MAX_STREAM_ROLLOUTS = 4096
# Room for the message's own framing around one result.
_ENVELOPE_BYTES = 1024
# A result's own framing inside a CollectResponse: its field tag and length varint.
_RESULT_FRAMING_BYTES = 6
_OK = pb.ROLLOUT_STATUS_OK
_FAILED = pb.ROLLOUT_STATUS_FAILED


def request_from_pb(msg: pb.RolloutRequest) -> RolloutRequest:
    return RolloutRequest(
        rollout_id=msg.rollout_id, agent=msg.agent, task_json=msg.task_json, params_json=msg.params_json,
        task_index=msg.task_index, repeat_index=msg.repeat_index, deadline_s=msg.deadline_s,
        prior_response_json=msg.prior_response_json, training=msg.training,
    )


def _json(value: Any) -> bytes:
    return orjson.dumps(value) if value is not None else b""


def _response_and_output(out: RolloutOutcome) -> tuple[bytes, bytes]:
    """The response and trajectory as JSON, the trajectory serialised once when the response holds it."""
    output = orjson.dumps(out.output)
    response = out.response
    if response is None:
        return b"", output
    if response.get("output") is out.output:
        # The response embeds the very same list: splice its bytes instead of encoding it a second time. The
        # key keeps its place, so the bytes equal ``orjson.dumps(response)``.
        return orjson.dumps({**response, "output": orjson.Fragment(output)}), output
    return orjson.dumps(response), output


def outcome_to_pb(out: RolloutOutcome) -> pb.RolloutResult:
    t = out.timings
    # Empty response bytes on failure: there is no complete response to record.
    response_json, output_json = _response_and_output(out)
    result = pb.RolloutResult(
        rollout_id=out.rollout_id,
        status=_OK if out.error is None else _FAILED,
        verifier_fields_json=_json(out.verifier_fields),
        response_json=response_json,
        output_json=output_json,
        verifier_version=out.verifier_version,
        model=out.model,
        attempts=out.attempts,
        truncated=out.truncated,
        params_json=_json(out.params),
    )
    if out.policy_versions:
        result.policy_versions.extend(v or "" for v in out.policy_versions)
    # Set in place: building a Timings / RolloutError message and copying it in costs an extra message each.
    timings = result.timings
    timings.model_s = t.model_s
    timings.tool_s = t.tool_s
    timings.verify_s = t.verify_s
    timings.total_s = t.total_s
    if out.reward is not None:
        result.reward = out.reward
    if out.error is not None:
        e, error = out.error, result.error
        error.stage = e.stage
        error.kind = e.kind
        error.message = e.message
        error.http_status = e.http_status
        error.attempts = e.attempts
    return result


def _internal_failure(rollout_id: str, exc: Exception) -> pb.RolloutResult:
    """A failed result for a rollout whose task raised (a gateway bug): the stream still answers it."""
    log.error("rollout %s: unexpected error in the gateway", rollout_id, exc_info=exc)
    failed = pb.RolloutResult(rollout_id=rollout_id, status=_FAILED)
    error = failed.error
    error.stage, error.kind = "gateway", "exception"
    # The text goes to the user's failures file: enough to report the bug, and bounded.
    error.message = f"internal error in the gateway: {type(exc).__name__}: {exc}"[:1000]
    return failed


class GatewayServicer(pb_grpc.GatewayServicer):
    """The thin wire layer over ``GatewayCore``."""

    def __init__(self, core: GatewayCore, *, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_stream_rollouts: int = MAX_STREAM_ROLLOUTS) -> None:
        if max_stream_rollouts < 1:
            raise ValueError(f"max_stream_rollouts must be at least 1, got {max_stream_rollouts}")
        self.core = core
        self.max_message_bytes = max_message_bytes
        self.max_stream_rollouts = max_stream_rollouts
        # A result message's body stays under this (the batch is closed before a result would pass it).
        self._batch_budget = min(MAX_BATCH_BYTES, max_message_bytes - _ENVELOPE_BYTES)
        # Each open Collect stream's waiting rollouts, by id of its deque; the gauge sums them when scraped, so
        # the per-rollout path keeps no count of its own.
        self._waiting: dict[int, deque[pb.RolloutRequest]] = {}
        core.metrics.waiting.set_function(lambda: sum(len(w) for w in self._waiting.values()))

    async def _one(self, msg: pb.RolloutRequest) -> tuple[pb.RolloutResult, int]:
        """The rollout's result and its size in bytes (measured once: the stream batches by it too).

        Never raises but ``CancelledError``: the stream counts on one result per rollout it took.
        """
        try:
            result = outcome_to_pb(await self.core.run_rollout(request_from_pb(msg)))
        except Exception as exc:  # a bug: one failed rollout, not a stream that waits for it forever
            result = _internal_failure(msg.rollout_id, exc)
        size = result.ByteSize()
        if size + _ENVELOPE_BYTES > self.max_message_bytes:
            # Sent as it is, it would end the whole stream; as a failed rollout, only this one is lost.
            result = self._too_big(result, size)
            size = result.ByteSize()
        return result, size

    def _too_big(self, result: pb.RolloutResult, size: int) -> pb.RolloutResult:
        limit_mib = self.max_message_bytes / 2**20
        log.warning("rollout %s: its result is %.1f MiB, over the %.0f MiB message limit; sent as failed",
                    result.rollout_id, size / 2**20, limit_mib)
        failed = pb.RolloutResult(rollout_id=result.rollout_id, status=_FAILED, model=result.model,
                                  attempts=result.attempts, verifier_version=result.verifier_version)
        failed.timings.CopyFrom(result.timings)
        error = failed.error
        error.stage, error.kind = "gateway", "invalid_response"
        error.message = (f"the rollout's result is {size / 2**20:.1f} MiB, over the gateway's message limit of "
                         f"{limit_mib:.0f} MiB (gateway serve --max-message-mb)")
        return failed

    async def Collect(  # noqa: N802 (generated name)
        self, request_iterator: AsyncIterator[pb.CollectRequest], context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.CollectResponse]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        # Rollouts sent ahead of the client's ``max_running`` wait here, in order, for a running one to end.
        waiting: deque[pb.RolloutRequest] = deque()
        cap = self.max_stream_rollouts
        limit = 0  # the client's latest max_running; 0: no limit of its own
        running = 0
        pending = 0  # taken and not yet sent back: running, waiting, or finished in ``queue``
        # Set while the stream holds fewer than ``cap`` rollouts: the reader waits on it before reading more.
        space = asyncio.Event()
        space.set()

        def room() -> bool:
            # The cap bounds the tasks too: one request message may carry more rollouts than it.
            return not draining.is_set() and running < (min(limit, cap) if limit else cap)

        async def run(msg: pb.RolloutRequest) -> None:
            # The next waiting rollout starts in this same task the moment this one ends: no hop through the
            # reader, and no new task per rollout while the stream is saturated.
            nonlocal running
            try:
                while True:
                    queue.put_nowait(await self._one(msg))
                    running -= 1
                    if not waiting or not room():
                        return
                    running += 1
                    msg = waiting.popleft()
            except BaseException:
                running -= 1
                raise

        def start(msg: pb.RolloutRequest) -> None:
            nonlocal running
            running += 1
            task = asyncio.create_task(run(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        draining = self.core.draining
        if draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down")

        async def reader() -> None:
            nonlocal pending, limit
            try:
                async for req in request_iterator:
                    if draining.is_set():
                        return  # not started: the client sees UNAVAILABLE and resends elsewhere
                    limit = req.max_running
                    pending += len(req.rollouts)
                    waiting.extend(req.rollouts)
                    while waiting and room():
                        start(waiting.popleft())
                    if pending >= cap:
                        # Full: read nothing more until results have gone out. The unread messages stay in
                        # gRPC's flow-control window, and the client's writes wait.
                        space.clear()
                        await space.wait()
            except Exception as exc:  # the request stream broke: end the call with that error
                queue.put_nowait(exc)
            queue.put_nowait(_READER_DONE)

        async def on_drain() -> None:
            await draining.wait()
            queue.put_nowait(_DRAIN)

        read_task = asyncio.create_task(reader())
        drain_task = asyncio.create_task(on_drain())
        reading = True
        drained = False
        announce = False  # the client is yet to be told the gateway is shutting down
        dropped = 0  # waiting rollouts a drain gave back unstarted
        self._waiting[id(waiting)] = waiting
        self.core.streams.enter()
        budget = self._batch_budget
        carried: object = None  # a result that did not fit the last message: the next one starts with it
        try:
            while reading or pending:
                if drained and not pending:
                    break
                item: object = carried if carried is not None else await queue.get()
                carried = None
                batch: list[pb.RolloutResult] = []
                size = 0
                failure: Exception | None = None
                # Take whatever else is already waiting (finished while the last message was written): one
                # message for all of it. Nothing is awaited here, so no result is held back.
                while True:
                    if item is _READER_DONE:
                        reading = False
                    elif item is _DRAIN:
                        drained = announce = True
                        # Not started: the client resends them to another gateway.
                        dropped, pending = len(waiting), pending - len(waiting)
                        waiting.clear()
                    elif isinstance(item, Exception):
                        failure = item
                        break
                    else:
                        assert isinstance(item, tuple)
                        result, result_size = item
                        cost = result_size + _RESULT_FRAMING_BYTES
                        if batch and size + cost > budget:
                            # Sent together they would pass the message limit and end the stream: this one
                            # opens the next message (alone, ``_one`` made sure it fits).
                            carried = item
                            break
                        batch.append(result)
                        size += cost
                        if len(batch) >= MAX_RESULTS_PER_MESSAGE or size >= budget:
                            break
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                if batch or announce:
                    yield pb.CollectResponse(results=batch, shutting_down=announce)
                    announce = False
                    # Counted as sent only now: until the client has taken them they still hold memory here.
                    pending -= len(batch)
                    if pending < cap:
                        space.set()
                if failure is not None:
                    raise failure
            if drained and (reading or dropped):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down; resend the rest")
        finally:
            # Normal end: nothing is left. Client gone or stream error: cancel what is still running.
            drain_task.cancel()
            read_task.cancel()
            del self._waiting[id(waiting)]
            self.core.streams.leave()
            for task in list(tasks):
                task.cancel()
            if tasks:
                log.info("Collect ended with %d rollouts in flight; cancelled", len(tasks))
            await asyncio.gather(read_task, drain_task, *tasks, return_exceptions=True)

    async def Rollout(  # noqa: N802
        self, request: pb.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.RolloutResult:
        if self.core.draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down")
        result, _ = await self._one(request)
        return result

    async def ListAgents(  # noqa: N802
        self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ListAgentsResponse:
        agents = [
            pb.AgentInfo(name=name, model=cfg.model.name, api=cfg.model.api, model_base_urls=cfg.model.base_urls,
                         verifier_url=cfg.verifier_url, max_steps=cfg.max_steps)
            for name, cfg in sorted(self.core.config.agents.items())
        ]
        return pb.ListAgentsResponse(agents=agents, max_message_bytes=self.max_message_bytes, runs_ahead=True,
                                     max_stream_rollouts=self.max_stream_rollouts)
