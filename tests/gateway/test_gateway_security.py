"""A real client nobody here wrote (grpcurl), bearer tokens, TLS and mutual TLS (Done when 6)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rollgate.gateway import Security
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from rollgate.protos.rollgate.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import require_tool
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish
from tests.gateway.gw_helpers import live_gateway, make_config, req, task

BIN = Path(sys.executable).parent


@pytest.fixture
def grpcurl(monkeypatch: pytest.MonkeyPatch) -> str:
    """The grpcurl that the dev extra puts in the venv's bin (on PATH for this test only)."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return require_tool("grpcurl")


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    code, out, _ = await finish(proc, 60)
    return code, out


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    openssl = require_tool("openssl")
    d = tmp_path_factory.mktemp("pki")

    def ssl(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=rollgate test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in (("server", "server.ext"), ("client", "client.ext")):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", ext)
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


async def test_grpcurl_lists_services_and_checks_health(grpcurl: str, fake_model: FakeModelServer,
                                                        fake_resources: FakeResourcesServer) -> None:
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url)) as gw:
        addr = f"127.0.0.1:{gw.port}"
        code, out = await _run(grpcurl, "-plaintext", addr, "list")
        assert code == 0, out
        assert {"rollgate.v1.Gateway", "rollgate.v1.GatewayAdmin", "grpc.health.v1.Health"} <= set(out.split())
        code, out = await _run(grpcurl, "-plaintext", "-d", '{"service": "rollgate.v1.Gateway"}', addr,
                               "grpc.health.v1.Health/Check")
        assert code == 0 and '"SERVING"' in out, out
        code, out = await _run(grpcurl, "-plaintext", addr, "rollgate.v1.Gateway/ListAgents")
        assert code == 0 and '"fake-model"' in out, out


async def test_token_required_for_gateway_calls_but_not_for_health_or_reflection(
        grpcurl: str, fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url)
    async with live_gateway(cfg, security=Security(token="s3cret")) as gw:
        addr = f"127.0.0.1:{gw.port}"
        code, out = await _run(grpcurl, "-plaintext", addr, "rollgate.v1.Gateway/ListAgents")
        assert code != 0 and "Unauthenticated" in out and "s3cret" not in out, out
        code, out = await _run(grpcurl, "-plaintext", "-H", "authorization: Bearer wrong", addr,
                               "rollgate.v1.Gateway/ListAgents")
        assert code != 0 and "Unauthenticated" in out, out
        code, out = await _run(grpcurl, "-plaintext", "-H", "authorization: Bearer s3cret", addr,
                               "rollgate.v1.Gateway/ListAgents")
        assert code == 0 and '"fake-model"' in out, out
        code, out = await _run(grpcurl, "-plaintext", addr, "grpc.health.v1.Health/Check")
        assert code == 0 and "SERVING" in out, out
        # our own client: the streaming call is refused the same way, and nothing ran
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gw.stub.Rollout(req("r1", task("say: x")), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in gw.stub.Collect(iter([pb.CollectRequest(rollouts=[req("r2", task("say: x"))])])):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert fake_model.requests.total() == 0
        res = await gw.stub.Rollout(req("r3", task("say: x", "x")), timeout=10,
                                    metadata=(("authorization", "Bearer s3cret"),))
        assert res.reward == 1.0


async def test_tls_refuses_plaintext_and_accepts_a_client_with_the_ca(
        grpcurl: str, certs: dict[str, Path], fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    sec = Security(tls_cert=str(certs["server.pem"]), tls_key=str(certs["server.key"]))
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url), security=sec) as gw:
        addr = f"127.0.0.1:{gw.port}"
        async with grpc.aio.insecure_channel(addr) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        code, out = await _run(grpcurl, "-plaintext", "-max-time", "10", addr, "list")
        assert code != 0, out
        creds = grpc.ssl_channel_credentials(root_certificates=certs["ca.pem"].read_bytes())
        async with grpc.aio.secure_channel(addr, creds) as channel:
            res = await pb_grpc.GatewayStub(channel).Rollout(req("r1", task("say: x", "x")), timeout=10)
            assert res.reward == 1.0
        code, out = await _run(grpcurl, "-cacert", str(certs["ca.pem"]), addr, "grpc.health.v1.Health/Check")
        assert code == 0 and "SERVING" in out, out


async def test_mutual_tls_needs_a_client_certificate(
        grpcurl: str, certs: dict[str, Path], fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    sec = Security(tls_cert=str(certs["server.pem"]), tls_key=str(certs["server.key"]),
                   tls_client_ca=str(certs["ca.pem"]))
    async with live_gateway(make_config(fake_model.base_url, fake_resources.url), security=sec) as gw:
        addr = f"127.0.0.1:{gw.port}"
        code, out = await _run(grpcurl, "-cacert", str(certs["ca.pem"]), "-max-time", "10", addr, "list")
        assert code != 0, out
        code, out = await _run(grpcurl, "-cacert", str(certs["ca.pem"]), "-cert", str(certs["client.pem"]),
                               "-key", str(certs["client.key"]), addr, "rollgate.v1.Gateway/ListAgents")
        assert code == 0 and '"fake-model"' in out, out
