"""Where one rollout's time goes in the latency scenario, and how long each service waited for a core.

    python bench/breakdown.py                      # 100 ms model, parallelism 200 and 20, 20,000 rollouts each
    python bench/breakdown.py --parallel 200 --n 5000

Per run it prints the cycle time (parallelism / rollouts per second, the collector's start-up left out), how much
of it the gateway saw (its ``total_s``, split into the model call and ``/verify`` from the rows' timings), what
remains outside the gateway (the Collect stream both ways and the collector's own work), the collector's start-up,
and, from ``/proc/PID/task/*/schedstat``, each service's CPU time and its time spent runnable but waiting for a
core, per rollout. At low parallelism the same path shows the pipeline's floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import collect, running_stack, write_tasks  # noqa: E402


def _schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting) summed over the process's threads."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        run += int(on_cpu)
        wait += int(waiting)
    return run, wait


def _run(latency_ms: float, parallel: int, n: int) -> None:
    with running_stack(latency_ms=latency_ms) as stack:
        tasks = stack.workdir / "tasks.jsonl"
        write_tasks(tasks, n)
        collect(stack, tasks, parallel, stack.workdir / "warm.jsonl")
        services = {"gateway": stack.gateway_proc, "model": stack.model, "verifier": stack.verifier}
        before = {name: _schedstat(w.proc.pid) for name, w in services.items()}
        out = stack.workdir / "out.jsonl"
        result = collect(stack, tasks, parallel, out)
        after = {name: _schedstat(w.proc.pid) for name, w in services.items()}
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    timings = [r["_rollout"]["timings"] for r in rows]

    def mean_ms(key: str) -> float:
        return 1000 * statistics.mean(float(t[key]) for t in timings)

    inner_s = result["wall_s"] - result["startup_s"]
    cycle = 1000 * parallel * inner_s / len(rows)
    total, model, verify = mean_ms("total_s"), mean_ms("model_s"), mean_ms("verify_s")
    print(f"model {latency_ms:g} ms, parallelism {parallel}, {len(rows)} rollouts: {result['rollouts_per_s']:.0f}/s "
          f"({len(rows) / inner_s:.0f}/s after start-up)")
    print(f"  cycle per slot {cycle:6.1f} ms = model call {model:6.1f} + verify {verify:5.1f} "
          f"+ other in gateway {total - model - verify:4.1f} + outside the gateway {cycle - total:5.1f}")
    print(f"  collector start-up {result['startup_s']:.2f} s ({100 * result['startup_s'] / result['wall_s']:.1f}% "
          "of the wall time)")
    for name in services:
        run_ns = after[name][0] - before[name][0]
        wait_ns = after[name][1] - before[name][1]
        print(f"  {name:<8} on a CPU {run_ns / len(rows) / 1e6:.3f} ms/rollout, "
              f"waiting for one {wait_ns / len(rows) / 1e6:.3f} ms/rollout")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--parallel", type=int, nargs="+", default=[200, 20])
    parser.add_argument("--n", type=int, default=20_000, help="rollouts per run (a tenth of it at parallelism < 100)")
    args = parser.parse_args()
    for parallel in args.parallel:
        _run(args.latency_ms, parallel, args.n if parallel >= 100 else max(args.n // 10, parallel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
