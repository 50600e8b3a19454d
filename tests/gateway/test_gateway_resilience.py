"""A verifier restart mid-run (Done when 2), a hanging model (Done when 3), and graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc

from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import (
    collect,
    live_gateway,
    make_config,
    req,
    results_until_unavailable,
    scrape,
    task,
    value,
)


async def test_verifier_killed_and_restarted_2s_later_mid_run_every_row_once(tmp_path: Path) -> None:
    n = 600
    # Backoff doubling from 50 ms to 0.5 s over 30 attempts spans far more than the 2 s outage.
    retries = {"attempts": 30, "initial_wait_s": 0.05, "max_wait_s": 0.5, "jitter_s": 0.05}
    async with FakeModelServer(latency_s=0.005) as model:
        rs = FakeResourcesServer(version="v1")
        await rs.__aenter__()
        port = rs.port
        try:
            cfg = make_config(model.base_url, rs.url, retries=retries)
            async with live_gateway(cfg) as gw:
                tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: {i}", str(i)) for i in range(n)])
                out = tmp_path / "out.jsonl"
                proc = await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+num_samples_in_parallel=50")
                async with asyncio.timeout(60):
                    while rs.requests["verify"] < n // 4:
                        await asyncio.sleep(0.005)
                await rs.__aexit__()  # killed mid-run, with verify calls in flight
                await asyncio.sleep(2.0)
                rs = FakeResourcesServer(version="v1", port=port)  # restarted on the same address
                await rs.__aenter__()
                code, stdout, stderr = await finish(proc)
                text = await scrape(gw.metrics_url)
        finally:
            await rs.__aexit__()
    assert code == 0, stderr
    rows = read_rows(out)
    assert [r["_rollout"]["task_index"] for r in rows] == list(range(n))
    assert len({r["_rollout"]["id"] for r in rows}) == n
    assert all(r["reward"] == 1.0 for r in rows)
    assert not (tmp_path / "out.jsonl.failures").exists()
    # the outage was real and bridged by retries against the verifier
    assert value(text, "rollgate_gateway_retries_total", target="verifier", cause="connection") > 0


async def test_a_hanging_model_ends_its_rollouts_as_timeouts_and_the_rest_finish(
        fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer() as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn")
        async with live_gateway(cfg) as gw:
            reqs = [req(f"r{i}", task("sleep: 600\nsay: never" if i % 20 == 0 else f"say: {i}", str(i)),
                        deadline_s=1.0) for i in range(100)]
            results = await collect(gw.stub, reqs, window=100, timeout_s=60)
            text = await scrape(gw.metrics_url)
        async with asyncio.timeout(10):  # the hung calls were abandoned, not left open on the model server
            while model.cancelled < 5:
                await asyncio.sleep(0.01)
    hung = {f"r{i}" for i in range(0, 100, 20)}
    assert len(results) == 100
    for rid, res in results.items():
        if rid in hung:
            assert res.status == pb.ROLLOUT_STATUS_FAILED and not res.HasField("reward")
            assert (res.error.stage, res.error.kind) == ("rollout", "timeout")
            assert "model stage" in res.error.message
        else:
            assert res.status == pb.ROLLOUT_STATUS_OK and res.reward == 1.0
    assert value(text, "rollgate_gateway_rollout_failures_total", agent="a", stage="rollout", kind="timeout") == 5
    assert value(text, "rollgate_gateway_rollouts_in_flight", agent="a") == 0


async def test_per_call_model_timeout_is_a_model_timeout_after_its_retries(
        fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer() as model:
        cfg = make_config(model.base_url, fake_resources.url, kind="single_turn",
                          timeouts={"model_s": 0.3}, retries={"attempts": 2})
        async with live_gateway(cfg) as gw:
            res = await gw.stub.Rollout(req("r1", task("sleep: 600\nsay: x")), timeout=30)
            ok = await gw.stub.Rollout(req("r2", task("say: y", "y")), timeout=30)
    assert (res.error.stage, res.error.kind, res.error.attempts) == ("model", "timeout", 2)
    assert ok.reward == 1.0


_YAML = """\
agents:
  a:
    kind: single_turn
    model: {{base_urls: ["{model}"], name: fake-model}}
    verifier_url: {verifier}
"""


async def test_sigterm_drains_in_flight_rollouts_then_refuses_new_work(
        tmp_path: Path, fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer() as model:
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(_YAML.format(model=model.base_url, verifier=fake_resources.url))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollgate.gateway", "serve", "--config", str(cfg), "--port", "0",
            "--metrics-port", "0",
            "--grace-s", "20", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                ready = json.loads(await proc.stdout.readline())
            assert ready["metrics_url"].startswith("http://127.0.0.1:") and ready["metrics_url"].endswith("/metrics")
            readyz = ready["metrics_url"].replace("/metrics", "/readyz")
            async with grpc.aio.insecure_channel(ready["address"]) as channel, aiohttp.ClientSession() as http:
                async with http.get(readyz) as r:
                    assert r.status == 200
                stub = pb_grpc.GatewayStub(channel)
                more = asyncio.Event()

                async def gen() -> AsyncIterator[pb.CollectRequest]:
                    for i in range(3):
                        yield pb.CollectRequest(rollouts=[req(f"slow{i}", task("sleep: 1.5\nsay: s", "s"))])
                    await more.wait()
                    yield pb.CollectRequest(rollouts=[req("late", task("say: l", "l"))])

                call = stub.Collect(gen())
                async with asyncio.timeout(30):
                    while model.requests["/v1/chat/completions"] < 3:
                        await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(10):
                    while True:  # readiness flips at once, so a load balancer stops sending new streams
                        async with http.get(readyz) as r:
                            if r.status == 503:
                                break
                        await asyncio.sleep(0.02)
                more.set()
                got = await results_until_unavailable(call)
            assert sorted(r.rollout_id for r in got) == ["slow0", "slow1", "slow2"]
            assert all(r.reward == 1.0 for r in got)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            # logs are JSON lines
            lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
            assert any(line["msg"].startswith("draining") for line in lines)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_served_gateway_reloads_its_config_file_on_sighup(
        tmp_path: Path, fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer() as model, FakeResourcesServer(version="v2") as rs2:
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(_YAML.format(model=model.base_url, verifier=fake_resources.url))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollgate.gateway", "serve", "--config", str(cfg), "--port", "0",
            "--metrics-port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                ready = json.loads(await proc.stdout.readline())
            async with grpc.aio.insecure_channel(ready["address"]) as channel:
                stub = pb_grpc.GatewayStub(channel)
                first = await stub.Rollout(req("r1", task("say: a", "a")), timeout=10)
                cfg.write_text(_YAML.format(model=model.base_url, verifier=rs2.url))
                proc.send_signal(signal.SIGHUP)
                async with asyncio.timeout(20):
                    while (await stub.ListAgents(pb.ListAgentsRequest())).agents[0].verifier_url != rs2.url:
                        await asyncio.sleep(0.05)
                second = await stub.Rollout(req("r2", task("say: a", "a")), timeout=10)
            assert (first.verifier_version, second.verifier_version) == ("fake-1", "v2")
            async with aiohttp.ClientSession() as http:
                text = await (await http.get(ready["metrics_url"])).text()
            assert value(text, "rollgate_gateway_route_changes_total", source="sighup") \
                + value(text, "rollgate_gateway_route_changes_total", source="file") == 1
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.communicate()
            assert proc.returncode == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
