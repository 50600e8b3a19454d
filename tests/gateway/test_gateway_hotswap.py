"""Hot-swap: ``gateway set`` under load (Done when 4), refused invalid routes, config directory reloads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import orjson
import pytest
import yaml

from rollgate import gateway
from rollgate.gateway import Security
from rollgate.gateway._reload import ConfigReloader
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, make_config, scrape, task, value

ADMIN = "admin-secret-for-tests"


async def test_swap_verifier_under_load_zero_failures_old_rows_old_verifier_new_rows_new(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    n = 1500
    monkeypatch.setenv("ROLLGATE_ADMIN_TOKEN", ADMIN)
    async with FakeModelServer(latency_s=0.002) as model, \
            FakeResourcesServer(version="old", reward=0.25) as old, \
            FakeResourcesServer(version="new", reward=0.75) as new:
        cfg = make_config(model.base_url, old.url, kind="single_turn")
        async with live_gateway(cfg, security=Security(admin_token=ADMIN)) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", [task(f"say: {i}", str(i)) for i in range(n)])
            out = tmp_path / "out.jsonl"
            proc = await start_collector(f"127.0.0.1:{gw.port}", tasks, out, "+num_samples_in_parallel=50")
            async with asyncio.timeout(60):
                while old.requests["verify"] < n // 3:
                    await asyncio.sleep(0.005)
            code = await asyncio.to_thread(
                gateway.main, ["set", "a", f"+verifier_url={new.url}", f"+gateway=127.0.0.1:{gw.port}"])
            assert code == 0
            printed = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert printed["route"]["verifier_url"] == new.url
            assert printed["route"]["model"]["name"] == "fake-model"  # untouched fields stay
            rc, _, err = await finish(proc)
            text = await scrape(gw.metrics_url)
    assert rc == 0, err
    rows = read_rows(out)
    assert len(rows) == n and not (tmp_path / "out.jsonl.failures").exists()
    versions = [r["_rollout"]["verifier_version"] for r in rows]
    switch = versions.index("new")
    assert switch > 0 and versions == ["old"] * switch + ["new"] * (n - switch)
    assert all(r["reward"] == (0.25 if r["_rollout"]["verifier_version"] == "old" else 0.75) for r in rows)
    assert old.requests["verify"] == switch and new.requests["verify"] == n - switch
    assert value(text, "rollgate_gateway_route_changes_total", source="admin") == 1


async def test_invalid_route_is_refused_with_the_reason_and_the_old_one_stays(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    monkeypatch.setenv("ROLLGATE_ADMIN_TOKEN", ADMIN)
    cfg = make_config(fake_model.base_url, fake_resources.url, default_params={"temperature": 0.5, "top_p": 0.9})
    async with live_gateway(cfg, security=Security(admin_token=ADMIN)) as gw:
        addr = f"+gateway=127.0.0.1:{gw.port}"
        assert await asyncio.to_thread(gateway.main, ["set", "a", "+model.api=grpc", addr]) == 1
        err = capsys.readouterr().err
        assert "INVALID_ARGUMENT" in err and "model.api" in err
        assert await asyncio.to_thread(gateway.main, ["set", "a", "+model.base_urls=[]", addr]) == 1
        assert "base_urls" in capsys.readouterr().err
        assert await asyncio.to_thread(gateway.main, ["set", "nope", "+verifier_url=http://x", addr]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        # nested keys merge: one default param changes, the other stays
        assert await asyncio.to_thread(gateway.main, ["set", "a", "+default_params.temperature=0.1", addr]) == 0
        capsys.readouterr()
        agents = (await gw.stub.ListAgents(pb.ListAgentsRequest())).agents
        assert agents[0].verifier_url == fake_resources.url and agents[0].api == "chat_completions"
        assert gw.core.config.agents["a"].default_params == {"temperature": 0.1, "top_p": 0.9}
        text = await scrape(gw.metrics_url)
    assert value(text, "rollgate_gateway_route_rejections_total", source="admin") == 2


async def test_admin_needs_its_own_token_and_is_off_without_one(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url)
    patch = pb.SetRouteRequest(agent="a", route_json=b'{"verifier_url": "http://127.0.0.1:1"}')
    async with live_gateway(cfg, security=Security(token="user-token")) as gw:
        admin = pb_grpc.GatewayAdminStub(gw.channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.SetRoute(patch, metadata=(("authorization", "Bearer user-token"),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with live_gateway(cfg, security=Security(token="user-token", admin_token=ADMIN)) as gw:
        admin = pb_grpc.GatewayAdminStub(gw.channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.SetRoute(patch, metadata=(("authorization", "Bearer user-token"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        route = await admin.GetRoute(pb.GetRouteRequest(agent="a"), metadata=(("authorization", f"Bearer {ADMIN}"),))
        assert orjson.loads(route.route_json)["verifier_url"] == fake_resources.url


@asynccontextmanager
async def _old_and_new_verifiers() -> AsyncIterator[
        tuple[Callable[[str], str], FakeResourcesServer, FakeResourcesServer]]:
    """A fake model, two verifiers, and the gateway config (YAML) that routes to one of them."""
    async with FakeModelServer() as model, FakeResourcesServer(version="old") as old, \
            FakeResourcesServer(version="new") as new:
        def body(verifier: str) -> str:
            return yaml.safe_dump(make_config(model.base_url, verifier).model_dump(mode="json"))

        yield body, old, new


async def _wait_for_verifier(stub: pb_grpc.GatewayStub, url: str) -> None:
    async with asyncio.timeout(20):
        while (await stub.ListAgents(pb.ListAgentsRequest())).agents[0].verifier_url != url:
            await asyncio.sleep(0.05)


def _write_configmap(mount: Path, version: int, body: str) -> None:
    """Update a directory the way the kubelet updates a ConfigMap volume: new ..data dir, atomic symlink swap."""
    data = mount / f"..{version}"
    data.mkdir()
    (data / "agents.yaml").write_text(body)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, mount / "..data")
    link = mount / "agents.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/agents.yaml")


async def test_configmap_directory_update_hot_swaps_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    async with _old_and_new_verifiers() as (body, old, new):

        mount = tmp_path / "agents"
        mount.mkdir()
        _write_configmap(mount, 1, body(old.url))
        cfg = gateway.load_config(mount)
        async with live_gateway(cfg) as gw:
            reloader = ConfigReloader(gw.core, mount)
            stop = asyncio.Event()
            watcher = asyncio.create_task(reloader.watch(stop))
            try:
                await asyncio.sleep(0.3)  # let the watcher arm
                _write_configmap(mount, 2, body(new.url))
                await _wait_for_verifier(gw.stub, new.url)
                _write_configmap(mount, 3, "agents:\n  a:\n    model: {base_urls: [], name: x}\n    verifier_url: v\n")
                async with asyncio.timeout(20):
                    while value(await scrape(gw.metrics_url), "rollgate_gateway_route_rejections_total",
                                source="file") < 1:
                        await asyncio.sleep(0.05)
                assert (await gw.stub.ListAgents(pb.ListAgentsRequest())).agents[0].verifier_url == new.url
            finally:
                stop.set()
                await asyncio.gather(watcher, return_exceptions=True)


async def test_a_config_file_reloads_for_its_own_changes_not_for_files_written_beside_it(tmp_path: Path) -> None:
    # A user's working folder: the gateway config and the rollouts a collector writes many times a second.
    async with _old_and_new_verifiers() as (body, old, new):

        config = tmp_path / "gateway.yaml"
        config.write_text(body(old.url))
        async with live_gateway(gateway.load_config(config)) as gw:
            reloader = ConfigReloader(gw.core, config)
            reloads: list[str] = []
            real_reload = reloader.reload

            async def counting(source: str) -> bool:
                reloads.append(source)
                return await real_reload(source)

            reloader.reload = counting  # type: ignore[method-assign]
            stop = asyncio.Event()
            watcher = asyncio.create_task(reloader.watch(stop))
            try:
                await asyncio.sleep(0.3)  # let the watcher arm
                with (tmp_path / "rollouts.jsonl").open("a") as out:
                    for i in range(20):
                        out.write(f'{{"i": {i}}}\n')
                        out.flush()
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.6)  # past the debounce: any reload would have happened by now
                assert reloads == []
                config.write_text(body(new.url))
                await _wait_for_verifier(gw.stub, new.url)
                assert reloads
            finally:
                stop.set()
                await asyncio.gather(watcher, return_exceptions=True)
