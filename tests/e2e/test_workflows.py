"""Done-when of the foundation: every documented command and post-processing snippet runs unchanged.

A real ``rollgate up`` (verifier + gateway subprocesses) serves every agent the workflows name in front of the
fake model; the blocks of ``../shared/workflows/*.md`` run with bash and python in a scratch folder, with only
``/tmp/`` paths moved into it; ``ng_viewer`` lines (which serve until Ctrl-C) run on their own and must serve
the file they name.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector._children import wait_ready
from tests.conftest import require_tool
from tests.e2e.stack import env_with, running_stack, stop
from tests.e2e.workflow_blocks import WORKFLOWS, Block, runnable

CATEGORIES = ["MATH", "GEO", "CODE"]
_PRETTY_TO_FILE = re.compile(r"jq ('select\([^']*\)' \S+ > \S+)")
INPUT_NAMES = re.compile(r"input_jsonl_fpath=(\S+)|BENCHMARK=\"([^\"]+)\"")


def _task_rows(n: int) -> list[dict[str, Any]]:
    """Tasks on which the fake model is right about half the time: it picks one of two answers."""
    rows = []
    for i in range(n):
        answer, wrong = f"A{i}", f"W{i}"
        content = f"Category: {CATEGORIES[i % 3]}. Question {i}.\nchoose: {answer}|{wrong}"
        rows.append({
            "responses_create_params": {"input": [{"role": "user", "content": content}]},
            "expected_answer": answer,
            "category": CATEGORIES[i % 3],
        })
    return rows


def _write_inputs(workdir: Path, code: str) -> None:
    for match in INPUT_NAMES.finditer(code):
        name = match.group(1) or match.group(2)
        if "$" in name:
            continue
        path = workdir / name
        if not path.exists():
            path.write_text("".join(json.dumps(r) + "\n" for r in _task_rows(12)))


def _adapt(code: str, workdir: Path) -> str:
    # ng_viewer serves until Ctrl-C, so it cannot run inline in a script: _check_viewer runs those lines.
    kept = [line for line in code.splitlines() if not line.lstrip().startswith("ng_viewer")]
    return "\n".join(kept).replace("/tmp/", f"{workdir}/") + "\n"


def _check_viewer(code: str, workdir: Path) -> None:
    """Each documented ``ng_viewer`` line, as written, serves a page over the file it names."""
    for line in code.splitlines():
        if not line.lstrip().startswith("ng_viewer"):
            continue
        line = line.strip().replace("/tmp/", f"{workdir}/")
        viewed = Path(re.search(r"input_jsonl_fpath=(\S+)", line).group(1))  # type: ignore[union-attr]
        proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=workdir, env=env_with(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = str(wait_ready(proc, 60)["url"]).rstrip("/")
            with urllib.request.urlopen(f"{url}/api/summary", timeout=30) as answer:
                summary = json.loads(answer.read())
            assert proc.poll() is None, f"{line}: exited early"
            rows = _rows(workdir / viewed)
            assert summary["rollouts"] == len(rows) and summary["malformed"] == 0, (line, summary)
            assert abs(summary["means"]["reward"] - _means(workdir / viewed)) < 1e-9, (line, summary)
        finally:
            stop(proc)


def _run(block: Block, workdir: Path, gateway: str) -> subprocess.CompletedProcess[str]:
    env = env_with(ROLLGATE_GATEWAY=gateway)
    code = _adapt(block.code, workdir)
    cmd = ["bash", "-c", code] if block.lang == "bash" else [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with running_stack() as ready:
        yield str(ready["address"])


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_grouped(path: Path, k: int) -> None:
    rows = _rows(path)
    assert rows and len(rows) % k == 0, f"{path.name}: {len(rows)} rows, not whole groups of {k}"
    for start in range(0, len(rows), k):
        group = rows[start:start + k]
        assert len({json.dumps(r["responses_create_params"]["input"]) for r in group}) == 1
        assert [r["_rollout"]["repeat_index"] for r in group] == list(range(k))
        assert len({r["_rollout"]["task_index"] for r in group}) == 1


@pytest.mark.parametrize("doc", ["development.md", "training-prep.md"])
def test_workflow_runs_unchanged(doc: str, gateway: str, tmp_path: Path) -> None:
    require_tool("jq")
    require_tool("shuf")
    path = WORKFLOWS / doc
    assert path.exists(), f"{path} missing: shared/ must sit beside the checkout"
    # The RL loop calls the user's own trainer; a stand-in that accepts its arguments.
    (tmp_path / "train_rl.py").write_text("import sys\nprint('trained on', sys.argv[2])\n")
    (tmp_path / "outputs").mkdir()
    transcript = []
    for block in runnable(path):
        _write_inputs(tmp_path, block.code)
        done = _run(block, tmp_path, gateway)
        _check_viewer(block.code, tmp_path)
        transcript.append(f"--- {block.section} [{block.lang}]\n{done.stdout}\n{done.stderr}")
        if _PRETTY_TO_FILE.search(block.code):
            # The doc's `jq 'select(…)' IN > OUT` writes pretty-printed JSON (no -c), so the line-based steps
            # after it (`wc -l`, `shuf`, `head -1 | jq`) see fragments: that breaks with any collector's output.
            # Run it as written (the selection itself must be right), then as meant, with -c, for the next steps.
            _assert_selection(block.code, tmp_path)
            done = _run(Block(block.file, block.section, block.lang, _PRETTY_TO_FILE.sub(r"jq -c \1", block.code)),
                        tmp_path, gateway)
            transcript.append(f"--- (as meant, jq -c)\n{done.stdout}\n{done.stderr}")
        assert done.returncode == 0, "\n".join(transcript)
        if "ng_collect_rollouts" in block.code:
            assert "Found 12 rows!" in done.stderr + done.stdout, transcript[-1]
            assert "Querying with" in done.stderr + done.stdout, transcript[-1]
            assert "Collecting rollouts" in done.stderr, transcript[-1]
            assert "Traceback" not in done.stderr, transcript[-1]
    log = "\n".join(transcript)
    (tmp_path / "transcript.txt").write_text(log)
    if doc == "development.md":
        _check_development(tmp_path, log)
    else:
        _check_training_prep(tmp_path, log)


def _assert_selection(code: str, work: Path) -> None:
    """What the documented filter selected (read as a JSON stream) is exactly the rows it names."""
    for match in _PRETTY_TO_FILE.finditer(code):
        expr, source, target = re.match(r"'select\(([^']*)\)' (\S+) > (\S+)", match.group(1)).groups()  # type: ignore[union-attr]
        selected = subprocess.run(["jq", "-c", ".", target], cwd=work, capture_output=True, text=True, check=True)
        expected = subprocess.run(["jq", "-c", f"select({expr})", source], cwd=work, capture_output=True, text=True,
                                  check=True)
        assert selected.stdout == expected.stdout and selected.stdout.count("\n") <= len(_rows(work / source))


def _means(path: Path) -> float:
    rewards = [float(r["reward"]) for r in _rows(path)]
    return sum(rewards) / len(rewards)


def _check_development(work: Path, log: str) -> None:
    assert len(_rows(work / "debug_rollouts.jsonl")) == 5
    for temp in ("0.1", "0.3", "0.5", "0.7", "0.9"):
        out = work / f"sweep_temp_{temp}.jsonl"
        printed = re.findall(rf"^temp={temp}: (\S+)$", log, flags=re.M)
        assert printed and abs(float(printed[-1]) - _means(out)) < 1e-9, f"jq's mean for temp={temp}"
        assert all(r["responses_create_params"]["temperature"] == float(temp) for r in _rows(out))
    exploration = work / "exploration_rollouts.jsonl"
    _assert_grouped(exploration, 5)
    assert len(_rows(exploration)) == 12 * 5
    assert "Repeating rows (in a pattern of abc to aabbcc) from 12 to 60!" in log
    assert len(re.findall(r"^Task \d+: μ=", log, flags=re.M)) == 12
    low = [r for r in _rows(exploration) if r["reward"] < 0.3]
    assert f"Failure rate: {len(low)} / 60" in log
    assert len(_rows(work / "verify_test.jsonl")) == 12


def _check_training_prep(work: Path, log: str) -> None:
    sft = _rows(work / "sft_rollouts.jsonl")
    assert len(sft) == 12
    assert all(r["responses_create_params"]["top_p"] == 0.95 for r in sft)
    kept = [r for r in sft if r["reward"] >= 0.8]
    assert f"Filtered: {len(kept)} / 12" in log
    assert len(_rows(work / "sft_train_ready.jsonl")) == len(kept)
    dpo = work / "dpo_rollouts.jsonl"
    _assert_grouped(dpo, 3)
    assert "Created 12 prompt groups (3 rollouts each)" in log
    pairs = _rows(work / "dpo_pairs.jsonl")
    rows = _rows(dpo)
    tops = [sorted((r["reward"] for r in rows[s:s + 3]), reverse=True) for s in range(0, 36, 3)]
    mixed = sum(1 for top in tops if top[0] - top[1] >= 0.15)
    assert len(pairs) == mixed, "a pair for exactly the groups whose best reward stands out"
    assert all(p["prompt"] == rows[0]["responses_create_params"]["input"] or p["prompt"] in
               [r["responses_create_params"]["input"] for r in rows] for p in pairs)
    assert f"Created {mixed} preference pairs from 12 groups" in log
    iterations = sorted((work / "outputs").glob("rl_iter_*.jsonl"))
    assert [p.name for p in iterations] == [f"rl_iter_{i:03d}.jsonl" for i in range(1, 11)]
    assert list((work / "outputs").glob("rl_iter_001.jsonl.*.bak")), "re-run kept the first file aside"
    for model in ("model_v1", "model_v2", "model_v3"):
        results = _rows(work / f"eval_{model}_results.jsonl")
        assert {r["_rollout"]["agent"] for r in results} == {model}
        assert all(r["responses_create_params"]["seed"] == 42 for r in results)
        assert re.search(rf"{model}: reward=[0-9.]+, accuracy=[0-9.]+", log)
    # Pattern 3.4 ran model_v1 twice (its first command, then the comparison loop): with seed 42 the answers
    # are the same, so the evaluation is reproducible.
    earlier = sorted(work.glob("eval_model_v1_results.jsonl.*.bak/eval_model_v1_results.jsonl"))
    assert earlier, "re-run kept the first evaluation aside"
    texts = [[r["output"][-1]["content"][0]["text"] for r in _rows(p)]
             for p in (earlier[0], work / "eval_model_v1_results.jsonl")]
    assert texts[0] == texts[1]
