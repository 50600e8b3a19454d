"""`rollgate verifier serve` as a real process, main()'s exit codes, and the package's front door."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollgate import verifier
from rollgate.verifier.hosting import main
from tests.verifier.verifier_helpers import TIMEOUT, answer_response

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    # The repo root importable whatever the cwd (an editable install may predate the verifier package).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


async def _spawn(*args: str, cwd: Path = REPO) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollgate.verifier", *args,
        cwd=cwd, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _ready_url(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        pytest.fail(f"no ready line; stderr: {err.decode()}")
    ready = json.loads(line)
    assert ready["event"] == "ready" and ready["service"] == "verifier"
    assert ready["url"].startswith("http://127.0.0.1:")
    return str(ready["url"])


async def _stop(proc: asyncio.subprocess.Process) -> tuple[int, bytes, bytes]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, stdout, stderr


async def test_serve_builtin_prints_ready_line_and_answers(nemo_request: dict[str, Any]) -> None:
    proc = await _spawn("serve", "exact_match", "--port", "0")
    try:
        url = await _ready_url(proc)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["verifier"] == "exact_match"
            async with http.post(f"{url}/verify", data=json.dumps(nemo_request)) as resp:
                assert resp.status == 200 and (await resp.json())["reward"] == 1.0
    finally:
        code, stdout, stderr = await _stop(proc)
    assert code == 0, stderr.decode()
    assert stdout == b"", "nothing but the ready line on stdout"


async def test_serve_user_module_from_the_cwd(tmp_path: Path) -> None:
    (tmp_path / "my_check.py").write_text("def verify(task, response):\n    return {'reward': 0.25, 'x': 1}\n")
    proc = await _spawn("serve", "+target=my_check:verify", "+port=0", cwd=tmp_path)
    try:
        url = await _ready_url(proc)
        body = {"responses_create_params": {"input": "q"}, "response": answer_response("hi")}
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.post(f"{url}/verify", data=json.dumps(body)) as resp:
                assert resp.status == 200
                assert resp.headers["X-Verifier-Version"].startswith("sha256:")
                assert (await resp.json())["x"] == 1
    finally:
        code, _, stderr = await _stop(proc)
    assert code == 0, stderr.decode()


async def test_serve_unloadable_target_exits_2_before_binding() -> None:
    proc = await _spawn("serve", "nosuch:thing", "--port", "0")
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert stdout == b""  # no ready line: it never bound
    assert stderr.decode().startswith("error: nosuch:thing: module 'nosuch' not found")


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["serve", "my_verifier"], "nor a built-in verifier; built-ins: contains, exact_match"),
        (["serve", "+target=exact_match", "--prot", "1"], "did you mean 'port'"),
        (["serve", "exact_match", "--port", "70000"], "port"),
        (["launch", "exact_match"], "unknown command 'launch'"),
        ([], "usage: rollgate verifier serve"),
    ],
)
def test_main_errors_exit_2(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expect in captured.err
    assert captured.out == ""


def test_exported_members() -> None:
    # The room's one door: __all__ is exactly the public names the package exposes, and each one imports.
    public = {name for name in dir(verifier) if not name.startswith("_")}
    modules = {name for name, value in vars(verifier).items() if type(value) is type(verifier)}
    assert set(verifier.__all__) == public - modules - {"annotations"}
    for name in verifier.__all__:
        assert getattr(verifier, name) is not None


def test_errors_module_exports_the_tree() -> None:
    from rollgate.verifier import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.VerifierError)
        assert name in (errors.__doc__ or ""), f"{name} is missing from the error tree docstring"




async def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    (tmp_path / "slow_check.py").write_text(
        "import asyncio\nasync def verify(task, response):\n    await asyncio.sleep(1.0)\n    return 1.0\n"
    )
    proc = await _spawn("serve", "slow_check:verify", "--port", "0", "--grace-s", "10", cwd=tmp_path)
    try:
        url = await _ready_url(proc)
        body = {"responses_create_params": {"input": "q"}, "response": answer_response("hi")}
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async def call() -> tuple[int, Any]:
                async with http.post(f"{url}/verify", data=json.dumps(body)) as resp:
                    return resp.status, await resp.json()

            pending = asyncio.create_task(call())
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            status, answer = await asyncio.wait_for(pending, 15)
        assert (status, answer["reward"]) == (200, 1.0)
        await asyncio.wait_for(proc.wait(), 15)  # it exits by itself after the one SIGTERM
    finally:
        code, _, stderr = await _stop(proc)
    assert code == 0, stderr.decode()
