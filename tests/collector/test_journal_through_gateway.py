"""Issue 14, Done-when 1, through the real gateway: the model's calls are counted at the fake model.

2% of the model calls hang (the gateway's default timeouts: far longer than any test waits). The real
``ng_collect_rollouts`` runs in a subprocess against an in-process gateway; it is stopped with Ctrl-C, or killed
with SIGKILL at three points, and then resumed with ``+resume=true`` once the model no longer hangs. Every
rollout the model finished must be on disk, and the resume must call the model only for the others.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rollgate.collector.run._tasks import iter_specs
from rollgate.gateway._config import RetryConfig, Timeouts
from tests.collector.test_journal import _finished_on_disk
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, make_config, task

N = 300
HUNG = frozenset({7, 52, 101, 150, 203, 261})  # 2% of the model calls
_SAY = re.compile(r"say: (\d+)")


class HangingModel(FakeModelServer):
    """The fake model; a call for a task in ``hang`` never answers. ``calls`` counts calls per task index."""

    def __init__(self) -> None:
        super().__init__(latency_s=0.002)
        self.hang: set[int] = set(HUNG)
        self.calls: Counter[int] = Counter()
        self.answered: set[int] = set()

    async def _prelude(self, request: web.Request, path: str) -> tuple[dict[str, Any], web.Response | None]:
        body, fail = await super()._prelude(request, path)
        found = _SAY.search(json.dumps(body))
        assert found is not None
        index = int(found.group(1))
        self.calls[index] += 1
        if index in self.hang:
            await asyncio.sleep(3600)
        self.answered.add(index)
        return body, fail


def _gateway_config(model: FakeModelServer, rs: FakeResourcesServer) -> Any:
    # The gateway's own defaults for timeouts and retries (make_config shortens them for other tests).
    return make_config(model.base_url, rs.url, kind="single_turn",
                       timeouts=Timeouts().model_dump(), retries=RetryConfig().model_dump())


def _task_of(inp: Path) -> dict[str, int]:
    return {s.rollout_id: s.task_index for s in iter_specs(inp, agent="a", overrides={}, num_repeats=1, limit=None)}


async def _until(condition: Callable[[], bool], proc: asyncio.subprocess.Process, what: str,
                 timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.returncode is None, f"the collector ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _resume(inp: Path, out: Path) -> Counter[int]:
    """Resume with a model that hangs no more; the model calls the resume made, per task index."""
    # A fresh model and gateway: the stopped collector's rollouts still at the first gateway are cancelled once it
    # notices the stream is gone, but a request already written to the first model may still be counted there
    # after that (its handler runs late under load); none of that is the resume's.
    async with HangingModel() as model, FakeResourcesServer() as rs, live_gateway(_gateway_config(model, rs)) as gw:
        model.hang.clear()
        code, _, stderr = await finish(await start_collector(f"127.0.0.1:{gw.port}", inp, out,
                                                             "+num_samples_in_parallel=20", "+resume=true"))
    assert code == 0, stderr
    rows = read_rows(out)
    assert [r["_rollout"]["task_index"] for r in rows] == list(range(N))  # every rollout once, in input order
    assert all(r["reward"] == 1.0 for r in rows)
    return model.calls


async def test_ctrl_c_with_hung_model_calls_keeps_every_answer_and_the_resume_calls_only_the_hung(
        tmp_path: Path) -> None:
    async with HangingModel() as model, FakeResourcesServer() as rs, live_gateway(_gateway_config(model, rs)) as gw:
        address = f"127.0.0.1:{gw.port}"
        inp = write_tasks(tmp_path / "t.jsonl", [task(f"say: {i}", str(i)) for i in range(N)])
        out = tmp_path / "o.jsonl"
        proc = await start_collector(address, inp, out, "+num_samples_in_parallel=20")
        task_of = _task_of(inp)
        finished = set(range(N)) - HUNG
        await _until(lambda: len(model.answered) == len(finished), proc, "every answer but the hung ones")
        await _until(lambda: {task_of[i] for i in _finished_on_disk(tmp_path)} == finished, proc,
                     "the answers in the journal", timeout_s=10)
        proc.send_signal(signal.SIGINT)
        code, _, stderr = await finish(proc)
        assert code == 130, stderr
        assert len(read_rows(out)) < 10  # the output itself is held by the first hung rollout (task 7)
        assert {task_of[i] for i in _finished_on_disk(tmp_path)} == finished  # Ctrl-C kept them all

        resumed = await _resume(inp, out)
    assert resumed == Counter(dict.fromkeys(HUNG, 1))


@pytest.mark.parametrize("point", [0.1, 0.5, 1.0])
async def test_sigkill_keeps_every_answer_the_collector_had_and_the_resume_calls_only_the_rest(
        tmp_path: Path, point: float) -> None:
    async with HangingModel() as model, FakeResourcesServer() as rs, live_gateway(_gateway_config(model, rs)) as gw:
        address = f"127.0.0.1:{gw.port}"
        inp = write_tasks(tmp_path / "t.jsonl", [task(f"say: {i}", str(i)) for i in range(N)])
        out = tmp_path / "o.jsonl"
        task_of = _task_of(inp)
        proc = await start_collector(address, inp, out, "+num_samples_in_parallel=20")
        await _until(lambda: len(model.answered) >= point * (N - len(HUNG)), proc, f"{point:.0%} of the answers")
        answered = set(model.answered)
        # Those answers reach the journal within moments (one write per event-loop iteration)...
        await _until(lambda: answered <= {task_of[i] for i in _finished_on_disk(tmp_path)}, proc,
                     "the answers in the journal", timeout_s=10)
        proc.send_signal(signal.SIGKILL)
        await finish(proc)
        # ... and stay there after SIGKILL; the resume runs exactly the rollouts not on disk.
        on_disk = {task_of[i] for i in _finished_on_disk(tmp_path)}
        assert answered <= on_disk
        assert not on_disk & HUNG

        resumed = await _resume(inp, out)
    assert resumed == Counter(dict.fromkeys(set(range(N)) - on_disk, 1))
