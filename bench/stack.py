"""Benchmark plumbing: start the fake model, a verifier and a gateway as real processes, measure them.

Each process is watched with psutil: CPU seconds (user + system) over a measured window and peak RSS, sampled
every 50 ms. The collector runs as a user would run it: the ``ng_collect_rollouts`` console script.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rollgate.collector._children import stop_process, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _ready(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> dict[str, Any]:
    return wait_ready(proc, timeout_s)


@dataclass
class Watched:
    """A process and what it cost between ``mark()`` and ``sample()``."""

    name: str
    proc: psutil.Process
    cpu0: float = 0.0
    peak_rss: int = 0
    rss_samples: list[int] = field(default_factory=list)

    def cpu(self) -> float:
        try:
            times = self.proc.cpu_times()
            return float(times.user + times.system + times.children_user + times.children_system)
        except psutil.NoSuchProcess:
            return self.cpu0

    def mark(self) -> None:
        self.cpu0 = self.cpu()
        self.peak_rss = 0
        self.rss_samples = []

    def poll_rss(self) -> None:
        try:
            rss = int(self.proc.memory_info().rss)
        except psutil.NoSuchProcess:
            return
        self.peak_rss = max(self.peak_rss, rss)
        self.rss_samples.append(rss)


class Sampler:
    """Polls RSS of the watched processes in a thread until stopped."""

    def __init__(self, watched: list[Watched]) -> None:
        self.watched = watched
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for w in self.watched:
                w.poll_rss()
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class GaugeSampler:
    """Reads one gauge from the gateway's /metrics every ``every_s`` in a thread: (seconds, value of its first
    series with ``label``)."""

    def __init__(self, url: str, gauge: str, every_s: float = 0.1, *, label: str = "") -> None:
        # ``label``: a series' label text to pick (``target="model"``), when the gauge has several series.
        self.url, self.gauge, self.every_s, self.label = url, gauge, every_s, label
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    text = resp.read().decode()
                prefix = self.gauge + "{"
                values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith(prefix) and self.label in line]
                if values:
                    self.samples.append((time.monotonic() - t0, values[0]))
            except OSError:
                pass
            self._stop.wait(self.every_s)

    def __enter__(self) -> GaugeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Stack:
    gateway: str
    model: Watched
    verifier: Watched
    gateway_proc: Watched
    workdir: Path
    metrics_url: str | None = None


@contextmanager
def running_stack(*, latency_ms: float = 0.0, model_args: list[str] | None = None,
                  verifier: str = "exact_match", kind: str = "single_turn",
                  agent: dict[str, Any] | None = None, model_cmd: list[str] | None = None) -> Iterator[Stack]:
    """Fake model, verifier and gateway (metrics on a free port) as processes; ``agent`` adds to the agent's
    config (``model`` merged key by key); ``model_cmd`` starts another fake model (its arguments after
    ``python``), e.g. ``["-m", "tests.fakes.vllm_server", "--port", "0"]``."""
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="rollgate-bench-") as tmp:
        work = Path(tmp)
        try:
            def start(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
                proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
                procs.append(proc)
                return proc, _ready(proc)

            model, m_ready = start(*(model_cmd or ["-m", "tests.fakes.model_server", "--port", "0", "--latency-ms",
                                                   str(latency_ms), *(model_args or [])]))
            verif, v_ready = start("-m", "rollgate.verifier", "serve", verifier, "--port", "0")
            extra = dict(agent or {})
            config = {"agents": {"bench": {
                "kind": kind,
                # The fake has no batch limit; the default ceiling of 256 calls per replica (vLLM's max_num_seqs)
                # would cap the parallelism-1000 scenarios at 256 model calls in flight.
                "model": {"base_urls": [m_ready["url"]], "name": "fake", "api": "chat_completions",
                          "max_concurrency": 4096, **extra.pop("model", {})},
                "verifier_url": v_ready["url"],
                "max_steps": 8,
                **extra,
            }}}
            (work / "gateway.yaml").write_text(yaml.safe_dump(config))
            gw, g_ready = start("-m", "rollgate.gateway", "serve", "--config", str(work / "gateway.yaml"),
                                "--port", "0", "--metrics-port", "0")
            yield Stack(
                gateway=str(g_ready["address"]),
                model=Watched("model", psutil.Process(model.pid)),
                verifier=Watched("verifier", psutil.Process(verif.pid)),
                gateway_proc=Watched("gateway", psutil.Process(gw.pid)),
                workdir=work,
                metrics_url=str(g_ready["metrics_url"]),
            )
        finally:
            for proc in reversed(procs):
                stop_process(proc)


def write_tasks(path: Path, n: int, *, tools: int = 0) -> None:
    """``n`` echo tasks the fake model answers right (reward 1.0), optionally with ``tools`` tool calls."""
    with path.open("w") as f:
        for i in range(n):
            lines = [f"Question {i}", f"say: A{i}"]
            lines += [f'tool: whoami {{"i": {k}}}' for k in range(tools)]
            row: dict[str, Any] = {"responses_create_params": {"input": "\n".join(lines)}, "expected_answer": f"A{i}"}
            if tools:  # the gateway calls only the tools a request declares
                row["responses_create_params"]["tools"] = [{"type": "function", "name": "whoami", "parameters": {}}]
            f.write(json.dumps(row) + "\n")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def collect(stack: Stack, tasks: Path, parallel: int, out: Path) -> dict[str, Any]:
    """Run ``ng_collect_rollouts`` against the stack; return throughput, latency and per-process costs."""
    for w in (stack.model, stack.verifier, stack.gateway_proc):
        w.mark()
    cmd = [str(BIN / "ng_collect_rollouts"), "+agent_name=bench", f"+input_jsonl_fpath={tasks}",
           f"+output_jsonl_fpath={out}", f"+num_samples_in_parallel={parallel}", f"+gateway={stack.gateway}"]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    collector = Watched("collector", psutil.Process(proc.pid))
    watched = [collector, stack.model, stack.verifier, stack.gateway_proc]
    with Sampler(watched):
        proc.wait()  # not a polling loop: its granularity would add up to 50 ms to every wall time
    wall = time.perf_counter() - t0
    # The collector is the only child reaped in this window, so the children's rusage delta is exactly its CPU.
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    collector_cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    latencies = [r["_rollout"]["timings"]["total_s"] for r in rows]
    n = len(rows)
    # A benchmark of a broken pipeline is worthless: every rollout must have been verified (reward 1.0).
    rewarded = sum(1 for r in rows if r.get("reward") == 1.0)
    if proc.returncode != 0 or rewarded != n:
        raise RuntimeError(f"collector exit {proc.returncode}; {rewarded}/{n} rows with reward 1.0 ({out})")
    cpu = {w.name: (collector_cpu if w is collector else w.cpu() - w.cpu0) for w in watched}
    # The manifest's wall time starts when the first rollout may be sent: the rest is the collector's start-up
    # (interpreter, imports, the input check, asking the gateway for its agents).
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    return {
        "startup_s": wall - float(manifest["wall_s"]),
        "rollouts": n,
        "exit": proc.returncode,
        "wall_s": wall,
        "rollouts_per_s": n / wall if wall else float("nan"),
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "cpu_s_per_1k": {k: 1000 * v / max(n, 1) for k, v in cpu.items()},
        "cpu_ms_per_rollout_total": 1000 * sum(cpu.values()) / max(n, 1),
        "peak_rss_mb": {w.name: w.peak_rss / 2**20 for w in watched},
    }


def replace_section(path: Path, name: str, body: str) -> None:
    """Rewrite one marked section of RESULTS.md, keeping the sections other benchmarks own."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
