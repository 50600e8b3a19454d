"""Turn rollout groups streamed from a gateway into one GRPO batch (JSONL), with rollgate's Python API.

Each task of TASKS (a tasks JSONL file, as `ng_collect_rollouts` reads) is run GROUP_SIZE times; groups whose
rewards are all equal carry no GRPO signal and are dropped (and replaced by further tasks) until GROUPS groups are
kept. Each kept rollout becomes one record: its prompt, the model's final text, its reward and its group-normalised
advantage ((reward - group mean) / (group std + 1e-6), GRPO's), with the ids that tie it back to the rollouts.

    rollgate up --config examples/stack.yaml &
    python examples/grpo_batch.py --gateway 127.0.0.1:50051 --agent my_rl_agent \\
        --tasks examples/demo_tasks.jsonl --group-size 4 --groups 8 --out batch.jsonl

Failed groups are reported on stderr, never turned into rewards of 0. The tasks are cycled, so a small file still
fills a large batch (each pass gives different rollouts when the temperature is above 0).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollgate.collector.train import Group, GroupFailure, GroupStream


def read_tasks(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def final_text(row: dict[str, Any]) -> str:
    """The text of the rollout's last assistant message (what the reward judged)."""
    for item in reversed(row.get("output") or []):
        if item.get("type") == "message" and item.get("role") == "assistant":
            parts = item.get("content") or []
            return "".join(p.get("text", "") for p in parts if isinstance(p, dict))
    return ""


def records(group: Group) -> Iterator[dict[str, Any]]:
    """One training record per rollout of the group, with its GRPO advantage."""
    rewards = group.rewards
    mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
    for row, reward in zip(group.rows, rewards, strict=True):
        yield {
            "rollout_id": row["_rollout"]["id"],
            "task_index": group.task_index,
            "prompt": row["responses_create_params"]["input"],
            "completion": final_text(row),
            "reward": reward,
            "advantage": (reward - mean) / (std + 1e-6),
        }


def report(failure: GroupFailure) -> None:
    kinds = ", ".join(f"{e['stage']}/{e['kind']}" for e in failure.errors)
    print(f"task {failure.task_index}: group failed ({kinds}); left out", file=sys.stderr)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="127.0.0.1:50051")
    parser.add_argument("--agent", default="my_rl_agent")
    parser.add_argument("--tasks", type=Path, required=True)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--groups", type=int, default=16, help="groups with a reward signal to keep")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tasks = itertools.cycle(read_tasks(args.tasks))
    written = 0
    with args.out.open("w", encoding="utf-8") as out:
        async with GroupStream(args.gateway, args.agent, tasks, group_size=args.group_size, want=args.groups,
                               drop_uniform=True, overrides={"temperature": args.temperature},
                               on_failure=report) as stream:
            async for group in stream:
                for record in records(group):
                    out.write(json.dumps(record) + "\n")
                    written += 1
    stats = stream.stats
    print(f"{written} records from {stats.kept} groups ({stats.dropped_uniform} dropped as all-equal, "
          f"{stats.failed} failed) -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
