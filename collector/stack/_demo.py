"""``rollgate demo``: the whole path on the embedded model, as a user would run it.

Starts the local stack (``rollgate up --config examples/stack.yaml``: the embedded SmolLM2 model, the built-in
``exact_match`` verifier and a gateway), runs the workflows' "Quick Debug" and "SFT Dataset Generation" commands
against the example tasks, and says where the rollouts are. Everything runs as subprocesses through the same
entry points a user types, so the demo checks the real commands, not a shortcut.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from rollgate._cli import parse_cli, run_cli
from rollgate.collector._children import wait_ready

_READY_TIMEOUT_S = 300.0


class DemoConfig(BaseModel):
    """Where the demo reads its stack and tasks, and where it writes."""

    config: str = Field("examples/stack.yaml", description="stack file for `rollgate up`")
    input_jsonl_fpath: str = Field("examples/demo_tasks.jsonl", description="tasks to run")
    out_dir: str = Field("demo_out", description="folder for the rollouts the demo writes")


def _collect(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run one collection; its progress shows on stderr, its metrics JSON (stdout) is returned for the end."""
    cmd = [sys.executable, "-m", "rollgate.collector", "collect", *args]
    print("\n$ ng_collect_rollouts " + " \\\n    ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, check=False, stdout=subprocess.PIPE, text=True)
    return done.returncode, done.stdout


def _demo(cfg: DemoConfig) -> int:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    debug_out = out / "debug_rollouts.jsonl"
    sft_out = out / "sft_rollouts.jsonl"
    stack = subprocess.Popen(
        [sys.executable, "-m", "rollgate.collector", "up", "--config", cfg.config, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = wait_ready(stack, _READY_TIMEOUT_S)
        env = dict(os.environ, ROLLGATE_GATEWAY=str(ready["address"]))
        status, _ = _collect(
            [
                "+agent_name=my_agent",
                f"+input_jsonl_fpath={cfg.input_jsonl_fpath}",
                f"+output_jsonl_fpath={debug_out}",
                "+limit=5",
                "+num_samples_in_parallel=1",
            ],
            env,
        )
        sft_status, metrics = _collect(
            [
                "+agent_name=my_agent",
                f"+input_jsonl_fpath={cfg.input_jsonl_fpath}",
                f"+output_jsonl_fpath={sft_out}",
                "+responses_create_params.temperature=0.2",
                "+responses_create_params.top_p=0.95",
                "+num_samples_in_parallel=20",
                "+limit=null",
            ],
            env,
        )
        status |= sft_status
    finally:
        # The stack first, so its shutdown logs come before the results rather than after them.
        print("\nrollgate demo: stopping the stack", file=sys.stderr, flush=True)
        stack.terminate()
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait()
        if stack.stdout is not None:
            stack.stdout.close()
    print(
        f"\nrollgate demo: rollouts in {debug_out} (quick debug) and {sft_out} (SFT);"
        f" manifests beside them. Look at one with: head -1 {sft_out} | jq .",
        file=sys.stderr,
        flush=True,
    )
    if metrics.strip():
        print(f"rollgate demo: the SFT collection's metrics ({cfg.input_jsonl_fpath}, exact_match):",
              file=sys.stderr, flush=True)
        print(metrics.strip(), flush=True)
    return status


def demo_main(argv: list[str] | None = None) -> int:
    """Entry point of ``rollgate demo``."""
    return run_cli(lambda: _demo(parse_cli(sys.argv[1:] if argv is None else argv, DemoConfig)))
