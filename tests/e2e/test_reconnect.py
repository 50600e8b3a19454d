"""A real gateway killed and restarted mid-run: the collector reconnects, resends, and finishes on its own.

The gateway is bound to a fixed free port so that its restart comes back at the same address, in front of the
fake model and the built-in ``exact_match`` verifier, each a real process on loopback.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.stack import BIN, ROOT, env_with, read_ready, stop


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway(config: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollgate.gateway", "serve", "--config", str(config), "--port", str(port),
         "--metrics-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env_with(),
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_gateway_killed_and_restarted_mid_run(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGKILL loses what ran and what waited at the gateway; SIGTERM finishes what runs and gives the rollouts
    sent ahead back unstarted. Either way the collector resends, and every rollout is written once."""
    model = subprocess.Popen([sys.executable, "-m", "tests.fakes.model_server", "--port", "0",
                              "--latency-ms", "20"], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env_with())
    verifier = subprocess.Popen([sys.executable, "-m", "rollgate.verifier", "serve", "exact_match", "--port", "0"],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env_with())
    procs: list[subprocess.Popen[str]] = [model, verifier]
    try:
        model_url = read_ready(model)["url"]
        verifier_url = read_ready(verifier)["url"]
        (tmp_path / "conf").mkdir()  # the gateway watches its config; keep the run's files out of its sight
        config = tmp_path / "conf" / "gateway.json"
        config.write_text(json.dumps({"agents": {"my_agent": {
            "kind": "single_turn",
            "model": {"base_urls": [model_url], "name": "fake-model", "api": "responses"},
            "verifier_url": verifier_url,
        }}}))
        port = _free_port()
        gateway = _gateway(config, port)
        procs.append(gateway)
        read_ready(gateway)

        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"responses_create_params": {"input": f"say: {i}"},
                                             "expected_answer": str(i)}) + "\n" for i in range(300)))
        out = tmp_path / "out.jsonl"
        collector = subprocess.Popen(
            [str(BIN / "ng_collect_rollouts"), "+agent_name=my_agent", f"+input_jsonl_fpath={tasks}",
             f"+output_jsonl_fpath={out}", f"+gateway=127.0.0.1:{port}", "+num_samples_in_parallel=8"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with(),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and collector.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 40:
                break
            time.sleep(0.01)
        assert collector.poll() is None, "the run ended before the gateway could be killed"

        gateway.send_signal(sig)
        gateway.wait(timeout=30)
        written_while_down = out.read_bytes().count(b"\n")
        time.sleep(1.0)  # the collector notices and keeps retrying while nothing listens
        restarted = _gateway(config, port)
        procs.append(restarted)
        read_ready(restarted)

        stdout, stderr = collector.communicate(timeout=180)
        assert collector.returncode == 0, stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["_rollout"]["task_index"] for r in rows] == list(range(300))  # each once, in order
        assert all(r["reward"] == 1.0 for r in rows)
        assert written_while_down < 300
        assert "reconnecting" in stderr
        assert json.loads(stdout) == {"reward": 1.0, "accuracy": 1.0}
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())
        assert manifest["reconnects"] >= 1 and manifest["counts"]["failed"] == 0
    finally:
        for proc in reversed(procs):
            stop(proc)
