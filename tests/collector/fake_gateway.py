"""An in-process fake ``rollgate.v1.Gateway`` on 127.0.0.1 (a real grpc.aio server) with scriptable behaviour.

It runs on its own event loop in a background thread, so a test can call the synchronous ``collect_main`` while
it serves. Knobs: random per-rollout latency, failures of chosen (task_index, repeat_index), a reward derived
from the task (``reward_by_repeat[repeat]``, ``reward_hint`` or ``task_index % 2``), results batched per message
(``batch_results``) or each sent twice (``duplicate_results``); it records the most rollouts ever in flight at
once and the message sizes.

    with FakeGateway(latency_s=(0.0, 0.02), fail={(1, 2)}) as gw:
        collect_main([..., f"+gateway={gw.address}"])
        assert gw.max_in_flight <= 8
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc

VERIFIER_VERSION = "fake-v1"


class _Servicer(pb_grpc.GatewayServicer):
    def __init__(self, gw: FakeGateway) -> None:
        self.gw = gw

    async def ListAgents(self, request: pb.ListAgentsRequest, context: Any) -> pb.ListAgentsResponse:
        return pb.ListAgentsResponse(agents=[pb.AgentInfo(name=n, model="fake-model") for n in self.gw.agents],
                                     runs_ahead=self.gw.runs_ahead)

    async def Rollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutResult:
        return await self.gw.run_one(request)

    async def Collect(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.CollectResponse]:
        out: asyncio.Queue[pb.RolloutResult | str | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(req: pb.RolloutRequest) -> None:
            await out.put(await self.gw.run_one(req))

        stream = self.gw.streams
        self.gw.streams += 1

        async def reader() -> None:
            async for message in request_iterator:
                self.gw.request_sizes.append(len(message.rollouts))
                self.gw.max_running[stream] = message.max_running
                for req in message.rollouts:
                    self.gw.received.append(req)
                    self.gw.by_id[req.rollout_id] = req
                    if (self.gw.break_after is not None and len(self.gw.received) >= self.gw.break_after
                            and not (self.gw.break_once and self.gw.breaks)):
                        self.gw.breaks += 1
                        await out.put(_BREAK)
                        return
                    task = asyncio.create_task(one(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
            await out.put(None)

        read_task = asyncio.create_task(reader())
        try:
            while True:
                result = await out.get()
                if result is None:
                    break
                if isinstance(result, str):
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "fake gateway going away")
                    return
                batch = [result]
                # batch_results: like the real gateway, send every result already waiting in one message.
                while self.gw.batch_results and not out.empty():
                    more = out.get_nowait()
                    if not isinstance(more, pb.RolloutResult):
                        out.put_nowait(more)  # a control item: handled on the next turn, after this batch
                        break
                    batch.append(more)
                for item in batch:
                    self.gw.in_flight -= 1
                    request = self.gw.by_id[item.rollout_id]
                    self.gw.completed.append((request.task_index, request.repeat_index))
                self.gw.response_sizes.append(len(batch))
                if self.gw.duplicate_results:
                    batch = batch + batch  # every result twice in the same message: the collector keeps one
                yield pb.CollectResponse(results=batch)
        finally:
            pending = [read_task, *tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


_BREAK = "break"


class _TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no stubs here
    """Refuses any call without ``authorization: Bearer <token>``, as the gateway's auth interceptor does."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}"
        self.seen: list[str | None] = []

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == self.expected:
            return await continuation(handler_call_details)

        async def deny_stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            yield  # pragma: no cover - makes this an async generator, as a stream handler must be

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        if handler_call_details.method.endswith("/Collect"):
            return grpc.stream_stream_rpc_method_handler(deny_stream)
        return grpc.unary_unary_rpc_method_handler(deny_unary)


class FakeGateway:
    def __init__(
        self,
        *,
        agents: tuple[str, ...] = ("my_agent",),
        latency_s: tuple[float, float] = (0.0, 0.0),
        fail: set[tuple[int, int]] | None = None,
        break_after: int | None = None,
        break_once: bool = False,
        token: str | None = None,
        seed: int = 0,
        batch_results: bool = False,
        duplicate_results: bool = False,
        runs_ahead: bool = False,
        hang: set[tuple[int, int]] | None = None,
    ) -> None:
        self.agents = agents
        self.latency_s = latency_s
        self.fail = fail or set()
        self.break_after = break_after
        self.break_once = break_once  # False: every stream breaks once break_after requests have arrived in all
        self.breaks = 0
        self.token = token  # when set, every call needs ``authorization: Bearer <token>`` (like the real gateway)
        self.tls: tuple[bytes, bytes, bytes | None] | None = None  # (cert, key, client CA) before __enter__
        self.rng = random.Random(seed)
        self.batch_results = batch_results
        self.duplicate_results = duplicate_results
        # Says runs_ahead in ListAgents, but still starts every rollout on arrival: in-flight counts then show
        # what the collector sent ahead, and ``max_running`` what it asked for.
        self.runs_ahead = runs_ahead
        self.hang = hang or set()  # (task_index, repeat_index) never answered: a wedged gateway
        self.streams = 0  # Collect calls so far
        self.max_running: dict[int, int] = {}  # per Collect call (in order of opening): the latest max_running
        self.request_sizes: list[int] = []  # rollouts per CollectRequest, in arrival order
        self.response_sizes: list[int] = []  # results per CollectResponse (before duplication)
        self.received: list[pb.RolloutRequest] = []
        self.completed: list[tuple[int, int]] = []  # (task_index, repeat_index) in the order answered
        self.by_id: dict[str, pb.RolloutRequest] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None

    async def run_one(self, req: pb.RolloutRequest) -> pb.RolloutResult:
        # Counted from receipt to reply: the collector may not have more in flight than its limit.
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        lo, hi = self.latency_s
        if hi > 0:
            await asyncio.sleep(self.rng.uniform(lo, hi))
        if (req.task_index, req.repeat_index) in self.hang:
            await asyncio.sleep(3600)  # until the stream ends
        task = json.loads(req.task_json)
        params = json.loads(req.params_json)
        if (req.task_index, req.repeat_index) in self.fail:
            return pb.RolloutResult(
                rollout_id=req.rollout_id,
                status=pb.ROLLOUT_STATUS_FAILED,
                error=pb.RolloutError(stage="model", kind="timeout", message="fake model timed out", attempts=3),
                params_json=req.params_json,
                attempts=3,
            )
        by_repeat = task.get("reward_by_repeat")  # a group with mixed rewards (GRPO signal)
        reward = float(by_repeat[req.repeat_index] if isinstance(by_repeat, list)
                       else task.get("reward_hint", req.task_index % 2))
        text = f"answer {req.task_index}/{req.repeat_index}"
        output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
        response = {"id": f"resp_{req.rollout_id}", "model": "fake-model", "output": output}
        # Like a NeMo Gym verifier: the task fields come back too, one of them changed; the collector must keep
        # the task's own value and count only what the verifier added.
        fields = {**task, "reward": reward, "accuracy": reward >= 0.5, "note": "text"}
        if "expected_answer" in task:
            fields["expected_answer"] = "tampered"
        fields["responses_create_params"] = {"tampered": True}
        return pb.RolloutResult(
            rollout_id=req.rollout_id,
            status=pb.ROLLOUT_STATUS_OK,
            reward=reward,
            verifier_fields_json=json.dumps(fields).encode(),
            response_json=json.dumps(response).encode(),
            output_json=json.dumps(output).encode(),
            timings=pb.Timings(model_s=0.01, tool_s=0.0, verify_s=0.001, total_s=0.011),
            verifier_version=VERIFIER_VERSION,
            model="fake-model",
            attempts=1,
            params_json=json.dumps({"agent_default": 1, **params}).encode(),
        )

    async def _start(self) -> None:
        interceptors = [_TokenCheck(self.token)] if self.token else []
        self._server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_GatewayServicer_to_server(_Servicer(self), self._server)
        if self.tls is not None:
            cert, key, client_ca = self.tls
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            port = self._server.add_secure_port("127.0.0.1:0", creds)
        else:
            port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)

    def __enter__(self) -> FakeGateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
