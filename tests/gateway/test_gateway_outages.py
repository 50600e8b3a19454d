"""Storms and outages are ridden out by default (issue 14, item 1), through the real ``ng_collect_rollouts``.

- a model answering 30% 429/503 (with and without ``Retry-After``) under the default retry config: no rollout lost;
- a real rollgate verifier process SIGKILLed under load and restarted on the same port seconds later: no rollout
  lost, and the model is called once per rollout (the verify is retried, never the generation).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from rollgate.gateway import GatewayConfig
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import ROOT, finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, scrape, task, value


def _config(model_url: str, verifier_url: str, **agent: Any) -> GatewayConfig:
    """One agent ``a`` with the default retry policy (unlike ``make_config``'s tiny waits)."""
    return GatewayConfig.model_validate({"agents": {"a": {
        "kind": "single_turn", "verifier_url": verifier_url,
        "model": {"base_urls": [model_url], "name": "fake-model", "api": "chat_completions"}, **agent}}})


async def test_30_percent_429_and_503_with_the_default_retry_config_lose_nothing(
        tmp_path: Path, fake_resources: FakeResourcesServer) -> None:
    n = 200
    faults = [(503, 0.10, None), (503, 0.05, "1"), (429, 0.10, "1"), (429, 0.05, None)]
    async with FakeModelServer(faults=faults, seed=11) as model:
        async with live_gateway(_config(model.base_url, fake_resources.url)) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: {i}", str(i)) for i in range(n)])
            out = tmp_path / "out.jsonl"
            proc = await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+num_samples_in_parallel=32")
            code, stdout, stderr = await finish(proc, timeout_s=240)
            text = await scrape(gw.metrics_url)
    assert code == 0, stderr
    rows = read_rows(out)
    assert [r["_rollout"]["task_index"] for r in rows] == list(range(n))
    assert all(r["reward"] == 1.0 for r in rows)
    assert not Path(f"{out}.failures").exists()
    assert json.loads(stdout)["reward"] == 1.0
    # The storm was real (about 30% of the answers), and every error answer was retried.
    assert model.served[503] + model.served[429] > n // 10
    assert model.served[200] == n
    retried = value(text, "rollgate_gateway_retries_total", target="model", cause="http_5xx") \
        + value(text, "rollgate_gateway_retries_total", target="model", cause="http_429")
    assert retried == model.served[503] + model.served[429]
    # Not asserted: that the retry budget was never spent. On a loaded machine slow answers keep more retries on
    # the wire at once than its floor (10) for moments; a spent budget holds a retry until there is room (it never
    # fails one), which the rows above prove.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_verifier(port: int) -> asyncio.subprocess.Process:
    """``python -m rollgate.verifier serve exact_match`` on 127.0.0.1:``port``, once it says it is ready."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollgate.verifier", "serve", "exact_match", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=str(ROOT), env=env)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while True:
                line = await proc.stdout.readline()
                assert line, "the verifier exited before it was ready"
                if json.loads(line).get("event") == "ready":
                    return proc
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


async def test_a_real_verifier_killed_and_restarted_under_load_loses_nothing_and_regenerates_nothing(
        tmp_path: Path) -> None:
    n = 400
    port = _free_port()
    verifier = await _start_verifier(port)
    try:
        async with FakeModelServer(latency_s=0.01) as model:
            # Default retries, but waits capped at 1 s so the test does not sit out a 10 s backoff after the restart.
            cfg = _config(model.base_url, f"http://127.0.0.1:{port}", retries={"max_wait_s": 1.0})
            async with live_gateway(cfg) as gw:
                tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: {i}", str(i)) for i in range(n)])
                out = tmp_path / "out.jsonl"
                proc = await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+num_samples_in_parallel=32")
                async with asyncio.timeout(120):
                    while model.served[200] < n // 4:
                        await asyncio.sleep(0.005)
                verifier.send_signal(signal.SIGKILL)  # mid-run, with verify calls in flight
                await verifier.wait()
                await asyncio.sleep(5.0)
                verifier = await _start_verifier(port)  # back on the same address
                code, stdout, stderr = await finish(proc, timeout_s=240)
                text = await scrape(gw.metrics_url)
    finally:
        if verifier.returncode is None:
            verifier.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await verifier.wait()
            except TimeoutError:
                verifier.kill()
                await verifier.wait()
    assert code == 0, stderr
    rows = read_rows(out)
    assert [r["_rollout"]["task_index"] for r in rows] == list(range(n))
    assert len({r["_rollout"]["id"] for r in rows}) == n
    assert all(r["reward"] == 1.0 for r in rows)
    assert not Path(f"{out}.failures").exists()
    # One model call per rollout: the outage cost verify retries, never a second generation.
    assert sum(model.requests.values()) == n and model.served[200] == n
    assert value(text, "rollgate_gateway_retries_total", target="verifier", cause="connection") > 0
    assert value(text, "rollgate_gateway_rollouts_total", agent="a", status="failed") == 0
