"""Built-in verifiers on real positive and negative examples (served and called the way the gateway calls them)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rollgate.verifier._judge import LLMJudge
from rollgate.verifier.errors import InvalidTask, JudgeFailed
from rollgate.verifier.hosting import VerifierCore, load_target, main

from .verifier_helpers import answer_response


async def _score(target: str, text: str, **task: Any) -> dict[str, Any]:
    core = VerifierCore(load_target(target))
    body = {"responses_create_params": {"input": "q"}, "response": answer_response(text), **task}
    return await core.verify(body)


@pytest.mark.parametrize(
    ("text", "expected", "reward"),
    [
        ("The answer is \\boxed{1/2}.", "0.5", 1.0),
        ("\\boxed{\\frac{1}{2}}", "1/2", 1.0),
        ("<think>maybe \\boxed{1/3}</think>So it is \\boxed{0.5}", "1/2", 1.0),  # reasoning set aside
        ("\\boxed{1/3}", "0.5", 0.0),
        ("\\boxed{1+x}", "x+1", 1.0),
        ("I am not sure.", "42", 0.0),
        ("42", 42, 1.0),
    ],
)
async def test_math(text: str, expected: Any, reward: float) -> None:
    assert (await _score("math", text, expected_answer=expected))["reward"] == reward


@pytest.mark.parametrize(
    ("target", "text", "task", "reward"),
    [
        ("contains", "I believe it is Paris, France.", {"expected_answer": "paris"}, 1.0),
        ("contains", "It is Lyon.", {"expected_answer": ["Paris", "Marseille"]}, 0.0),
        ("regex", "Order id: AB-1234 confirmed", {"pattern": r"\b[A-Z]{2}-\d{4}\b"}, 1.0),
        ("regex", "Order id: ab-12 confirmed", {"pattern": r"\b[A-Z]{2}-\d{4}\b"}, 0.0),
        ("regex", "DONE", {"pattern": "^done$", "ignore_case": True}, 1.0),
        ("multiple_choice", "Let me think. A is wrong because... The answer is C.", {"expected_answer": "C"}, 1.0),
        ("multiple_choice", "**B**", {"expected_answer": "B"}, 1.0),
        ("multiple_choice", "(d)", {"expected_answer": "D"}, 1.0),
        ("multiple_choice", "Answer: A", {"expected_answer": "B"}, 0.0),
        ("multiple_choice", "the answer is a bit unclear", {"expected_answer": "A"}, 0.0),
        ("multiple_choice", "Final answer: B", {"expected_answer": "Mars", "options": ["Venus", "Mars", "Moon"]}, 1.0),
        ("exact_match", " Paris\n", {"expected_answer": "paris"}, 1.0),
    ],
)
async def test_text_builtins(target: str, text: str, task: dict[str, Any], reward: float) -> None:
    assert (await _score(target, text, **task))["reward"] == reward


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"]}


async def test_json_schema() -> None:
    good = await _score("json_schema", '```json\n{"name": "Ada", "age": 36}\n```', schema=SCHEMA)
    assert (good["reward"], good["schema_valid"]) == (1.0, True)
    bad = await _score("json_schema", '{"name": "Ada", "age": -1}', schema=json.dumps(SCHEMA))
    assert (bad["reward"], bad["json_valid"], bad["schema_valid"]) == (0.0, True, False)
    assert bad["schema_error"].startswith("age:")
    broken = await _score("json_schema", "{name: Ada}", schema=SCHEMA)
    assert (broken["reward"], broken["json_valid"]) == (0.0, False)


async def test_missing_task_fields_are_invalid_task() -> None:
    cases = [("math", {}), ("regex", {}), ("json_schema", {}), ("multiple_choice", {"expected_answer": "Z"})]
    for target, task in cases:
        with pytest.raises(InvalidTask):
            await _score(target, "x", **task)


@pytest.fixture
async def judge_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real OpenAI-compatible judge on loopback: 503 once, then grades 9 when the reference is in the answer."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if len(seen) == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        prompt = body["messages"][-1]["content"]
        reference = prompt.split("Reference answer:\n", 1)[1].split("\n", 1)[0]
        graded = prompt.split("Answer to grade:\n", 1)[1].split("\n", 1)[0]
        score = 9 if reference in graded else 2
        return web.json_response({"choices": [{"message": {"role": "assistant",
                                                           "content": f"Reasoning...\nSCORE: {score}"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_llm_judge_retries_and_scales_the_score(judge_server: tuple[str, list[dict[str, Any]]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = judge_server
    monkeypatch.setenv("ROLLGATE_JUDGE_BASE_URL", url)
    monkeypatch.setenv("ROLLGATE_JUDGE_MODEL", "judge-1")
    good = await _score("llm_judge", "<think>hmm</think>It is Paris.", expected_answer="Paris")
    assert good["reward"] == pytest.approx(0.9) and good["judge_score"] == pytest.approx(9)
    assert len(seen) == 2  # the 503 was retried
    assert seen[-1]["model"] == "judge-1" and "hmm" not in seen[-1]["messages"][-1]["content"]
    bad = await _score("llm_judge", "It is Lyon.", expected_answer="Paris")
    assert bad["reward"] == pytest.approx(0.2)


async def test_llm_judge_without_a_score_or_reachable_model_fails_loudly() -> None:
    judge = LLMJudge(base_url="http://127.0.0.1:9/v1", model="m", attempts=2, initial_wait_s=0.01)
    with pytest.raises(JudgeFailed, match="after 2 attempts"):
        await judge({"responses_create_params": {"input": "q"}}, answer_response("x"))
    with pytest.raises(JudgeFailed, match="no 'SCORE: N'"):
        judge.parse_score("I think it is fine.")


def test_llm_judge_needs_its_model(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("ROLLGATE_JUDGE_BASE_URL", raising=False)
    assert main(["serve", "llm_judge", "--port", "0"]) == 2
    assert "ROLLGATE_JUDGE_BASE_URL" in capsys.readouterr().err


HAVE_RG = importlib.util.find_spec("reasoning_gym") is not None
needs_rg = pytest.mark.skipif(not HAVE_RG, reason="reasoning-gym is not installed (optional extra rollgate[reasoning])")


@needs_rg
async def test_reasoning_gym_tasks_and_scorer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rg.jsonl"
    assert main(["tasks", "reasoning_gym", "+dataset=basic_arithmetic", "+size=5", "+seed=3",
                 f"+output_jsonl_fpath={out}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and json.loads(capsys.readouterr().out)["tasks"] == 5
    for row in rows:
        assert row["responses_create_params"]["input"][-1]["content"] == row["question"]
        right = await _score("reasoning_gym", f"<think>working</think>{row['expected_answer']}", **row)
        wrong = await _score("reasoning_gym", "banana", **row)
        assert (right["reward"], wrong["reward"]) == (1.0, 0.0)


@pytest.mark.skipif(HAVE_RG, reason="checks the message shown when reasoning-gym is absent")
def test_reasoning_gym_absent_says_how_to_install(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["tasks", "reasoning_gym", "+dataset=x", f"+output_jsonl_fpath={tmp_path / 'o'}"]) == 2
    assert "rollgate[reasoning]" in capsys.readouterr().err


def test_builtins_are_listed_in_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    for name in ("exact_match", "contains", "regex", "multiple_choice", "math", "json_schema", "llm_judge",
                 "reasoning_gym"):
        assert name in usage
