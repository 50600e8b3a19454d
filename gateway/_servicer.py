"""``rollgate.v1.Gateway`` over gRPC: converts to and from the wire and calls ``GatewayCore``.

``Collect`` reads requests while rollouts run: one task per rollout (a request message may carry several), each
result sent as soon as it is done (any order, matched by rollout id). Results that finished together — whatever
is waiting when the stream writes, up to ``MAX_RESULTS_PER_MESSAGE`` or ``MAX_BATCH_BYTES`` — go out in one
message; no result ever waits for a batch to fill. A failed rollout is a result like any other, so the stream
goes on; when the client goes away, the outstanding rollouts are cancelled.

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

__all__ = ["MAX_BATCH_BYTES", "MAX_MESSAGE_BYTES", "MAX_RESULTS_PER_MESSAGE", "GatewayServicer", "outcome_to_pb",
           "request_from_pb"]

log = logging.getLogger("rollgate.gateway.servicer")
_READER_DONE = object()
_DRAIN = object()
# A batch is closed at this many results or bytes (whichever first); a single larger result still goes alone.
# The byte cap keeps several large responses (logprobs) well under the 64 MiB message limit of both ends.
MAX_RESULTS_PER_MESSAGE = 64
MAX_BATCH_BYTES = 8 * 1024 * 1024
# The default for ``gateway serve --max-message-mb``: the largest message taken or sent.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Room for the message's own framing around one result.
_ENVELOPE_BYTES = 1024
_OK = pb.ROLLOUT_STATUS_OK
_FAILED = pb.ROLLOUT_STATUS_FAILED


def request_from_pb(msg: pb.RolloutRequest) -> RolloutRequest:
    return RolloutRequest(
        rollout_id=msg.rollout_id, agent=msg.agent, task_json=msg.task_json, params_json=msg.params_json,
        task_index=msg.task_index, repeat_index=msg.repeat_index, deadline_s=msg.deadline_s,
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


class GatewayServicer(pb_grpc.GatewayServicer):
    """The thin wire layer over ``GatewayCore``."""

    def __init__(self, core: GatewayCore, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.core = core
        self.max_message_bytes = max_message_bytes
        # Each open Collect stream's waiting rollouts, by id of its deque; the gauge sums them when scraped, so
        # the per-rollout path keeps no count of its own.
        self._waiting: dict[int, deque[pb.RolloutRequest]] = {}
        core.metrics.waiting.set_function(lambda: sum(len(w) for w in self._waiting.values()))

    async def _one(self, msg: pb.RolloutRequest) -> tuple[pb.RolloutResult, int]:
        """The rollout's result and its size in bytes (measured once: the stream batches by it too)."""
        result = outcome_to_pb(await self.core.run_rollout(request_from_pb(msg)))
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
        limit = 0  # the client's latest max_running; 0: no limit
        running = 0
        pending = 0  # taken and not yet answered: running or waiting

        def room() -> bool:
            return not draining.is_set() and (limit == 0 or running < limit)

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
        dropped = 0  # waiting rollouts a drain gave back unstarted
        self._waiting[id(waiting)] = waiting
        try:
            while reading or pending:
                if drained and not pending:
                    break
                item: object = await queue.get()
                batch: list[pb.RolloutResult] = []
                size = 0
                failure: Exception | None = None
                # Take whatever else is already waiting (finished while the last message was written): one
                # message for all of it. Nothing is awaited here, so no result is held back.
                while True:
                    if item is _READER_DONE:
                        reading = False
                    elif item is _DRAIN:
                        drained = True
                        # Not started: the client resends them to another gateway.
                        dropped, pending = len(waiting), pending - len(waiting)
                        waiting.clear()
                    elif isinstance(item, Exception):
                        failure = item
                        break
                    else:
                        assert isinstance(item, tuple)
                        result, result_size = item
                        pending -= 1
                        batch.append(result)
                        size += result_size
                        if len(batch) >= MAX_RESULTS_PER_MESSAGE or size >= MAX_BATCH_BYTES:
                            break
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    yield pb.CollectResponse(results=batch)
                if failure is not None:
                    raise failure
            if drained and (reading or dropped):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down; resend the rest")
        finally:
            # Normal end: nothing is left. Client gone or stream error: cancel what is still running.
            drain_task.cancel()
            read_task.cancel()
            del self._waiting[id(waiting)]
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
        return pb.ListAgentsResponse(agents=agents, max_message_bytes=self.max_message_bytes, runs_ahead=True)
