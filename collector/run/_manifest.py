"""``<output>.manifest.json``: what a run was asked to do and what it did, written beside the output.

It holds the config, the input's path and sha256, counts, failures by stage, timings and throughput, the means,
the verifier versions seen, and the gateway, model and verifier endpoints. No secrets: the collector config holds
none (the token comes from the environment), and user:password parts of URLs are removed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rollgate.collector.run._config import CollectConfig
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb

__all__ = ["RunRecord", "endpoints_of", "write_manifest"]


def _public_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def endpoints_of(gateway: str, agent: pb.AgentInfo) -> dict[str, Any]:
    """Where the rollouts went, as the gateway reports the agent's route (no credentials)."""
    return {
        "gateway": [part.strip() for part in gateway.split(",") if part.strip()],
        "model": agent.model or None,
        "model_base_urls": [_public_url(u) for u in agent.model_base_urls],
        "verifier_url": _public_url(agent.verifier_url) if agent.verifier_url else None,
    }


def _iso(ts: dt.datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@dataclass
class RunRecord:
    config: CollectConfig
    input_sha256: str
    input_rows: int
    tasks: int
    rollouts: int
    started_at: dt.datetime
    succeeded: int = 0
    failed: int = 0
    failures_by_stage: Counter[str] = field(default_factory=Counter)
    verifier_versions: set[str] = field(default_factory=set)
    # version -> [sum of rewards, rollouts]: a run scored by several verifier versions reports each one's mean.
    version_rewards: dict[str, list[float]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    finished_at: dt.datetime | None = None
    wall_s: float = 0.0
    interrupted: bool = False
    endpoints: dict[str, Any] = field(default_factory=dict)
    reused: int = 0  # rows a resume kept from the previous output (counted in succeeded)
    written: int = 0  # rollouts accounted for in the output or the sidecar (complete groups)
    reconnects: int = 0
    duplicates_dropped: int = 0
    # An interrupted or failed run: its completion journal (kept for the resume), and the finished rollouts that
    # are only there (held behind an unfinished one).
    journal: str | None = None
    unwritten: int = 0

    def scored(self, version: object, reward: object) -> None:
        """Count one succeeded rollout's verifier version and reward (a missing or odd value is left out)."""
        if not isinstance(version, str):
            return
        self.verifier_versions.add(version)
        if isinstance(reward, (int, float)) and not isinstance(reward, bool) and reward == reward:
            totals = self.version_rewards.setdefault(version, [0.0, 0])
            totals[0] += float(reward)
            totals[1] += 1

    def reward_by_version(self) -> dict[str, dict[str, float]]:
        """Per verifier version: its rollouts and their mean reward."""
        return {v: {"rollouts": int(n), "mean_reward": total / n}
                for v, (total, n) in sorted(self.version_rewards.items()) if n}

    def to_json(self) -> dict[str, Any]:
        throughput = (self.succeeded + self.failed) / self.wall_s if self.wall_s > 0 else None
        output = self.config.output_jsonl_fpath
        return {
            "config": self.config.model_dump(mode="json"),
            "input": {"path": self.config.input_jsonl_fpath, "sha256": self.input_sha256, "rows": self.input_rows},
            "output": {"path": output, "failures_path": f"{output}.failures"},
            "gateway": {"address": self.config.gateway},
            "endpoints": self.endpoints,
            "counts": {
                "tasks": self.tasks,
                "rollouts": self.rollouts,
                "succeeded": self.succeeded,
                "failed": self.failed,
            },
            "resumed_rows": self.reused,
            "written": self.written,
            "reconnects": self.reconnects,
            "duplicates_dropped": self.duplicates_dropped,
            "failures_by_stage": dict(sorted(self.failures_by_stage.items())),
            "means": self.means,
            "verifier_versions": sorted(self.verifier_versions),
            "reward_by_verifier_version": self.reward_by_version(),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "wall_s": round(self.wall_s, 3),
            "throughput_rollouts_per_s": round(throughput, 3) if throughput is not None else None,
            "interrupted": self.interrupted,
            "journal": self.journal,
            "finished_not_written": self.unwritten,
        }


def write_manifest(path: Path, record: RunRecord) -> None:
    # temp file + rename: a reader never sees half a manifest.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
