"""Send Responses requests through NeMo Gym's own vLLM model server; run by the compatibility suite in NeMo Gym's venv.

    echo '{"base_url": "http://127.0.0.1:P/v1", "config": {...}, "requests": [{...}]}' | \\
        .nemo-gym-venv/0.7.0/bin/python tests/compat/nemo_vllm_model.py

NeMo Gym's ``VLLMModel`` (``responses_api_models/vllm_model``) is built with ``config`` added to its
``VLLMModelConfig`` and served in-process (its own FastAPI app, middleware included, through Starlette's test
client); each request is posted to its ``/v1/responses``, which converts it and calls the chat backend at
``base_url`` over real HTTP. Prints one JSON line per request: ``{"status": …}``. What NeMo Gym sent is read at the
backend (the caller's fake model). Imports go through importlib so that this file type-checks where NeMo Gym is
not installed.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    sys.argv = sys.argv[:1]  # NeMo Gym's config loader reads Hydra overrides from the command line
    omegaconf: Any = importlib.import_module("omegaconf")
    server_utils: Any = importlib.import_module("nemo_gym.server_utils")
    vllm: Any = importlib.import_module("responses_api_models.vllm_model.app")
    test_client: Any = importlib.import_module("fastapi.testclient").TestClient
    config = vllm.VLLMModelConfig(host="127.0.0.1", port=0, entrypoint="app.py", name="policy_model",
                                  base_url=spec["base_url"], api_key="unused", model="fake-model",
                                  return_token_id_information=False, uses_reasoning_parser=False,
                                  **spec.get("config", {}))
    # No head server: the model server calls none (its ServerClient is only held).
    client = server_utils.ServerClient(head_server_config=server_utils.BaseServerConfig(host="127.0.0.1", port=1),
                                       global_config_dict=omegaconf.OmegaConf.create({}))
    app = vllm.VLLMModel(config=config, server_client=client).setup_webserver()
    with test_client(app) as http:
        for body in spec["requests"]:
            answer = http.post("/v1/responses", json=body)
            print(json.dumps({"status": answer.status_code, "text": answer.text[:2000]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
