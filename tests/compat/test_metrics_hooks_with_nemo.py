"""A verifier's ``compute_metrics`` / ``get_key_metrics`` / ``compute_repeat_metrics`` shape ``/aggregate_metrics``
as NeMo Gym 0.7's do.

The same hook functions (``metrics_hooks_sample.py``) and the same rows go through NeMo Gym's own
``compute_aggregate_metrics`` (``nemo_aggregate.py``, in its venv) and through ours; the answers must be equal,
number types included (``tests/verifier/test_verifier_aggregate._same``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from rollgate.verifier._aggregate import MetricsHooks, aggregate_metrics
from tests.compat import metrics_hooks_sample
from tests.compat.nemo import HERE
from tests.verifier.test_verifier_aggregate import _same


def _rows() -> list[dict[str, Any]]:
    rows = []
    for task in range(4):
        for repeat in range(3):
            reward = 1.0 if (task + repeat) % 4 == 0 else 0.0  # task 1 never solved
            rows.append({"_ng_task_index": task, "_ng_rollout_index": repeat, "reward": reward,
                         "score": task * 10 + repeat, "ok": reward == 1.0})
    rows.append({"_ng_task_index": 4, "_ng_rollout_index": 0, "reward": 0.0, "mask_sample": True})
    return rows


def test_the_hooks_give_nemo_gyms_answer(nemo_venv: Path, tmp_path: Path) -> None:
    rows = _rows()
    spec = {"rows": rows, "hooks": str(HERE / "metrics_hooks_sample.py")}
    done = subprocess.run([str(nemo_venv / "bin" / "python"), str(HERE / "nemo_aggregate.py")],
                          input=json.dumps(spec), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    theirs = json.loads(done.stdout.splitlines()[-1])
    hooks = MetricsHooks(compute_metrics=metrics_hooks_sample.compute_metrics,
                         get_key_metrics=metrics_hooks_sample.get_key_metrics,
                         compute_repeat_metrics=metrics_hooks_sample.compute_repeat_metrics)
    ours = aggregate_metrics(rows, hooks)
    _same(ours, theirs)
    assert theirs["key_metrics"]["pass@k"] == 0.75 and theirs["group_level_metrics"][0]["solved"] is True
    assert [e["pass@1"] for e in theirs["repeat_level_metrics"]] == [0.25, 0.25, 0.25]
    assert "mean_across_repeats/pass@1" in theirs["agent_metrics"]
    assert all(e["mean/score"] > 1000 for e in theirs["repeat_level_metrics"])
