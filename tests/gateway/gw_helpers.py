"""Helpers for gateway tests: a gateway config for the fakes, a task row, a live gRPC gateway, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rollgate.gateway import GatewayConfig, GatewayCore, GatewayMetrics, Security, create_server
from rollgate.gateway._probes import start_probes
from rollgate.gateway._server import MAX_MESSAGE_BYTES
from rollgate.gateway._servicer import MAX_STREAM_ROLLOUTS
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc


def make_config(model_url: str | list[str], verifier_url: str, **agent: Any) -> GatewayConfig:
    """One agent ``a`` (plus overrides); tiny retry waits so retry tests are quick."""
    api = agent.pop("api", "chat_completions")
    urls = model_url if isinstance(model_url, list) else [model_url]
    model = {"base_urls": urls, "name": "fake-model", "api": api, **agent.pop("model", {})}
    cfg: dict[str, Any] = {
        "kind": "tool_calling",
        "model": model,
        "verifier_url": verifier_url,
        "retries": {"attempts": 3, "initial_wait_s": 0.001, "max_wait_s": 0.01, "jitter_s": 0.001},
        "timeouts": {"model_s": 10, "tool_s": 10, "verify_s": 10, "rollout_s": 30},
    }
    for key, value in agent.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) and isinstance(value, dict) else value
    return GatewayConfig.model_validate({"agents": {"a": cfg}})


def task(text: str, expected: str = "", **extra: Any) -> dict[str, Any]:
    return {"responses_create_params": {"input": text}, "expected_answer": expected, **extra}


def req(rid: str, t: dict[str, Any], agent: str = "a", deadline_s: float = 0.0) -> pb.RolloutRequest:
    return pb.RolloutRequest(rollout_id=rid, agent=agent, task_json=orjson.dumps(t),
                             params_json=orjson.dumps(t["responses_create_params"]), deadline_s=deadline_s)


@dataclass
class Live:
    """A running gateway: its stub, ports, core and metrics."""

    stub: pb_grpc.GatewayStub
    port: int
    metrics_port: int
    core: GatewayCore
    channel: grpc.aio.Channel

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@asynccontextmanager
async def live_gateway(config: GatewayConfig, security: Security | None = None,
                       channel: Callable[[int], grpc.aio.Channel] | None = None,
                       max_message_bytes: int = MAX_MESSAGE_BYTES,
                       max_stream_rollouts: int = MAX_STREAM_ROLLOUTS) -> AsyncIterator[Live]:
    """A real gRPC gateway and its HTTP metrics port on 127.0.0.1, with a fresh metrics registry."""
    metrics = GatewayMetrics(registry=CollectorRegistry())
    async with GatewayCore(config, metrics=metrics) as core:
        server, port = await create_server(config, "127.0.0.1:0", core=core, security=security,
                                           max_message_bytes=max_message_bytes,
                                           max_stream_rollouts=max_stream_rollouts)
        runner, mport = await start_probes(core, "127.0.0.1", 0, ready=lambda: True)
        try:
            ch = channel(port) if channel is not None else grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            async with ch:
                yield Live(pb_grpc.GatewayStub(ch), port, mport, core, ch)
        finally:
            await server.stop(None)
            await runner.cleanup()


@asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[tuple[pb_grpc.GatewayStub, int]]:
    """A real gRPC gateway on 127.0.0.1:0 and an async stub talking to it."""
    async with live_gateway(config) as live:
        yield live.stub, live.port


async def collect(stub: pb_grpc.GatewayStub, reqs: list[pb.RolloutRequest], window: int = 50,
                  timeout_s: float = 120, on_result: Callable[[pb.RolloutResult], None] | None = None,
                  ) -> dict[str, pb.RolloutResult]:
    """One Collect stream with at most ``window`` rollouts in flight, like the collector's flow control."""
    slots = asyncio.Semaphore(window)
    results: dict[str, pb.RolloutResult] = {}

    async def gen() -> AsyncIterator[pb.CollectRequest]:
        for r in reqs:
            await slots.acquire()
            yield pb.CollectRequest(rollouts=[r])

    async with asyncio.timeout(timeout_s):
        async for msg in stub.Collect(gen()):
            for res in msg.results:
                assert res.rollout_id not in results, f"{res.rollout_id} came back twice"
                results[res.rollout_id] = res
                slots.release()
                if on_result is not None:
                    on_result(res)
    return results


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll ``check`` until it holds (bounded: a TimeoutError after ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.005)


async def results_until_unavailable(call: Any, timeout_s: float = 30) -> list[pb.RolloutResult]:
    """The results a Collect stream sends before it ends UNAVAILABLE (a draining gateway); fails otherwise, and
    unless the gateway said once, before that status, that it is shutting down."""
    got: list[pb.RolloutResult] = []
    announced = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for msg in call:
                got.extend(msg.results)
                announced += msg.shutting_down
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        assert announced == 1, f"the gateway said {announced} times that it is shutting down"
        return got
    raise AssertionError(f"the stream ended normally after {len(got)} results; expected UNAVAILABLE")
