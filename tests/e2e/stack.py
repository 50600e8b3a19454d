"""Start the real trio (fake model + ``rollgate up``) as subprocesses on loopback, the way a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rollgate.collector._children import stop_process, wait_ready

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOW_AGENTS = ["my_agent", "my_rl_agent", "test_verifier", "model_v1", "model_v2", "model_v3"]


def read_ready(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> dict[str, Any]:
    return wait_ready(proc, timeout_s)


def stop(proc: subprocess.Popen[str]) -> None:
    stop_process(proc, grace_s=15)


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra)
    return env


@contextmanager
def running_stack(*, verifier: str = "exact_match", agents: list[str] | None = None,
                  model_args: list[str] | None = None, up_args: list[str] | None = None,
                  cwd: Path = ROOT) -> Iterator[dict[str, Any]]:
    """Yield the ready event (``address``, ``metrics_url``, ``agents``) of a running ``rollgate up`` in front of
    the fake model."""
    model = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.model_server", "--port", "0", *(model_args or [])],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env_with(),
    )
    up: subprocess.Popen[str] | None = None
    try:
        url = str(read_ready(model)["url"])
        up = subprocess.Popen(
            [str(BIN / "rollgate"), "up", "--model-url", url, "--model", "fake-model",
             "--verifier", verifier, "--agents", ",".join(agents or WORKFLOW_AGENTS), "--port", "0",
             "--metrics-port", "0",
             *(up_args or [])],
            cwd=cwd, stdout=subprocess.PIPE, text=True, env=env_with(),
        )
        yield read_ready(up)
    finally:
        if up is not None:
            stop(up)
        stop(model)
