"""NeMo Gym's own ``/aggregate_metrics`` computation with a user's hooks; run by the compatibility suite in its venv.

    echo '{"rows": [...], "hooks": "/path/to/metrics_hooks_sample.py"}' | \\
        .nemo-gym-venv/0.7.0/bin/python tests/compat/nemo_aggregate.py

Calls ``nemo_gym.reward_profile.compute_aggregate_metrics(rows, compute_metrics_fn=…, get_key_metrics_fn=…)``
with the hooks module's three functions, as ``SimpleResourcesServer.aggregate_metrics`` does, and prints the answer
(``AggregateMetrics``) as JSON. Imports go through importlib so that this file type-checks where NeMo Gym is not
installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from typing import Any


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    sys.argv = sys.argv[:1]
    found = importlib.util.spec_from_file_location("metrics_hooks_sample", spec["hooks"])
    assert found is not None and found.loader is not None
    hooks = importlib.util.module_from_spec(found)
    found.loader.exec_module(hooks)
    profile: Any = importlib.import_module("nemo_gym.reward_profile")
    answer = profile.compute_aggregate_metrics(spec["rows"], compute_metrics_fn=hooks.compute_metrics,
                                               get_key_metrics_fn=hooks.get_key_metrics,
                                               compute_repeat_metrics_fn=hooks.compute_repeat_metrics)
    print(json.dumps(answer.model_dump(mode="json")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
