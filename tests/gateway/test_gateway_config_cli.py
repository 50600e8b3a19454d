"""Config loading, the command line (ready line, both spellings, SIGTERM), and the package's surface."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rollgate import gateway
from rollgate.gateway import ConfigError, load_config
from tests.fakes import FakeModelServer, FakeResourcesServer

_YAML = """\
agents:
  my_agent:
    kind: single_turn
    model:
      base_urls: ["{model}"]
      name: smollm2
    verifier_url: {verifier}
    timeouts: {{model_s: 5, tool_s: 5, verify_s: 5, rollout_s: 20}}
"""


def test_all_matches_what_is_importable() -> None:
    exported = set(gateway.__all__)
    assert len(exported) == len(gateway.__all__)
    public = {n for n in dir(gateway) if not n.startswith("_")} - {"errors", "annotations"}
    assert exported == public
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None


def test_yaml_defaults_and_json(tmp_path: Path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(_YAML.format(model="http://127.0.0.1:1/v1", verifier="http://127.0.0.1:2"))
    cfg = load_config(p)
    agent = cfg.agents["my_agent"]
    assert agent.kind == "single_turn" and agent.model.api == "chat_completions"
    assert agent.max_steps == 10 and agent.retries.attempts == 3 and agent.timeouts.rollout_s == 20
    j = tmp_path / "gw.json"
    j.write_text(json.dumps({"agents": {"x": {"model": {"base_urls": ["u"], "name": "n"}, "verifier_url": "v"}}}))
    assert load_config(j).agents["x"].kind == "tool_calling"


@pytest.mark.parametrize("body, expected", [
    ("agents:\n  a:\n    model: {base_urls: [], name: n}\n    verifier_url: v\n", "agents.a.model.base_urls"),
    ("agents:\n  a:\n    model: {base_urls: [u], name: n}\n    verifier_url: v\n    max_steps: 0\n",
     "agents.a.max_steps"),
    ("agents:\n  a:\n    model: {base_urls: [u], name: n, api: grpc}\n    verifier_url: v\n", "agents.a.model.api"),
    ("agents:\n  a:\n    model: {base_urls: [u], name: n}\n    verifier_url: v\n    max_step: 3\n",
     "agents.a.max_step"),
    ("agents: [\n", "not valid YAML"),
    ("- 1\n", "expected a mapping"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, body: str, expected: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value) and expected in str(info.value)


def test_missing_file_and_bad_cli_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway.main(["serve", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert gateway.main(["serve", "+config=x.yaml", "+prot=1"]) == 2
    assert "did you mean 'port'" in capsys.readouterr().err


@pytest.mark.parametrize("style", ["dashes", "plus"])
async def test_serve_prints_ready_line_answers_and_stops_on_sigterm(tmp_path: Path, style: str) -> None:
    async with FakeModelServer() as model, FakeResourcesServer() as rs:
        p = tmp_path / "gw.yaml"
        p.write_text(_YAML.format(model=model.base_url, verifier=rs.url))
        args = (["serve", "--config", str(p), "--port", "0"] if style == "dashes"
                else ["serve", f"+config={p}", "+port=0", "+host=127.0.0.1"])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollgate.gateway", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                line = json.loads(await proc.stdout.readline())
            assert line["event"] == "ready" and line["service"] == "gateway"
            host, _, port = line["address"].rpartition(":")
            assert host == "127.0.0.1" and int(port) > 0
            async with grpc.aio.insecure_channel(line["address"]) as channel:
                ans = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert ans.status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
