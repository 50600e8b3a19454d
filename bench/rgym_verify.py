"""Verify time of the ``reasoning_gym`` built-in (issue 15): the scorer is built once per dataset and cached.

    .venv/bin/python bench/rgym_verify.py [--rows 50] [--old-calls 3] [DATASET ...]

Rows are written by ``rollgate verifier tasks reasoning_gym`` in a child process (so nothing of the dataset is
warm in this one), then the built-in ``reasoning_gym_verify`` is called in-process on every row with the right
answer, a wrong one and an empty one. ``first`` is the first call for a dataset (it builds and caches the
scorer); the median and p99 are over all the calls after it. ``old`` is the previous bridge, which called
``reasoning_gym.get_score_answer_fn`` (a whole default-config dataset) on every verify: the median of a few calls.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_DATASETS = ["group_anagrams", "word_ladder", "spell_backward", "figlet_font", "arc_agi", "codeio",
                    "basic_arithmetic", "prime_factorization"]
TARGET_MEDIAN_S = 0.005


def _response(text: str) -> dict[str, Any]:
    return {"output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": text}]}]}


def _write_rows(datasets: list[str], rows: int, folder: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name in datasets:
        path = folder / f"{name}.jsonl"
        subprocess.run([sys.executable, "-m", "rollgate.verifier", "tasks", "reasoning_gym", f"+dataset={name}",
                        f"+size={rows}", "+seed=1", f"+output_jsonl_fpath={path}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out[name] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", default=DEFAULT_DATASETS)
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--old-calls", type=int, default=3, help="calls of the old per-verify bridge (0: skip)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tasks = _write_rows(args.datasets, args.rows, Path(tmp))

    start = time.perf_counter()
    rg: Any = importlib.import_module("reasoning_gym")
    from rollgate.verifier._rgym import reasoning_gym_verify
    import_s = time.perf_counter() - start

    header = ("dataset", "calls", "first ms", "median µs", "p99 µs", "old ms/call", "speed-up", "ok")
    table: list[tuple[str, ...]] = []
    results: list[dict[str, Any]] = []
    for name in args.datasets:
        calls = [(row, _response(answer)) for row in tasks[name]
                 for answer in (str(row["expected_answer"]), "banana", "")]
        row0, resp0 = calls[0]
        start = time.perf_counter()
        reasoning_gym_verify(row0, resp0)
        first = time.perf_counter() - start
        times = []
        for row, resp in calls[1:]:
            start = time.perf_counter()
            reasoning_gym_verify(row, resp)
            times.append(time.perf_counter() - start)
        median, p99 = statistics.median(times), _pct(times, 0.99)
        old = []
        for row, _ in calls[: args.old_calls]:
            entry = {"question": row["question"], "answer": row["expected_answer"], "metadata": row["metadata"]}
            start = time.perf_counter()
            rg.get_score_answer_fn(name)(str(row["expected_answer"]), entry)
            old.append(time.perf_counter() - start)
        old_median = statistics.median(old) if old else float("nan")
        ok = median < TARGET_MEDIAN_S
        results.append({"dataset": name, "calls": len(calls), "first_s": first, "median_s": median, "p99_s": p99,
                        "old_median_s": old_median, "ok": ok})
        table.append((name, str(len(calls)), f"{first * 1e3:.1f}", f"{median * 1e6:.1f}", f"{p99 * 1e6:.1f}",
                      f"{old_median * 1e3:.3g}" if old else "-",
                      f"{old_median / median:,.0f}x" if old else "-", "yes" if ok else "NO"))

    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    print(f"import reasoning_gym + bridge: {import_s * 1e3:.0f} ms; target: median < {TARGET_MEDIAN_S * 1e3:g} ms")
    for r in [header, *table]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print(json.dumps({"import_s": import_s, "results": results}))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
