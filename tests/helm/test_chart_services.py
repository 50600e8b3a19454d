"""The chart's command lines against the real services: what the pods run is what the services accept and serve.

The rendered gateway and verifier commands are started on loopback (only host, ports and mount paths swapped
for local ones), and the rendered probes are sent to them; the rendered collector and merge arguments are
parsed by the collector's own configs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rollgate._cli import parse_cli
from rollgate.collector import CollectConfig
from rollgate.collector._children import stop_process, wait_ready
from rollgate.collector.postprocess._merge import MergeConfig
from rollgate.collector.run._config import COLLECT_ALIASES
from tests.helm.chart import Manifest, name, one

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _local(command: list[str], **swap: str) -> list[str]:
    """The container command with the console script from this venv and some flag values swapped."""
    out = [str(BIN / command[0]), *command[1:]]
    for flag, value in swap.items():
        i = out.index(flag)
        out[i + 1] = value
    return out


@contextmanager
def _running(command: list[str], env: dict[str, str], cwd: Path) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
    try:
        yield wait_ready(proc, 60)
    finally:
        stop_process(proc)


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(response.status)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGATE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *extra.pop("PYTHONPATH", "").split(os.pathsep)])
    env.update(extra)
    return env


@pytest.mark.parametrize("token", ["", "a-token"], ids=["no-token", "token"])
def test_gateway_serves_the_rendered_probes(rendered: dict[str, list[Manifest]], tmp_path: Path, token: str) -> None:
    docs = rendered["cpu"]
    agents_dir = tmp_path / "agents"  # the ConfigMap, mounted as a directory
    agents_dir.mkdir()
    for file, text in one(docs, "ConfigMap", name("agents"))["data"].items():
        (agents_dir / file).write_text(text, encoding="utf-8")
    c = one(docs, "Deployment", name("gateway"))["spec"]["template"]["spec"]["containers"][0]
    command = _local(c["command"], **{"--config": str(agents_dir), "--host": "127.0.0.1", "--port": "0",
                                      "--metrics-port": "0"})
    env = _env(ROLLGATE_TOKEN=token) if token else _env()
    with _running(command, env, tmp_path) as ready:
        base = ready["metrics_url"].removesuffix("/metrics")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] == "metrics"
            assert _status(base + c[probe]["httpGet"]["path"]) == 200, probe
        assert _status(ready["metrics_url"]) == 200


def test_verifier_from_a_configmap_serves_the_rendered_probes(rendered: dict[str, list[Manifest]],
                                                              tmp_path: Path) -> None:
    docs = rendered["cpu"]
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    for file, text in one(docs, "ConfigMap", name("verifier-mine-code"))["data"].items():
        (code_dir / file).write_text(text, encoding="utf-8")
    c = one(docs, "Deployment", name("verifier-mine"))["spec"]["template"]["spec"]["containers"][0]
    env_values = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert env_values["PYTHONPATH"] == "/code"
    command = _local(c["command"], **{"--host": "127.0.0.1", "--port": "0"})
    with _running(command, _env(PYTHONPATH=str(code_dir)), tmp_path) as ready:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] == "http"
            assert _status(ready["url"] + c[probe]["httpGet"]["path"]) == 200, probe


def test_collector_job_arguments_parse_as_the_collector_reads_them(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, job_name in (("sharded-collector", "collect-rl-iter-0"), ("tls-token", "collect-secure1")):
        command = one(rendered[scenario], "Job", name(job_name))["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[0] == "ng_collect_rollouts"
        # The kubelet expands $(JOB_COMPLETION_INDEX) to the pod's index.
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", "1") for a in command[1:]]
        cfg = parse_cli(argv, CollectConfig, aliases=COLLECT_ALIASES)
        assert cfg.shard_index == 1
        assert cfg.resume is True
    job = one(rendered["sharded-collector"], "Job", name("collect-rl-iter-0"))
    sharded = parse_cli(
        [a.replace("$(JOB_COMPLETION_INDEX)", "7")
         for a in job["spec"]["template"]["spec"]["containers"][0]["command"][1:]],
        CollectConfig, aliases=COLLECT_ALIASES,
    )
    assert (sharded.num_shards, sharded.num_repeats, sharded.limit) == (8, 4, None)
    assert sharded.responses_create_params == {"temperature": 1, "max_output_tokens": 1000000}


def test_merge_arguments_parse_as_rollgate_merge_reads_them(rendered: dict[str, list[Manifest]]) -> None:
    merge = one(rendered["sharded-collector"], "Job", name("merge-rl-iter-0"))["spec"]["template"]["spec"]
    command = merge["containers"][0]["command"]
    assert command[:2] == ["rollgate", "merge"]
    cfg = parse_cli(command[2:], MergeConfig)
    assert cfg.inputs == [f"/data/output/rl-iter-0/shard-{i}.jsonl" for i in range(8)]
    assert cfg.output_jsonl_fpath == "/data/output/rl-iter-0/rollouts.jsonl"
