"""The README's verification-testing loop on a real ``rollgate up`` stack, as a user types it.

``rollgate up`` starts its gateway with a fresh admin token and leaves it in a file only the user can read, so
``rollgate gateway set test_verifier +verifier_url=…`` works with no token in the environment. The loop then
collects, edits ``verify()`` (the ``--reload`` server swaps it in) and collects again: the rewards change.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rollgate._local_admin import token_path
from tests.conftest import require_tool
from tests.e2e.stack import ROOT, env_with, read_ready, running_stack, stop

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _block(marker: str, lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return str(block)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(url: str) -> str:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
        return str(json.loads(resp.read())["version"])


def _rewards(lines: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run the loop's collect and count lines; return what the count printed."""
    collect, count = lines
    subprocess.run(collect, shell=True, cwd=cwd, env=env, check=True, timeout=120, capture_output=True)
    return subprocess.run(count, shell=True, cwd=cwd, env=env, check=True, timeout=60, capture_output=True,
                          text=True).stdout


def test_readme_verification_loop_on_a_local_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool("jq")
    monkeypatch.delenv("ROLLGATE_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("ROLLGATE_STATE_DIR", str(tmp_path / "state"))
    # The README's verifier and tasks the fake model answers: "say: X" makes it answer X.
    (tmp_path / "my_verifier.py").write_text(_block("# my_verifier.py", "python"), encoding="utf-8")
    tasks = [{"responses_create_params": {"input": f"say: {'Paris' if i % 2 else 'Lyon'}"},
              "expected_answer": "Paris"} for i in range(20)]
    (tmp_path / "verification_test.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    loop = [line.strip() for line in _block("rollgate gateway set test_verifier", "bash").splitlines()
            if line.strip() and not line.startswith("#")]
    serve, set_route, collect, count = loop
    port = _free_port()  # the README's 8001 may be taken on a shared machine
    serve, set_route = serve.replace("8001", str(port)), set_route.replace("8001", str(port))
    assert serve.endswith("&")

    with running_stack(agents=["test_verifier"]) as stack:
        address = stack["address"]
        env = env_with(ROLLGATE_GATEWAY=address)
        # The token file exists, is the user's alone, and is gone when the stack stops (checked below).
        path = token_path(address)
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
        verifier = subprocess.Popen(serve.rstrip("&").split(), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    text=True)
        try:
            url = str(read_ready(verifier)["url"])
            routed = subprocess.run(set_route, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=60)
            assert routed.returncode == 0, routed.stderr
            assert json.loads(routed.stdout)["route"]["verifier_url"] == f"http://127.0.0.1:{port}"

            before = _rewards([collect, count], env, tmp_path)
            assert re.search(r"^\s*10 0(\.0)?$", before, re.M) and re.search(r"^\s*10 1(\.0)?$", before, re.M), before

            # Edit verify(): half credit for a wrong answer. The running server swaps it in.
            old = _version(url)
            source = (tmp_path / "my_verifier.py").read_text()
            (tmp_path / "my_verifier.py").write_text(source.replace(
                'float(text.strip() == task["expected_answer"])',
                'float(text.strip() == task["expected_answer"]) or 0.5'))
            deadline = time.monotonic() + 30
            while _version(url) == old and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _version(url) != old, "the edited verify() was not reloaded"

            after = _rewards([collect, count], env, tmp_path)
            assert re.search(r"^\s*10 0\.5$", after, re.M) and re.search(r"^\s*10 1(\.0)?$", after, re.M), after
        finally:
            stop(verifier)
    assert not path.exists(), "rollgate up left its admin token behind"


def test_gateway_set_without_a_token_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway started with a token the CLI does not have: the refusal comes with the way out."""
    monkeypatch.setenv("ROLLGATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ROLLGATE_ADMIN_TOKEN", "theirs")
    with running_stack(agents=["test_verifier"]) as stack:
        env = {k: v for k, v in env_with().items() if k != "ROLLGATE_ADMIN_TOKEN"}
        # The stack used the user's own token: no file was written, and the CLI has nothing to send.
        assert not token_path(stack["address"]).exists()
        proc = subprocess.run(["rollgate", "gateway", "set", "test_verifier", "+verifier_url=http://127.0.0.1:9",
                               f"+gateway={stack['address']}"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert "ROLLGATE_ADMIN_TOKEN" in proc.stderr and "hint:" in proc.stderr
        ok = subprocess.run(["rollgate", "gateway", "set", "test_verifier", "+verifier_url=http://127.0.0.1:9",
                             f"+gateway={stack['address']}"], env={**env, "ROLLGATE_ADMIN_TOKEN": "theirs"},
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
    assert os.environ["ROLLGATE_ADMIN_TOKEN"] == "theirs"
