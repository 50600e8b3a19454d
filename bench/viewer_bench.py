"""Benchmark: how long ``ng_viewer`` takes to open a large rollouts file, and how much memory it holds.

    .venv/bin/python bench/viewer_bench.py [--rows 200000] [--file /tmp/viewer_bench.jsonl]

Writes (or reuses) a file of realistic rows (tool calls, reasoning, failures sidecar, a malformed line), starts
the real ``ng_viewer`` as a subprocess, and measures from launch until the page, ``/api/summary`` and the first
page of ``/api/rows`` (sorted by reward, filtered) have answered; then the server's RSS, and the time of a text
search and a sort over all rows. Prints one JSON object on stdout. Targets (issue #6): open < 5 s, RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.viewer.rows import failure, reward_for, rollout  # noqa: E402


def write_file(path: Path, rows: int) -> None:
    import random

    rng = random.Random(0)
    repeats = 4
    with open(path, "w", encoding="utf-8") as fh:
        for n in range(rows):
            t, r = divmod(n, repeats)
            fh.write(json.dumps(rollout(t, r, reward_for(t, r, rng), tool=t % 3 == 0, reasoning=t % 2 == 0,
                                        string_input=t % 5 == 4)) + "\n")
            if n == rows // 2:
                fh.write('{"torn": \n')
    with open(f"{path}.failures", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(failure(rows // repeats, 0)) + "\n")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:
        body: bytes = resp.read()
        return body


def measure(path: Path) -> dict[str, object]:
    """One launch of the real ng_viewer on ``path``; the server is stopped with Ctrl-C (SIGINT) at the end."""
    viewer = ROOT / ".venv" / "bin" / "ng_viewer"
    exe = [str(viewer)] if viewer.exists() else [sys.executable, "-m", "rollgate.collector", "view"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen([*exe, f"+input_jsonl_fpath={path}", "+port=0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        t_ready = time.perf_counter() - t0
        get(url + "/")
        summary = json.loads(get(url + "/api/summary"))
        get(url + "/api/rows?sort=reward&desc=1&filter=reward%20%3C%200.3&limit=50")
        t_open = time.perf_counter() - t0
        rss_open = psutil.Process(proc.pid).memory_info().rss
        cpu = psutil.Process(proc.pid).cpu_times()
        # CPU seconds the viewer spent to get there: unlike wall time, not inflated by other load on the machine.
        cpu_open = cpu.user + cpu.system
        t = time.perf_counter()
        found = json.loads(get(url + "/api/rows?search=Lisbon&limit=50"))["total"]
        t_search = time.perf_counter() - t
        t = time.perf_counter()
        get(url + "/api/tasks?sort=spread&desc=1")
        t_tasks = time.perf_counter() - t
        rss_after = psutil.Process(proc.pid).memory_info().rss
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
    return {
        "rows": summary["rows"], "malformed": summary["malformed"], "failed": summary["failed"],
        "ready_s": round(t_ready, 2), "open_s": round(t_open, 2), "open_cpu_s": round(cpu_open, 2),
        "rss_open_mb": round(rss_open / 1e6, 1),
        "search_s": round(t_search, 2), "search_hits": found, "task_table_s": round(t_tasks, 2),
        "rss_after_mb": round(rss_after / 1e6, 1), "exit_status": proc.returncode, "load_avg_1m": round(load, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--file", type=Path, default=Path("/tmp/viewer_bench.jsonl"))
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--repeat", type=int, default=3,
                    help="launches to measure (the machine is shared: report the median)")
    args = ap.parse_args()
    if args.regenerate or not args.file.exists():
        t = time.perf_counter()
        write_file(args.file, args.rows)
        print(f"wrote {args.file} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    runs = [measure(args.file) for _ in range(args.repeat)]
    opens = sorted(float(str(r["open_s"])) for r in runs)
    print(json.dumps({
        "file_mb": round(args.file.stat().st_size / 1e6, 1), "cpus": os.cpu_count(),
        "open_s_median": opens[len(opens) // 2], "open_s_max": opens[-1],
        "open_cpu_s_median": sorted(float(str(r["open_cpu_s"])) for r in runs)[len(runs) // 2],
        "rss_after_mb_max": max(float(str(r["rss_after_mb"])) for r in runs), "runs": runs,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
