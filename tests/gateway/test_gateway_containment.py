"""Backpressure and containment in the gateway: nothing a stream took is lost, and nothing grows without end.

- A Collect stream holds at most ``max_stream_rollouts`` rollouts; above it the gateway stops reading, so a client
  that sends 10,000 at once is held back by gRPC flow control instead of queueing them all in the gateway.
- A rollout task that raises is one failed result; the stream still ends with every result.
- Results that finished together share a message only while it stays under the message limit.
- A seeded session is closed (``/close_session``) also when the rollout is cancelled: by its deadline, or because
  its client went away.
- A killed or draining gateway is reported by the collector in words, not as grpc's internal text.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest

from rollgate.gateway import RolloutOutcome, RolloutRequest
from rollgate.gateway._main import ServeArgs
from rollgate.gateway._servicer import MAX_STREAM_ROLLOUTS
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import ROOT, finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import Live, collect, live_gateway, make_config, req, task, until

MIB = 2**20


def _held(gw: Live, active: int) -> int:
    """Rollouts the gateway holds now: running (``active``) plus those waiting for the client's max_running."""
    waiting = gw.core.metrics.registry.get_sample_value("rollgate_gateway_rollouts_waiting") or 0.0
    return active + int(waiting)


@pytest.mark.parametrize("max_running", [0, 4])
async def test_a_stream_sent_10000_rollouts_at_once_holds_only_its_cap_and_completes_them_all(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer, monkeypatch: pytest.MonkeyPatch,
        max_running: int) -> None:
    cap, per_message, total = 64, 10, 10_000
    gate = asyncio.Event()  # closed: every rollout blocks, so what the gateway holds can only grow
    active = peak_active = 0

    async def run_rollout(request: RolloutRequest) -> RolloutOutcome:
        # The servicer is under test here, not the HTTP path: a rollout that finishes when the test says so.
        nonlocal active, peak_active
        active += 1
        peak_active = max(peak_active, active)
        try:
            await gate.wait()
            return RolloutOutcome(request.rollout_id, reward=1.0)
        finally:
            active -= 1

    config = make_config(fake_model.base_url, fake_resources.url)
    async with live_gateway(config, max_stream_rollouts=cap) as gw:
        monkeypatch.setattr(gw.core, "run_rollout", run_rollout)
        t = orjson.dumps(task("say: hi"))

        async def requests() -> AsyncIterator[pb.CollectRequest]:
            for first in range(0, total, per_message):
                yield pb.CollectRequest(max_running=max_running, rollouts=[
                    pb.RolloutRequest(rollout_id=f"r{i}", agent="a", task_json=t)
                    for i in range(first, first + per_message)])

        results: list[str] = []

        async def read() -> None:
            async for msg in gw.stub.Collect(requests()):
                results.extend(r.rollout_id for r in msg.results if r.status == pb.ROLLOUT_STATUS_OK)

        reader = asyncio.create_task(read())
        peak_held = 0

        async def sample() -> None:
            nonlocal peak_held
            while True:
                peak_held = max(peak_held, _held(gw, active))
                await asyncio.sleep(0.001)

        sampler = asyncio.create_task(sample())
        try:
            # The positive signal first: the stream has filled up to its cap ...
            await until(lambda: _held(gw, active) >= cap, timeout_s=30)
            # ... then give it time to take more, were it to keep reading.
            await asyncio.sleep(0.5)
            assert _held(gw, active) < cap + per_message
            assert active == (max_running or cap)
            gate.set()
            async with asyncio.timeout(120):
                await reader
        finally:
            sampler.cancel()
            reader.cancel()
            await asyncio.gather(sampler, reader, return_exceptions=True)
    assert sorted(results) == sorted(f"r{i}" for i in range(total))  # every one, once
    assert peak_active <= (max_running or cap)
    # Bounded by the cap (plus the rest of the message that reached it), not by the 10,000 sent.
    assert peak_held < cap + per_message


async def test_a_rollout_task_that_raises_is_one_failed_result_and_the_stream_ends(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url)) as gw:
        real = gw.core.run_rollout

        async def run_rollout(request: RolloutRequest) -> RolloutOutcome:
            if request.rollout_id == "r3":
                raise RuntimeError("injected bug")
            return await real(request)

        monkeypatch.setattr(gw.core, "run_rollout", run_rollout)
        reqs = [req(f"r{i}", task(f"say: a{i}", f"a{i}")) for i in range(6)]
        results = await collect(gw.stub, reqs, window=6, timeout_s=60)
        unary = await gw.stub.Rollout(req("r3", task("say: x")), timeout=30)
    assert sorted(results) == [f"r{i}" for i in range(6)]
    assert all(results[f"r{i}"].reward == 1.0 for i in (0, 1, 2, 4, 5))
    for failed in (results["r3"], unary):
        assert failed.status == pb.ROLLOUT_STATUS_FAILED and not failed.HasField("reward")
        assert (failed.error.stage, failed.error.kind) == ("gateway", "exception")
        assert failed.error.message == "internal error in the gateway: RuntimeError: injected bug"


def _big_tasks(n: int, sleep_s: float) -> list[dict[str, object]]:
    # 300 KiB of answer text: the result carries it twice (the response and the trajectory), about 600 KiB.
    return [task(f"say: a{i}\npad: {300 * 1024}\nsleep: {sleep_s}", f"a{i}") for i in range(n)]


async def test_results_that_finished_together_are_split_below_the_message_limit(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    config = make_config(fake_model.base_url, fake_resources.url)
    async with live_gateway(config, max_message_bytes=MIB) as gw:
        reqs = [req(f"r{i}", t) for i, t in enumerate(_big_tasks(8, 0.3))]
        sizes: list[int] = []
        ids: list[str] = []
        async with asyncio.timeout(60):
            # All eight in one request, so they run (and finish) together.
            async for msg in gw.stub.Collect(iter([pb.CollectRequest(rollouts=reqs)])):
                sizes.append(msg.ByteSize())
                ids.extend(r.rollout_id for r in msg.results)
                assert all(r.status == pb.ROLLOUT_STATUS_OK for r in msg.results), msg.results[0].error
    assert sorted(ids) == [f"r{i}" for i in range(8)]
    assert all(500 * 1024 < s <= MIB for s in sizes), sizes  # one ~600 KiB result per message


async def test_the_collector_gets_eight_600_kib_results_through_a_1_mib_gateway_without_a_reconnect(
        tmp_path: Path, fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", _big_tasks(8, 0.3))
    out = tmp_path / "out.jsonl"
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url), max_message_bytes=MIB) as gw:
        proc = await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+num_samples_in_parallel=8")
        code, _, err = await finish(proc, timeout_s=90)
    assert code == 0, err
    assert "reconnecting" not in err
    rows = read_rows(out)
    assert [r["_rollout"]["task_index"] for r in rows] == list(range(8))  # every rollout, once
    assert all(len(r["output"][-1]["content"][0]["text"]) > 300 * 1024 for r in rows)
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["reconnects"] == 0 and manifest["counts"]["failed"] == 0


async def test_a_rollout_cancelled_by_its_deadline_closes_its_session(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url)) as gw:
        results = await collect(gw.stub, [req("r1", task("sleep: 30\nsay: late"), deadline_s=0.5)], timeout_s=30)
        # Sent from a task of its own: it may land just after the result.
        await until(lambda: fake_resources.requests["close_session"] >= 1, timeout_s=10)
    failed = results["r1"]
    assert (failed.error.stage, failed.error.kind) == ("rollout", "timeout")
    assert fake_resources.requests["seed_session"] == 1
    assert fake_resources.closed == ["s1"]  # the very session that was seeded, by its cookie
    assert fake_resources.requests["close_session"] == 1


async def test_a_rollout_whose_client_vanished_closes_its_session(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url)) as gw:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}")
        stub = pb_grpc.GatewayStub(channel)
        hold = asyncio.Event()  # never set: the client keeps its request stream open until it vanishes

        async def requests() -> AsyncIterator[pb.CollectRequest]:
            yield pb.CollectRequest(rollouts=[req("r1", task("sleep: 30\nsay: late"))])
            await hold.wait()

        call = stub.Collect(requests())
        # The session is seeded and the model call is running ...
        await until(lambda: fake_model.in_flight == 1 and fake_resources.requests["seed_session"] == 1,
                    timeout_s=10)
        await channel.close()  # ... when the collector goes away.
        await until(lambda: fake_resources.requests["close_session"] >= 1, timeout_s=10)
        await until(lambda: gw.core.in_flight == 0, timeout_s=10)
        call.cancel()
    assert fake_resources.closed == ["s1"]
    assert fake_resources.requests["close_session"] == 1
    assert fake_resources.requests["verify"] == 0  # cancelled, not finished


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _gateway(config: Path, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollgate.gateway", "serve", "--config", str(config), "--port", str(port),
        "--metrics-port", "0", "--grace-s", "10", cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while True:
            line = await proc.stdout.readline()
            assert line, "the gateway exited before it was ready"
            if b'"ready"' in line:
                return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_the_collector_says_in_words_that_the_gateway_went_away(
        tmp_path: Path, fake_model: FakeModelServer, fake_resources: FakeResourcesServer,
        sig: signal.Signals) -> None:
    (tmp_path / "conf").mkdir()  # the gateway watches its config's folder: keep the run's files apart
    config = tmp_path / "conf" / "gateway.json"
    gateway_config = make_config(fake_model.base_url, fake_resources.url)
    config.write_text(gateway_config.model_dump_json(exclude_defaults=True))
    port = _free_port()
    n = 40
    tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: a{i}\nsleep: 0.2", f"a{i}") for i in range(n)])
    out = tmp_path / "out.jsonl"
    procs = [await _gateway(config, port)]
    try:
        collector = await start_collector(f"127.0.0.1:{port}", tasks, out, "+num_samples_in_parallel=4")
        try:
            await until(lambda: out.exists() and out.read_bytes().count(b"\n") >= 4, timeout_s=60)
            procs[0].send_signal(sig)
            async with asyncio.timeout(30):
                await procs[0].wait()
            procs.append(await _gateway(config, port))
        finally:
            code, _, err = await finish(collector, timeout_s=120)
    finally:
        for proc in procs:
            await _stop(proc)
    assert code == 0, err
    assert [r["_rollout"]["task_index"] for r in read_rows(out)] == list(range(n))
    assert f"warning: gateway 127.0.0.1:{port} restarting or unavailable (" in err
    assert "reconnecting and resending" in err
    expected = "it is shutting down" if sig == signal.SIGTERM else "the connection was lost"
    assert f"({expected})" in err, err
    for raw in ("Internal error from Core", "Socket closed", "INTERNAL:", "UNAVAILABLE:"):
        assert raw not in err, err


def test_the_stream_cap_is_a_serve_flag_with_bounds() -> None:
    assert ServeArgs(command="serve", config="c.yaml").max_stream_rollouts == MAX_STREAM_ROLLOUTS
    assert ServeArgs(command="serve", config="c.yaml", max_stream_rollouts=64).max_stream_rollouts == 64
    with pytest.raises(ValueError):
        ServeArgs(command="serve", config="c.yaml", max_stream_rollouts=0)
