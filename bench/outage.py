"""A model server that answers 503 to everything, with the gateway's default retry config (issue 14, item 3).

One fresh stack as processes (fake model with ``--fault 503:1.0``, ``exact_match`` verifier, gateway with the
default ``retries``: a 120 s budget per call for outages and overload, Envoy-style retry budget 20% / floor 10),
and ``ng_collect_rollouts`` with ``--n`` rollouts at parallelism ``--parallel``. The gateway's
``rollgate_gateway_retries_in_flight`` gauge is read every 100 ms; each 503 comes after ``--latency-ms``.

Printed: the collector's exit status and wall time; per failed rollout the model time (when it gave up),
attempts, and its error message (distinct ones); the most retries in flight seen; the retry and budget counters.

    python bench/outage.py                 # about 2 minutes 10 s
    python bench/outage.py --n 200 --parallel 50
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stack import BIN, GaugeSampler, _env, running_stack, write_tasks  # noqa: E402


def _counter(text: str, name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=100.0, help="how long each 503 takes to come")
    parser.add_argument("--budget-s", type=float, default=None, help="retries.budget_s (default: the gateway's)")
    args = parser.parse_args()
    agent = {"retries": {"budget_s": args.budget_s}} if args.budget_s is not None else {}
    with running_stack(latency_ms=args.latency_ms, model_args=["--fault", "503:1.0"], agent=agent) as stack:
        assert stack.metrics_url is not None
        tasks, out = stack.workdir / "tasks.jsonl", stack.workdir / "out.jsonl"
        write_tasks(tasks, args.n)
        cmd = [str(BIN / "ng_collect_rollouts"), "+agent_name=bench", f"+input_jsonl_fpath={tasks}",
               f"+output_jsonl_fpath={out}", f"+num_samples_in_parallel={args.parallel}",
               f"+gateway={stack.gateway}"]
        t0 = time.monotonic()
        with GaugeSampler(stack.metrics_url, "rollgate_gateway_retries_in_flight", every_s=0.1,
                          label='target="model"') as in_flight:
            done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
        with urllib.request.urlopen(stack.metrics_url, timeout=5) as resp:
            metrics = resp.read().decode()
        failed = [json.loads(line) for line in Path(f"{out}.failures").read_text().splitlines()]
    model_s = [r["_rollout"]["timings"]["model_s"] for r in failed]
    attempts = [r["error"]["attempts"] for r in failed]
    # The messages differ only in the seconds they name.
    messages = Counter(re.sub(r"in \d+(\.\d+)? s", "in T s", r["error"]["message"]) for r in failed)
    print(f"collector: exit {done.returncode}, {wall:.0f} s wall, {len(failed)} of {args.n} rollouts failed")
    print(f"  last line of its stderr: {done.stderr.strip().splitlines()[-1]}")
    print(f"model time per failed rollout: median {statistics.median(model_s):.1f} s, "
          f"min {min(model_s):.1f} s, max {max(model_s):.1f} s")
    print(f"attempts per failed rollout: median {statistics.median(attempts):.0f}, "
          f"min {min(attempts)}, max {max(attempts)}")
    for message, count in messages.most_common():
        print(f"  {count} x error: {message}")
    peak = max((v for _, v in in_flight.samples), default=0.0)
    print(f"retries in flight (sampled every 100 ms): max {peak:.0f}")
    for name, labels in [("rollgate_gateway_retries_total", {"target": "model"}),
                         ("rollgate_gateway_retry_budget_exhausted_total", {"target": "model"}),
                         ("rollgate_gateway_rollout_failures_total", {"stage": "model"})]:
        print(f"{name}{labels}: {_counter(metrics, name, **labels):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
