"""The gRPC message limit (``gateway serve --max-message-mb``): one oversized row or result fails alone.

Without these checks a single task row over the limit ended the Collect stream, every resend ended it again, and
every other rollout on it was reported as a lost gateway once the reconnect budget ran out.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from rollgate.gateway._main import ServeArgs
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.verifier.hosting import VerifierCore, create_app, load_target, start_server
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import collect, live_gateway, make_config, req, task

MIB = 2**20


async def test_a_task_row_over_the_gateways_limit_fails_alone_and_the_rest_are_collected(
        tmp_path: Path, fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    rows = [task(f"say: a{i}", f"a{i}") for i in range(6)]
    rows[2]["blob"] = "x" * (3 * MIB // 2)  # 1.5 MiB, twice over in the request (the task and its params copy)
    tasks = write_tasks(tmp_path / "tasks.jsonl", rows)
    out = tmp_path / "out.jsonl"
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url), max_message_bytes=MIB) as gw:
        assert (await gw.stub.ListAgents(pb.ListAgentsRequest())).max_message_bytes == MIB
        proc = await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+num_samples_in_parallel=3",
                                     "+max_failure_fraction=0.5")
        code, _, err = await finish(proc, timeout_s=60)
    assert code == 0, err
    assert "reconnecting" not in err  # the stream never broke
    assert sorted(r["expected_answer"] for r in read_rows(out)) == ["a0", "a1", "a3", "a4", "a5"]
    (failed,) = read_rows(Path(f"{out}.failures"))
    assert failed["expected_answer"] == "a2"
    assert (failed["error"]["stage"], failed["error"]["kind"]) == ("input", "invalid_request")
    assert "over the gateway's message limit of 1 MiB" in failed["error"]["message"]
    assert "--max-message-mb" in failed["error"]["message"]


async def test_a_result_over_the_limit_fails_alone(fake_model: FakeModelServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A verify that adds a 2 MiB field to one rollout: its result cannot be sent in one message.
    name = f"bigfield_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        def verify(task, response):
            return {"reward": 1.0, "blob": "y" * (2 * 2**20) if task.get("big") else ""}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    server = await start_server(create_app(VerifierCore(load_target(f"{name}:verify"))), "127.0.0.1", 0, grace_s=5)
    try:
        async with live_gateway(make_config(fake_model.base_url, server.url), max_message_bytes=MIB) as gw:
            reqs = [req(f"r{i}", task(f"say: b{i}", f"b{i}", big=(i == 1))) for i in range(4)]
            results = await collect(gw.stub, reqs, window=4, timeout_s=60)
    finally:
        await server.stop()
    assert [results[f"r{i}"].status for i in (0, 2, 3)] == [pb.ROLLOUT_STATUS_OK] * 3
    big = results["r1"]
    assert big.status == pb.ROLLOUT_STATUS_FAILED
    assert (big.error.stage, big.error.kind) == ("gateway", "invalid_response")
    assert "over the gateway's message limit of 1 MiB" in big.error.message
    assert big.ByteSize() < 4096


def test_the_serve_flag_is_in_mib_and_bounded() -> None:
    assert ServeArgs(command="serve", config="c.yaml").max_message_mb == 64
    assert ServeArgs(command="serve", config="c.yaml", max_message_mb=256).max_message_mb == 256
    with pytest.raises(ValueError):
        ServeArgs(command="serve", config="c.yaml", max_message_mb=0)
