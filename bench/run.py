"""``make bench``: rollgate's throughput, latency, CPU and memory on this machine, as a user runs it.

Scenarios (issue 8): overhead (instant model, parallelism 20/200/1000), latency hiding (100 ms model,
parallelism 200/1000), tool loop (3 tool calls per rollout), soak (gateway and verifier RSS drift).
Prints one line per scenario and, with ``--write``, regenerates ``bench/RESULTS.md`` (and a PNG chart of
throughput against parallelism when matplotlib is installed).

    python bench/run.py --quick            # a minute: smaller counts
    python bench/run.py --write            # the full set, results into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import collect, replace_section, running_stack, write_tasks  # noqa: E402

HERE = Path(__file__).resolve().parent


def _scenarios(quick: bool) -> list[dict[str, Any]]:
    n = 2_000 if quick else 20_000
    return [
        {"name": "overhead", "latency_ms": 0, "parallel": 20, "n": n},
        {"name": "overhead", "latency_ms": 0, "parallel": 200, "n": n},
        {"name": "overhead", "latency_ms": 0, "parallel": 1000, "n": n},
        {"name": "latency", "latency_ms": 100, "parallel": 200, "n": n},
        {"name": "latency", "latency_ms": 100, "parallel": 1000, "n": n},
        {"name": "longtail", "latency_ms": 100, "parallel": 200, "n": n, "dist": "lognormal"},
        {"name": "longtail", "latency_ms": 100, "parallel": 1000, "n": n, "dist": "lognormal"},
        {"name": "tools", "latency_ms": 0, "parallel": 200, "n": n // 4, "tools": 3},
        {"name": "soak", "latency_ms": 0, "parallel": 200, "n": 20_000 if quick else 200_000},
    ]


def _run(scenario: dict[str, Any], repeats: int) -> dict[str, Any]:
    tools = int(scenario.get("tools", 0))
    verifier = "bench.tools_verifier:BenchTools" if tools else "exact_match"
    kind = "tool_calling" if tools else "single_turn"
    runs = []
    model_args = ["--latency-dist", scenario["dist"]] if "dist" in scenario else []
    with running_stack(latency_ms=scenario["latency_ms"], verifier=verifier, kind=kind,
                       model_args=model_args) as stack:
        tasks = stack.workdir / "tasks.jsonl"
        write_tasks(tasks, scenario["n"], tools=tools)
        rss_before = {}
        for i in range(repeats):
            if scenario["name"] == "soak" and i == 0:
                # Warm-up pass sets the baseline the soak's drift is measured against.
                collect(stack, _head(tasks, stack.workdir, scenario["n"] // 10), scenario["parallel"],
                        stack.workdir / "warm.jsonl")
                for w in (stack.gateway_proc, stack.verifier):
                    rss_before[w.name] = w.proc.memory_info().rss
            runs.append(collect(stack, tasks, scenario["parallel"], stack.workdir / f"out{i}.jsonl"))
        result = _median(runs)
        if rss_before:
            result["rss_drift_pct"] = {
                w.name: 100 * (w.proc.memory_info().rss - rss_before[w.name]) / rss_before[w.name]
                for w in (stack.gateway_proc, stack.verifier)
            }
    return {**scenario, **result, "repeats": repeats}


def _head(tasks: Path, workdir: Path, n: int) -> Path:
    out = workdir / "head.jsonl"
    with tasks.open() as src, out.open("w") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            dst.write(line)
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every number across runs (dicts of numbers element-wise)."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in value}
        elif isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in runs)
        else:
            out[key] = value
    return out


def _line(r: dict[str, Any]) -> str:
    cpu = r["cpu_s_per_1k"]
    rss = r["peak_rss_mb"]
    extra = ""
    if "rss_drift_pct" in r:
        extra = " drift " + " ".join(f"{k}={v:+.1f}%" for k, v in r["rss_drift_pct"].items())
    return (f"{r['name']:<9} lat={r['latency_ms']:>4}ms par={r['parallel']:>5} n={r['rollouts']:>7.0f} "
            f"{r['rollouts_per_s']:8.1f}/s p50={r['p50_ms']:7.1f}ms p99={r['p99_ms']:7.1f}ms "
            f"cpu={r['cpu_ms_per_rollout_total']:.2f}ms/rollout "
            f"[" + " ".join(f"{k}={v:.2f}" for k, v in cpu.items()) + "] s/1k "
            "rss " + " ".join(f"{k}={v:.0f}" for k, v in rss.items()) + "MB" + extra)


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["name"], r["latency_ms"], r["parallel"], r.get("dist", "fixed"))


def _merged(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With --only, keep the other scenarios' last results from results.json."""
    path = HERE / "results.json"
    old = json.loads(path.read_text()) if path.exists() else []
    fresh = {_key(r): r for r in results}
    kept = [fresh.pop(_key(r), r) for r in old]
    return kept + list(fresh.values())


def _hiding(r: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Latency hiding: achieved rate / min(parallelism / mean model latency, overhead rate at that parallelism)."""
    if r["latency_ms"] <= 0:
        return ""
    mean_s = r["latency_ms"] / 1000 * (math.exp(0.5) if r.get("dist") == "lognormal" else 1.0)
    overhead = [o["rollouts_per_s"] for o in results if o["name"] == "overhead" and o["parallel"] == r["parallel"]]
    ideal = min([r["parallel"] / mean_s, *overhead])
    return f"{100 * r['rollouts_per_s'] / ideal:.0f}% of {ideal:.0f}/s"


def _write(results: list[dict[str, Any]], command: str) -> None:
    lines = [
        "## Pipeline: throughput, latency, CPU, memory",
        "",
        f"Produced by `{command}`"
        + (" (other rows: the last run of each scenario, kept in bench/results.json)" if "--only" in command else "")
        + f" on {time.strftime('%Y-%m-%d')} ({platform.machine()}, "
        f"{platform.python_version()}, 2 cores shared by all processes). Medians over the repeats shown.",
        "All four processes (fake model, verifier, gateway, collector) run on this one box.",
        "",
        "| scenario | model latency | parallelism | rollouts | rollouts/s | latency hiding | start-up s | p50 ms | "
        "p99 ms | "
        "CPU ms/rollout (all) | CPU s/1k: collector / gateway / verifier / model | "
        "peak RSS MB: collector / gateway / verifier |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, m = r["cpu_s_per_1k"], r["peak_rss_mb"]
        lines.append(
            f"| {r['name']} | {r['latency_ms']} ms {r.get('dist', 'fixed')} | {r['parallel']} | {r['rollouts']:.0f} | "
            f"{r['rollouts_per_s']:.0f} | {_hiding(r, results)} | {r.get('startup_s', float('nan')):.2f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_ms_per_rollout_total']:.2f} | "
            f"{c['collector']:.2f} / {c['gateway']:.2f} / {c['verifier']:.2f} / {c['model']:.2f} | "
            f"{m['collector']:.0f} / {m['gateway']:.0f} / {m['verifier']:.0f} |"
        )
    drift = [r for r in results if "rss_drift_pct" in r]
    for r in drift:
        lines.append("")
        lines.append(f"Soak ({r['rollouts']:.0f} rollouts after a warm-up): RSS drift "
                     + ", ".join(f"{k} {v:+.1f}%" for k, v in r["rss_drift_pct"].items()) + ".")
    replace_section(HERE / "RESULTS.md", "pipeline", "\n".join(lines))
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def _chart(results: list[dict[str, Any]]) -> None:
    """bench/throughput.png: rollouts/s against parallelism, one line per scenario (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'rollgate[bench]'): no chart", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r["name"] in ("overhead", "latency", "longtail"):
            label = f"{r['name']} ({r['latency_ms']} ms {r.get('dist', 'fixed')})"
            series.setdefault(label, []).append((r["parallel"], r["rollouts_per_s"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p for p, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("num_samples_in_parallel")
    ax.set_ylabel("rollouts / s")
    ax.set_title("rollgate end to end on one 2-core box (fake model, exact_match)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "throughput.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario; the median is reported")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md and results.json")
    args = parser.parse_args()
    wanted = {s for s in args.only.split(",") if s}
    results = []
    for scenario in _scenarios(args.quick):
        if wanted and scenario["name"] not in wanted:
            continue
        repeats = 1 if scenario["name"] == "soak" else args.repeats
        result = _run(scenario, repeats)
        print(_line(result), flush=True)
        results.append(result)
    if args.write:
        everything = _merged(results) if wanted else results
        _write(everything, "python bench/run.py " + " ".join(sys.argv[1:]))
        _chart(everything)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
