"""The committed gRPC code is exactly what ``make protos`` generates from ``protos/``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Generated through the rollgate/protos link, so the code imports itself as rollgate.protos.rollgate.v1.
PROTO_DIR = ROOT / "rollgate" / "protos" / "rollgate" / "v1"


def test_generated_code_is_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    protos = sorted(str(p.relative_to(ROOT)) for p in PROTO_DIR.glob("*.proto"))
    assert protos, "no .proto files found"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--mypy_out={tmp_path}", f"--mypy_grpc_out={tmp_path}", *protos],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    generated = sorted(p for p in (tmp_path / "rollgate" / "protos" / "rollgate" / "v1").iterdir())
    assert len(generated) == 4 * len(protos)
    for fresh in generated:
        committed = PROTO_DIR / fresh.name
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make protos`"


def test_service_shape() -> None:
    from rollgate.protos.rollgate.v1 import gateway_pb2 as pb

    gateway = pb.DESCRIPTOR.services_by_name["Gateway"]
    collect = gateway.methods_by_name["Collect"]
    assert collect.client_streaming and collect.server_streaming
    assert set(gateway.methods_by_name) == {"Collect", "Rollout", "ListAgents"}
    assert set(pb.DESCRIPTOR.services_by_name["GatewayAdmin"].methods_by_name) == {"GetRoute", "SetRoute"}
    result = pb.RolloutResult()
    assert not result.HasField("reward"), "reward must be optional: a failed rollout has none"
