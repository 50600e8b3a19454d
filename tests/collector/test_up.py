"""``rollgate up`` as a user runs it (a subprocess), with fake verifier/gateway children; collecting through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollgate.collector import collect_main
from rollgate.collector.errors import UsageError
from rollgate.collector.stack._stackfile import UpConfig, load_stack
from tests.collector.conftest import read_jsonl, task, write_tasks

ROOT = Path(__file__).resolve().parents[2]


def _up(args: list[str], **env: str) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "tests.collector.up_with_fakes", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def _ready(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    event = json.loads(line)
    assert isinstance(event, dict)
    return event


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_quick_form_starts_verifier_and_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "gateway.yaml"
    proc = _up(["--model-url", "http://127.0.0.1:8000/v1", "--model", "m", "--verifier", "exact_match",
                "--agents", "my_agent,my_rl_agent", "--port", "0", "--max-steps", "4"],
               FAKE_GATEWAY_CONFIG_COPY=str(copy))
    try:
        ready = _ready(proc)
        assert ready["event"] == "ready" and ready["service"] == "stack"
        assert ready["agents"] == ["my_agent", "my_rl_agent"]
        # The stack is usable: collect through it.
        inp = write_tasks(tmp_path / "t.jsonl", [task(0), task(1)])
        out = tmp_path / "o.jsonl"
        assert collect_main(["+agent_name=my_rl_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
                             f"+gateway={ready['address']}"]) == 0
        assert len(read_jsonl(out)) == 2
    finally:
        status, err = _stop(proc)
    assert status == 0, err
    assert f"rollgate up: gateway ready at {ready['address']} (agents: my_agent, my_rl_agent)" in err
    assert "fake verifier: loading exact_match" in err  # child stderr passes through
    config = yaml.safe_load(copy.read_text())
    assert config == {"agents": {
        name: {"model": {"base_urls": ["http://127.0.0.1:8000/v1"], "name": "m", "api": "chat_completions",
                         "api_key_env": None},
               "verifier_url": "http://127.0.0.1:9/exact_match", "kind": "tool_calling", "max_steps": 4}
        for name in ("my_agent", "my_rl_agent")
    }}


def test_stack_file_with_a_remote_verifier(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump({
        "models": {"a": {"base_url": "http://h:1/v1", "name": "x", "api": "responses"}},
        "verifiers": {"local": {"target": "pkg.mod:verify"}, "remote": {"url": "http://r:2"}},
        "agents": {"one": {"model": "a", "verifier": "local", "default_params": {"temperature": 0.3}},
                   "two": {"model": "a", "verifier": "remote", "kind": "single_turn"}},
    }))
    copy = tmp_path / "gateway.yaml"
    proc = _up(["--config", str(stack), "--port", "0"], FAKE_GATEWAY_CONFIG_COPY=str(copy))
    try:
        assert _ready(proc)["agents"] == ["one", "two"]
    finally:
        status, err = _stop(proc)
    assert status == 0, err
    agents = yaml.safe_load(copy.read_text())["agents"]
    assert agents["one"]["verifier_url"] == "http://127.0.0.1:9/pkg.mod:verify"
    assert agents["one"]["default_params"] == {"temperature": 0.3}
    assert agents["two"]["verifier_url"] == "http://r:2" and agents["two"]["kind"] == "single_turn"
    assert agents["two"]["model"]["api"] == "responses"


def test_a_child_that_dies_takes_the_stack_down() -> None:
    proc = _up(["--model-url", "http://h/v1", "--model", "m", "--agents", "a", "--port", "0"],
               FAKE_GATEWAY_DIE_AFTER_S="0.5")
    _ready(proc)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "gateway exited with status 3" in err


def test_a_verifier_that_cannot_start() -> None:
    proc = _up(["--model-url", "http://h/v1", "--model", "m", "--verifier", "broken", "--agents", "a"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and out == ""
    assert "cannot load 'broken'" in err and "exited with status 1 before it was ready" in err


def test_sigint_during_wait_exits_zero() -> None:
    proc = _up(["--model-url", "http://h/v1", "--model", "m", "--agents", "a", "--port", "0"])
    _ready(proc)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_example_stack_names_the_workflow_agents() -> None:
    stack = load_stack(UpConfig(config=str(ROOT / "examples" / "stack.yaml")))
    assert set(stack.agents) == {"my_agent", "my_rl_agent", "test_verifier", "model_v1", "model_v2", "model_v3"}
    assert {stack.agents[f"model_v{i}"].model for i in (1, 2, 3)} == {"model_v1", "model_v2", "model_v3"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"model_url": "http://h/v1"}, "needs --model"),
        ({"verifier": "a", "verifier_url": "http://v"}, "not both"),
        ({"config": "x.yaml", "model_url": "http://h/v1"}, "cannot be combined"),
        ({"config": "/nonexistent/stack.yaml"}, "cannot read"),
    ],
)
def test_up_config_errors(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        load_stack(UpConfig.model_validate(kwargs))


def test_stack_file_references_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"verifiers": {"v": {"target": "exact_match"}},
                                    "agents": {"a": {"model": "nope", "verifier": "v"}}}))
    with pytest.raises(UsageError, match="unknown model 'nope'"):
        load_stack(UpConfig(config=str(path)))


def _children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task_dir in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task_dir / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its (re-)parent has not reaped it yet


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the children")
def test_sigkill_of_up_ends_its_children(tmp_path: Path) -> None:
    """The real `rollgate up` (real verifier and gateway processes): SIGKILL can't be handled, yet no child stays."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollgate.collector", "up", "--model-url", "http://127.0.0.1:9/v1", "--model", "m",
         "--verifier", "exact_match", "--agents", "my_agent", "--port", "0", "--metrics-port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    children: list[int] = []
    try:
        assert _ready(proc)["event"] == "ready"
        children = _children_of(proc.pid)
        assert len(children) == 2, children  # the verifier and the gateway
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 45  # the poll (0.5 s), then each drains as on SIGTERM
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [c for c in children if _alive(c)]
        assert not left, f"children still running after up was killed: {left}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
        for child in filter(_alive, children):  # whatever the outcome, nothing outlives the test
            os.kill(child, signal.SIGKILL)
