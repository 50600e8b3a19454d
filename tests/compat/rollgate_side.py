"""rollgate's side of the compatibility suite: its gateway in front of NeMo Gym's servers, and our collector.

``start_gateway`` runs a real ``rollgate gateway serve`` process whose agent ``<server>__<api>`` sends one NeMo Gym
resources server's rollouts to the plain fake model over one model API; ``Rollgate.collect`` runs our
``ng_collect_rollouts`` on that server's tasks (once; the tests that read a collection share it) and keeps the
slice of NeMo Gym's log written meanwhile, so each server's answers to the gateway can be checked.

    rg = Rollgate(address, workdir, gateway_log, stack); got = rg.collect(SERVERS["session_state"], "responses")
    got.rows, got.failures, access_lines(got.nemo_log, got.server.resources)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.compat.nemo import ROOT, NemoStack, read_jsonl, read_ready, tail
from tests.compat.tasks import NemoServer

__all__ = ["APIS", "Collection", "Rollgate", "agent_name", "describe", "gateway_log_tail", "refused_fields",
           "start_gateway"]

APIS = ("chat_completions", "responses")
BIN = Path(sys.executable).parent


def agent_name(server: NemoServer, api: str) -> str:
    return f"{server.key}__{api}"


@dataclass(repr=False)
class Collection:
    """One run of our ``ng_collect_rollouts`` through the gateway, and the NeMo Gym log written meanwhile."""

    server: NemoServer
    api: str
    returncode: int
    stderr: str
    out: Path
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    nemo_log: str

    def __repr__(self) -> str:  # what pytest prints beside a failed assertion: the gist, not the logs
        return (f"Collection({self.server.key}, {self.api}: exit {self.returncode}, {len(self.rows)} rows, "
                f"{len(self.failures)} failures)")


class Rollgate:
    """A running rollgate gateway in front of NeMo Gym's resources servers, and our collector."""

    def __init__(self, address: str, workdir: Path, log: Path, stack: NemoStack) -> None:
        self.address = address
        self.workdir = workdir
        self.log = log
        self.stack = stack
        self._collections: dict[tuple[str, str], Collection] = {}

    def collect(self, server: NemoServer, api: str) -> Collection:
        """Our ``ng_collect_rollouts`` on ``server``'s tasks through agent ``<server>__<api>`` (made once)."""
        key = (server.key, api)
        if key not in self._collections:
            self._collections[key] = self._collect(server, api)
        return self._collections[key]

    def _collect(self, server: NemoServer, api: str) -> Collection:
        run = self.workdir / f"{server.key}__{api}"
        run.mkdir()
        tasks, out = run / "tasks.jsonl", run / "rollouts.jsonl"
        tasks.write_text("".join(json.dumps(row) + "\n" for row in server.tasks))
        offset = self.stack.log_size()
        done = subprocess.run(
            [str(BIN / "ng_collect_rollouts"), f"+agent_name={agent_name(server, api)}",
             f"+input_jsonl_fpath={tasks}", f"+output_jsonl_fpath={out}", f"+gateway={self.address}",
             f"+num_repeats={server.num_repeats}", "+num_samples_in_parallel=4"],
            cwd=run, capture_output=True, text=True, timeout=120,
        )
        failures = read_jsonl(out.with_name(out.name + ".failures"))
        return Collection(server, api, done.returncode, done.stderr, out, read_jsonl(out), failures,
                          self.stack.settle(offset))



def start_gateway(config: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``rollgate gateway serve`` on a free loopback port, its log in ``log``; (process, its gRPC address)."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollgate.gateway", "serve", "--config", str(config), "--port", "0",
             "--metrics-port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True,
        )
    try:
        return proc, str(read_ready(proc, 60)["address"])
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise


# A 422 from FastAPI (NeMo Gym's servers): {"detail":[{"type":"missing","loc":["body","response","tools"],…},…]}
_REFUSED_FIELD = re.compile(r'"type":\s*"(\w+)",\s*"loc":\s*\[([^\]]*)\]')


def refused_fields(message: str) -> list[str]:
    """``missing body.response.tools``-style lines for every field a 422 answer quoted in ``message`` names."""
    found = [f"{kind} {'.'.join(json.loads(f'[{loc}]'))}" for kind, loc in _REFUSED_FIELD.findall(message)]
    return sorted(set(found))


def describe(collection: Collection) -> str:
    """The evidence a failed assertion shows: exit status, the first failures (and the fields a 422 named), and
    the collector's stderr tail."""
    lines = [f"our collector exited {collection.returncode} on {collection.server.key} over {collection.api}: "
             f"{len(collection.rows)} rows, {len(collection.failures)} failures"]
    for failure in collection.failures[:2]:
        error = failure.get("error") or {}
        lines.append(f"  failure: {json.dumps(error)[:800]}")
        if fields := refused_fields(str(error.get("message", ""))):
            lines.append(f"    the server refused: {', '.join(fields)}")
    lines.append(f"collector stderr (tail):\n{collection.stderr[-800:]}")
    return "\n".join(lines)


def gateway_log_tail(rg: Rollgate) -> str:
    return tail(rg.log, 1200)
