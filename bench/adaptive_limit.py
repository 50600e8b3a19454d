"""Adaptive concurrency (issue 14): does the per-replica limit settle near what the model server admits, and
does it ignore 429s that do not come from load?

Each run starts a fresh stack as processes (fake model, ``exact_match`` verifier, gateway with
``max_concurrency`` 256 and 429s retried without a budget) and runs ``ng_collect_rollouts`` at parallelism 200,
sampling the gateway's ``rollgate_gateway_backend_concurrency_limit`` gauge every 100 ms. Scenarios:

- ``fault_free``: the fake answers every call after ``--latency-ms``;
- ``admit_k``: it answers at most K calls at a time and 429s the rest at once (``--max-concurrent K``);
- ``random_429``: it answers 429 to 30% of calls at random, whatever the load (``--fault 429:0.3``).

Printed per scenario: medians over ``--repeats`` runs of rollouts/s (once the collector runs: its start-up is
left out), the settled limit (median of the samples in the second half of the run) and its range there; then the
ratios the issue asks for.

    python bench/adaptive_limit.py                  # 3 runs of each scenario, about 3 minutes
    python bench/adaptive_limit.py --repeats 1 --n 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stack import GaugeSampler, collect, running_stack, write_tasks  # noqa: E402
from rollgate.gateway._config import RetryConfig  # noqa: E402

PARALLEL = 200
CEILING = 256
GAUGE = "rollgate_gateway_backend_concurrency_limit"


def _retries() -> dict[str, Any]:
    """Every 429 retried, quickly: the limit, not the retry policy, is measured (keys the config knows)."""
    wanted = {"attempts": 100, "budget_s": 300, "initial_wait_s": 0.01, "max_wait_s": 0.2, "jitter_s": 0.01,
              "retry_after_cap_s": 1, "retry_budget_percent": 100, "min_retry_concurrency": 10_000}
    return {k: v for k, v in wanted.items() if k in RetryConfig.model_fields}


def run_once(tasks: Path, latency_ms: float, model_args: list[str]) -> dict[str, Any]:
    """One fresh stack, one collection: rollouts/s and the limit over the run."""
    agent = {"model": {"max_concurrency": CEILING}, "retries": _retries()}
    with running_stack(latency_ms=latency_ms, model_args=model_args, agent=agent) as stack:
        assert stack.metrics_url is not None
        with GaugeSampler(stack.metrics_url, GAUGE) as sampler:
            result = collect(stack, tasks, PARALLEL, stack.workdir / "out.jsonl")
    half = result["startup_s"] + (result["wall_s"] - result["startup_s"]) / 2
    settled = [v for t, v in sampler.samples if t >= half] or [float("nan")]
    # Throughput once the collector runs (its start-up, a second or so, is left out: the runs are short).
    rate = result["rollouts"] / (result["wall_s"] - result["startup_s"])
    return {"rollouts_per_s": rate, "limit": statistics.median(settled),
            "limit_min": min(settled), "limit_max": max(settled), "wall_s": result["wall_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=6000, help="rollouts per run (admit_k: half as many)")
    parser.add_argument("--k", type=int, default=32, help="calls the admit_k fake answers at a time")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()
    scenarios = {
        "fault_free": ([], args.n),
        "admit_k": (["--max-concurrent", str(args.k)], args.n // 2),
        "random_429": (["--fault", "429:0.3"], args.n),
    }
    wanted = {s for s in args.only.split(",") if s} or set(scenarios)
    medians: dict[str, dict[str, float]] = {}
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rollgate-adaptive-") as tmp:
        work = Path(tmp)
        for name, (model_args, n) in scenarios.items():
            if name not in wanted:
                continue
            tasks = work / f"tasks{n}.jsonl"
            if not tasks.exists():
                write_tasks(tasks, n)
            runs = [run_once(tasks, args.latency_ms, model_args) for _ in range(args.repeats)]
            for r in runs:
                print(f"  {name}: {r['rollouts_per_s']:.0f} rollouts/s, limit {r['limit']:.0f} "
                      f"(second half {r['limit_min']:.0f}-{r['limit_max']:.0f}), {r['wall_s']:.1f} s", flush=True)
            medians[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            m = medians[name]
            print(f"{name}: median {m['rollouts_per_s']:.0f} rollouts/s, settled limit {m['limit']:.0f} "
                  f"(range {m['limit_min']:.0f}-{m['limit_max']:.0f})", flush=True)
    if "admit_k" in medians:
        m, ideal = medians["admit_k"], args.k / (args.latency_ms / 1000)
        print(f"admit_k: limit / K = {m['limit'] / args.k:.2f} (done: 0.7-1.3); rollouts/s / (K / latency = "
              f"{ideal:.0f}/s) = {m['rollouts_per_s'] / ideal:.2f} (done: >= 0.8)")
    if "random_429" in medians and "fault_free" in medians:
        ratio = medians["random_429"]["rollouts_per_s"] / medians["fault_free"]["rollouts_per_s"]
        print(f"random_429: rollouts/s / fault-free rollouts/s = {ratio:.2f} (done: >= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
