"""A verify that times out in the verifier fails its rollout as ``verify``/``timeout`` and is not retried (issue #15):
a retry would only hold another verifier thread or worker for as long again. Other verifier 5xx still are."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollgate.gateway import GatewayCore, GatewayMetrics, RolloutRequest
from rollgate.gateway._retry import is_transient, not_a_verify_timeout
from rollgate.gateway.errors import VerifyError
from rollgate.verifier._isolation import VerifyLimits
from rollgate.verifier.hosting import create_app, start_server
from tests.fakes import FakeModelServer
from tests.gateway.gw_helpers import make_config, task

_VERIFIER = """
import threading
release = threading.Event()
calls = []

def verify(task, response):
    calls.append(task["mode"])
    if task["mode"] == "slow":
        release.wait(30)
        return 1.0
    if task["mode"] == "flaky" and calls.count("flaky") == 1:
        raise RuntimeError("transient checker failure")
    return 1.0
"""


@pytest.fixture
def verifier_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "gw_timeout_verifier.py").write_text(_VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import gw_timeout_verifier  # type: ignore[import-not-found]

    yield gw_timeout_verifier
    gw_timeout_verifier.release.set()
    sys.modules.pop("gw_timeout_verifier", None)


async def _rollout(verifier_url: str, model_url: str, mode: str) -> Any:
    cfg = make_config(model_url, verifier_url, kind="single_turn")  # 3 attempts, tiny waits
    async with GatewayCore(cfg, metrics=GatewayMetrics()) as core:
        return await core.run_rollout(RolloutRequest.from_dicts("r1", "a", task("say: x", "x", mode=mode)))


async def test_a_verify_timeout_answer_fails_the_rollout_once_and_is_not_retried(verifier_module: Any) -> None:
    app = create_app("gw_timeout_verifier:verify", limits=VerifyLimits(timeout_s=0.3))
    async with await start_server(app, "127.0.0.1", 0, grace_s=1) as verifier, FakeModelServer() as model:
        out = await _rollout(verifier.url, model.base_url, "slow")
        assert out.error is not None
        assert (out.error.stage, out.error.kind, out.error.http_status, out.error.attempts) == (
            "verify", "timeout", 504, 1)
        assert "--verify-timeout-s" in out.error.message
        assert verifier_module.calls == ["slow"]  # one call: no retry
        # Contrast: an ordinary verifier 5xx is still retried, and here the retry succeeds.
        out = await _rollout(verifier.url, model.base_url, "flaky")
        assert out.error is None and out.reward == 1.0
        assert verifier_module.calls == ["slow", "flaky", "flaky"]


@pytest.mark.parametrize(("kind", "status", "retried"), [
    ("timeout", 504, False),     # the verifier answered: its verify ran past its limit
    ("timeout", 0, True),        # no answer within our own timeout: the network or the server, maybe transient
    ("http_error", 504, True),   # a proxy's 504 without our error body
    ("http_error", 503, True),   # busy: the verify never ran
])
def test_only_an_answered_verify_timeout_is_exempt_from_retries(kind: str, status: int, retried: bool) -> None:
    exc = VerifyError("x", kind=kind, http_status=status)
    check: Callable[[BaseException], bool] = not_a_verify_timeout
    assert check(exc) is retried
    assert is_transient(exc)  # the general rule is unchanged
