"""Peak collector RSS against input size (issue #5: 10K and 1M input rows within 20% of each other).

Not a CI test: it runs ``ng_collect_rollouts`` as a subprocess against the in-process fake gateway (instant
answers), samples the collector's resident set size every 20 ms with psutil, and prints one JSON line per size
plus the ratio. Usage: ``python -m bench.collector_rss [ROWS ...]`` (default 10000 1000000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.stack import replace_section
from tests.collector.fake_gateway import FakeGateway

ROOT = Path(__file__).resolve().parents[1]


def _write_tasks(path: Path, rows: int) -> None:
    with open(path, "w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"responses_create_params": {"input": f"say: {i}"}, "expected_answer": str(i)})
                     + "\n")


def measure(rows: int, parallel: int = 64) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, FakeGateway() as gw:
        inp, out = Path(tmp) / "tasks.jsonl", Path(tmp) / "out.jsonl"
        _write_tasks(inp, rows)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollgate.collector", "collect", "+agent_name=my_agent", f"+input_jsonl_fpath={inp}",
             f"+output_jsonl_fpath={out}", f"+gateway={gw.address}", f"+num_samples_in_parallel={parallel}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        wall = time.monotonic() - started
        assert proc.returncode == 0, f"collector exited {proc.returncode}"
        with open(out, "rb") as fh:
            written = sum(1 for _ in fh)
        assert written == rows, (written, rows)
    return {"rows": rows, "peak_rss_mib": round(peak / 2**20, 1), "wall_s": round(wall, 1),
            "rollouts_per_s": round(rows / wall, 1)}


def _write(results: list[dict[str, float]], ratio: float | None, command: str) -> None:
    rows = "\n".join(f"| {r['rows']:,.0f} | {r['peak_rss_mib']} MiB | {r['wall_s']} s | {r['rollouts_per_s']:,.0f} |"
                     for r in results)
    body = (
        "## Collector memory against input size (issue 5)\n\n"
        f"`{command}` — `ng_collect_rollouts` as a subprocess against the in-process fake gateway (instant answers),\n"
        f"peak RSS sampled every 20 ms ({time.strftime('%Y-%m-%d')}):\n\n"
        "| input rows | peak RSS | wall | rollouts/s |\n|---|---|---|---|\n" + rows + "\n"
    )
    if ratio is not None:
        body += (f"\nPeak RSS ratio largest / smallest = {ratio:.3f} (target: within 20%). Input is read lazily; the\n"
                 "reorder window (with its byte cap) and the in-flight limit bound what is held.")
    replace_section(ROOT / "bench" / "RESULTS.md", "collector_rss", body)


def main(argv: list[str]) -> int:
    write = "--write" in argv
    sizes = [int(a) for a in argv if a != "--write"] or [10_000, 1_000_000]
    results = [measure(n) for n in sizes]
    for r in results:
        print(json.dumps(r), flush=True)
    ratio = None
    if len(results) >= 2:
        ratio = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
        print(json.dumps({"peak_rss_ratio_largest_to_smallest": round(ratio, 3), "within_20_percent": ratio <= 1.2}))
    if write:
        _write(results, ratio, "python -m bench.collector_rss " + " ".join(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
