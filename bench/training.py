"""Training mode on the wire (issue 16): 512 generated tokens per model call with their ids and log-probs.

One stack as processes: the fake vLLM server (SmolLM2's real tokenizer, ``python -m tests.fakes.vllm_server``),
the ``exact_match`` verifier, and a gateway whose agent answers each task with a 511-token text plus the
end-of-turn token: 512 generated tokens per call. The same collection runs with ``training: true`` (every call
asks for ``logprobs`` and ``return_token_ids``; the rows carry ``prompt_token_ids``, ``generation_token_ids``,
``generation_log_probs``) and without, alternately on fresh stacks, and the medians are compared: rollouts/s,
CPU per rollout by process, and the output's bytes per rollout.

    python bench/training.py                 # 3 runs of each, 2,000 rollouts at parallelism 64
    python bench/training.py --write         # and the section in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stack import collect, replace_section, running_stack  # noqa: E402
from tests.fakes.gguf_tokenizer import load_smollm2_tokenizer  # noqa: E402
from tests.fakes.vllm_server import SERVED_MODEL  # noqa: E402

HERE = Path(__file__).resolve().parent
GENERATED = 512


def answer_text(i: int) -> str:
    """A text of exactly GENERATED - 1 tokens (the fake adds the end-of-turn token), distinct per task."""
    tok = load_smollm2_tokenizer()
    words = [f"w{i}"] + [f"alpha{k % 97}" for k in range(GENERATED)]
    text = " ".join(words)
    ids = tok.encode(text, add_special_tokens=False)[: GENERATED - 1]
    cut = tok.decode(ids)
    assert len(tok.encode(cut, add_special_tokens=False)) == GENERATED - 1, "the cut must re-tokenize the same"
    return cut


def write_tasks(path: Path, n: int) -> None:
    texts = [answer_text(i) for i in range(min(n, 50))]  # 50 distinct answers, reused: tokenizing is slow
    with path.open("w") as f:
        for i in range(n):
            text = texts[i % len(texts)]
            row = {"responses_create_params": {"input": f"Task {i}\nsay: {text}", "max_output_tokens": 1024},
                   "expected_answer": text}
            f.write(json.dumps(row) + "\n")


def run_once(training: bool, n: int, parallel: int) -> dict[str, Any]:
    agent = {"training": training, "model": {"name": SERVED_MODEL}}
    with running_stack(model_cmd=["-m", "tests.fakes.vllm_server", "--port", "0"], agent=agent) as stack:
        tasks = stack.workdir / "tasks.jsonl"
        write_tasks(tasks, n)
        out = stack.workdir / "out.jsonl"
        result = collect(stack, tasks, parallel, out)
        result["bytes_per_rollout"] = out.stat().st_size / max(result["rollouts"], 1)
        if training:
            first = json.loads(out.read_text().splitlines()[0])
            carriers = [i for i in first["output"] if "generation_token_ids" in i]
            assert len(carriers) == 1 and len(carriers[0]["generation_token_ids"]) == GENERATED, carriers
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for training in (True, False):
            r = run_once(training, args.n, args.parallel)
            runs[training].append(r)
            print(f"  training={training}: {r['rollouts_per_s']:.0f} rollouts/s, cpu "
                  f"{r['cpu_ms_per_rollout_total']:.2f} ms/rollout {r['cpu_s_per_1k']}, "
                  f"{r['bytes_per_rollout']:.0f} B/rollout", flush=True)

    def med(training: bool, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[training])

    def med_cpu(training: bool, proc: str) -> float:
        return statistics.median(float(r["cpu_s_per_1k"][proc]) for r in runs[training])

    lines = ["| | rollouts/s | CPU ms per rollout (all) | collector | gateway | model | verifier "
             "| output bytes per rollout |", "|---|---|---|---|---|---|---|---|"]
    for training in (False, True):
        lines.append(f"| training {'on' if training else 'off'} | {med(training, 'rollouts_per_s'):,.0f} | "
                     f"{med(training, 'cpu_ms_per_rollout_total'):.2f} | "
                     + " | ".join(f"{med_cpu(training, p):.3f}" for p in ("collector", "gateway", "model", "verifier"))
                     + f" | {med(training, 'bytes_per_rollout'):,.0f} |")
    ratio = med(True, "rollouts_per_s") / med(False, "rollouts_per_s")
    summary = "\n".join(lines) + f"\n\nTraining on / off, rollouts/s: {ratio:.2f}"
    print(summary)
    if args.write:
        body = (f"## Training mode: {GENERATED} generated tokens per call with ids and log-probs (issue 16)\n\n"
                f"`python bench/training.py {' '.join(sys.argv[1:])}`: {args.n} single-call rollouts at parallelism "
                f"{args.parallel}, fresh stacks alternating training on/off, medians of {args.repeats} runs each; "
                f"CPU columns are ms per rollout per process (the fake vLLM server tokenizes with SmolLM2's real "
                f"tokenizer, so its column is the fake's cost, not vLLM's).\n\n{summary}")
        replace_section(HERE / "RESULTS.md", "training", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
