"""The compatibility suite's fixtures: NeMo Gym (``ng_run``) and rollgate's gateway, each started once per session.

``nemo_stack``: NeMo Gym's own servers (``tests/compat/nemo.py``), its ``openai_model`` in front of the fake model's
complete Responses port. ``rollgate``: a real ``rollgate gateway serve`` process whose agents send every NeMo Gym
resources server's rollouts to the plain fake model, on each API (agent ``<server>__<api>``), and our
``ng_collect_rollouts``. Collections are made once and shared by the tests that read them.

Without NeMo Gym's venv (``make nemo-gym-venv``; it needs Python 3.13) every test here skips with the reason; under
``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector._children import stop_process
from tests.compat.nemo import ROOT, NemoStack, read_ready, require_venv
from tests.compat.rollgate_side import APIS, Rollgate, agent_name, start_gateway
from tests.compat.tasks import ROLLGATE_VERIFIER, SERVERS


@pytest.fixture(scope="session")
def nemo_venv() -> Path:
    return require_venv()


@pytest.fixture(scope="session")
def fake_model() -> Iterator[dict[str, Any]]:
    """``url``: the plain fake (rollgate's backend); ``complete_url``: complete Responses (NeMo Gym's backend)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.compat.model", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield read_ready(proc, 30)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def nemo_stack(nemo_venv: Path, fake_model: dict[str, Any],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[NemoStack]:
    stack = NemoStack.start(nemo_venv, model_url=str(fake_model["complete_url"]),
                            workdir=tmp_path_factory.mktemp("nemo_gym"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def rollgate(nemo_stack: NemoStack, fake_model: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollgate]:
    workdir = tmp_path_factory.mktemp("rollgate")
    conf = workdir / "conf"
    conf.mkdir()  # the gateway watches its config's folder: keep the runs' files out of it
    agents = {
        agent_name(server, api): {
            "kind": "tool_calling",
            "model": {"base_urls": [fake_model["url"]], "name": "fake-model", "api": api},
            "verifier_url": nemo_stack.urls[server.resources],
            "max_steps": 5,
        }
        for server in [*SERVERS.values(), ROLLGATE_VERIFIER] for api in APIS
    }
    config = conf / "gateway.json"
    config.write_text(json.dumps({"agents": agents}, indent=2))
    log = workdir / "gateway.log"
    proc, address = start_gateway(config, log)
    try:
        yield Rollgate(address, workdir, log, nemo_stack)
    finally:
        stop_process(proc)


