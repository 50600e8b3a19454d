"""Backend extras reach the model as NeMo Gym's own vLLM model server sends them (against NeMo Gym 0.7 itself).

NeMo Gym rows carry per-request vLLM knobs in ``responses_create_params.metadata`` (``extra_body``,
``chat_template_kwargs``, JSON text), and its vLLM server adds its config's ``extra_body`` and
``chat_template_kwargs``. The same requests, with the same agent config, go through NeMo Gym's ``VLLMModel``
(``nemo_vllm_model.py``, in its venv) and through our gateway, each to a fake chat backend on loopback; the
sampling fields and template arguments each backend received must be the same.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from rollgate.protos.rollgate.v1 import gateway_pb2 as pb
from tests.compat.nemo import HERE
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import collect, make_config, req, running_gateway, task

# What sampling and templating read; the messages' shape (a string or text parts) and ``metadata`` (NeMo Gym sends
# it on, we do not: vLLM ignores it) are not compared.
COMPARED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_tokens",
            "chat_template_kwargs")
AGENT = {"extra_body": {"top_k": 5, "repetition_penalty": 1.05, "temperature": 0.7},
         "chat_template_kwargs": {"enable_thinking": False, "mode": "agent"}}
CASES: dict[str, dict[str, Any]] = {
    "agent config only": {"input": "say: 1"},
    "the request's fields win over every extra_body": {"input": "say: 2", "temperature": 0.2, "top_p": 0.9},
    "metadata over the agent's": {
        "input": "say: 3", "max_output_tokens": 64,
        "metadata": {"extra_body": json.dumps({"top_k": 40, "min_p": 0.05, "seed": 7}),
                     "chat_template_kwargs": json.dumps({"enable_thinking": True})}},
    "metadata cannot override the request's own field": {
        "input": "say: 4", "temperature": 0.3, "metadata": {"extra_body": json.dumps({"temperature": 1.5})}},
}


async def _through_nemo(venv: Path, requests: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    async with FakeModelServer() as model:
        spec = {"base_url": model.base_url, "config": AGENT, "requests": requests}
        proc = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "python"), str(HERE / "nemo_vllm_model.py"), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir)  # Hydra writes outputs/ there
        async with asyncio.timeout(120):
            out, err = await proc.communicate(json.dumps(spec).encode())
        assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
        answers = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert [a["status"] for a in answers] == [200] * len(requests), answers
        return list(model.bodies)


async def _through_rollgate(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with FakeModelServer() as model, FakeResourcesServer() as rs:
        config = make_config(model.base_url, rs.url, model=AGENT)
        async with running_gateway(config) as (stub, _):
            results = await collect(stub, [req(str(i), task("", "", responses_create_params=params))
                                           for i, params in enumerate(requests)], window=1)
        assert [r.status for _, r in sorted(results.items())] == [pb.ROLLOUT_STATUS_OK] * len(requests)
        return list(model.bodies)


async def test_the_backend_gets_what_nemo_gyms_vllm_server_sends(nemo_venv: Path, tmp_path: Path) -> None:
    requests = list(CASES.values())
    nemo = await _through_nemo(nemo_venv, requests, tmp_path)
    ours = await _through_rollgate(requests)
    assert len(nemo) == len(ours) == len(requests)
    for name, theirs, mine in zip(CASES, nemo, ours, strict=True):
        expected = {k: theirs[k] for k in COMPARED if k in theirs}
        assert {k: mine[k] for k in COMPARED if k in mine} == expected, name
    # The cases do what they say (so the comparison is not of two empty bodies).
    assert nemo[0]["top_k"] == 5 and nemo[0]["chat_template_kwargs"] == AGENT["chat_template_kwargs"]
    assert nemo[2]["top_k"] == 40 and nemo[2]["chat_template_kwargs"]["enable_thinking"] is True
    assert nemo[3]["temperature"] == 0.3

