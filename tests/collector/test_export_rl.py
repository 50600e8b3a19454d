"""``rollgate export … +format=rl`` on training-mode rows whose token fields come from a REAL tokenizer.

The rows are built the way a training-mode gateway builds them against vLLM, with SmolLM2-135M-Instruct's tokenizer
and chat template (``tests.fakes.gguf_tokenizer``): call 1's prompt is the rendered chat, tokenized; the model
generates its text's tokens plus the end-of-turn ``<|im_end|>``; call k's prompt is call k-1's prompt ids, then its
generated ids, then only the NEW text the template renders after them (``\\n``, the tool turn, the next assistant
header), tokenized. Log-probs are the fake vLLM server's deterministic ones. A "re-tokenized" row instead renders
and tokenizes the whole history again after a non-canonical generation (one token per byte, a valid tokenization
a sampled model can produce): the same text, other ids, so it is not token-exact.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from rollgate.collector import rollgate_main
from tests.collector.conftest import read_jsonl
from tests.conftest import skip_or_fail
from tests.fakes.gguf_tokenizer import GgufTokenizer, format_tool_calls, load_smollm2_tokenizer
from tests.fakes.vllm_server import token_logprob

TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}]


@pytest.fixture(scope="module")
def tok() -> GgufTokenizer:
    try:
        return load_smollm2_tokenizer()
    except FileNotFoundError as exc:
        skip_or_fail(str(exc))


def _row(tok: GgufTokenizer, task: int, repeat: int, reward: float | None, answer: str, *,
         retokenize: bool = False, versions: list[str] | None = None) -> dict[str, Any]:
    """A three-call tool rollout (add, add, answer) with NeMo Gym token fields on one item per model call."""
    question = f"What is {task} + 2 + 3?"
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    steps: list[tuple[str, Any]] = [("add", {"a": task, "b": 2}), ("add", {"a": task + 2, "b": 3}), ("say", answer)]
    end = tok.token_id("<|im_end|>")
    items: list[dict[str, Any]] = []
    prev_text, prev_ids = "", list[int]()
    for k, (kind, what) in enumerate(steps):
        text = tok.render(messages, add_generation_prompt=True, tools=TOOLS)
        if retokenize or k == 0:
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tools=TOOLS)
        else:
            assert text.startswith(prev_text)  # the template renders history as it was generated
            prompt = prev_ids + tok.encode(text[len(prev_text):], add_special_tokens=False)
        generated = format_tool_calls([("add", what)]) if kind == "add" else str(what)
        body = tok.byte_token_ids(generated) if retokenize else tok.encode(generated, add_special_tokens=False)
        gen = [*body, end]
        fields = {"prompt_token_ids": prompt, "generation_token_ids": gen,
                  "generation_log_probs": [token_logprob(len(prompt), i, t) for i, t in enumerate(gen)]}
        prev_text, prev_ids = text + generated + "<|im_end|>", prompt + gen
        if kind == "add":
            call_id = f"call_{task}_{repeat}_{k}"
            result = str(what["a"] + what["b"])
            items += [{"type": "function_call", "call_id": call_id, "name": "add", "arguments": json.dumps(what),
                       **fields},
                      {"type": "function_call_output", "call_id": call_id, "output": result}]
            messages += [{"role": "assistant", "content": "", "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "add", "arguments": json.dumps(what)}}]},
                {"role": "tool", "tool_call_id": call_id, "content": result}]
        else:
            items.append({"type": "message", "role": "assistant",
                          "content": [{"type": "output_text", "text": generated}], **fields})
            messages.append({"role": "assistant", "content": generated})
    meta: dict[str, Any] = {"id": f"r{task}-{repeat}", "task_index": task, "repeat_index": repeat}
    if versions is not None:
        meta["policy_versions"] = versions
    return {"responses_create_params": {"input": [{"role": "user", "content": question}], "tools": TOOLS},
            "response": {"object": "response", "metadata": {}}, "output": items, "reward": reward,
            "_rollout": meta, "_conversation": messages}


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "_conversation"}) + "\n" for r in rows))


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_three_call_tool_rollouts_give_masked_token_records(tok: GgufTokenizer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rewards = [1.0, 0.0, 0.5, 1.0]
    rows = [_row(tok, 7, r, reward, f"The answer is {12 + r}.", versions=["iter_001", "iter_001", f"iter_00{1 + r}"])
            for r, reward in enumerate(rewards)]
    _write(tmp_path / "r.jsonl", rows)
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(tmp_path / "batch.jsonl"), "+format=rl"]) == 0
    assert "kept 4 of 4; skipped 0 not token-exact; 0 without token ids" in capsys.readouterr().err
    batch = read_jsonl(tmp_path / "batch.jsonl")
    assert [b["rollout_id"] for b in batch] == ["r7-0", "r7-1", "r7-2", "r7-3"]
    mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
    for row, rec in zip(rows, batch, strict=True):
        calls = [i for i in row["output"] if "generation_token_ids" in i]
        assert len(calls) == 3 and rec["num_model_calls"] == 3
        assert (rec["task_index"], rec["reward"], rec["policy_versions"]) == (7, row["reward"],
                                                                          row["_rollout"]["policy_versions"])
        ids, mask, lps = rec["token_ids"], rec["loss_mask"], rec["log_probs"]
        assert len(ids) == len(mask) == len(lps)
        assert ids == calls[-1]["prompt_token_ids"] + calls[-1]["generation_token_ids"]
        assert sum(mask) == sum(len(c["generation_token_ids"]) for c in calls)
        # The whole record is the conversation as the chat template renders it (it ends at the last <|im_end|>).
        rendered = tok.render(row["_conversation"], tools=TOOLS)
        assert tok.decode(ids, skip_special_tokens=False) == rendered.removesuffix("\n")
        # Each masked-in span is one call's generation at len(its prompt): the model's text plus <|im_end|>.
        spans = _spans(mask)
        assert [s for s, _ in spans] == [len(c["prompt_token_ids"]) for c in calls]
        texts = [format_tool_calls([("add", json.loads(c["arguments"]))]) if c["type"] == "function_call"
                 else c["content"][0]["text"] for c in calls]
        assert [tok.decode(ids[s:e], skip_special_tokens=False) for s, e in spans] == [t + "<|im_end|>"
                                                                                       for t in texts]
        assert [lps[s:e] for s, e in spans] == [c["generation_log_probs"] for c in calls]
        assert all(lp == 0.0 for lp, m in zip(lps, mask, strict=True) if not m)
        assert all(lp < 0 for lp, m in zip(lps, mask, strict=True) if m)
        assert rec["advantage"] == pytest.approx((row["reward"] - mean) / (std + 1e-6))
    assert sum(b["advantage"] for b in batch) == pytest.approx(0.0, abs=1e-9)


def test_rows_that_cannot_be_trained_on_are_skipped_and_counted(tok: GgufTokenizer, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    good = [_row(tok, 0, r, float(r % 2), f"It is {r}.") for r in range(3)]
    retokenized = _row(tok, 0, 3, 1.0, "It is 3.", retokenize=True)
    first, second = retokenized["output"][0], retokenized["output"][2]
    history = first["prompt_token_ids"] + first["generation_token_ids"]
    # The same text, other ids: only a token-level check sees it.
    assert second["prompt_token_ids"][:len(history)] != history
    assert tok.decode(second["prompt_token_ids"], skip_special_tokens=False).startswith(
        tok.decode(history, skip_special_tokens=False))
    marked = _row(tok, 0, 4, 0.0, "It is 4.")
    marked["response"]["metadata"]["rollgate_token_prefix_mismatch"] = True
    tokenless = _row(tok, 0, 5, 1.0, "It is 5.")
    for item in tokenless["output"]:
        for field in ("prompt_token_ids", "generation_token_ids", "generation_log_probs"):
            item.pop(field, None)
    short = _row(tok, 0, 6, 1.0, "It is 6.")
    short["output"][4]["generation_log_probs"].pop()
    unrewarded = _row(tok, 0, 7, None, "It is 7.")
    alone = _row(tok, 1, 0, 1.0, "Alone.")  # a group of one
    ties = [_row(tok, 2, r, 0.5, "Tie.") for r in range(2)]  # zero std
    old = _row(tok, 3, 0, 1.0, "Old.")  # no policy versions recorded
    _write(tmp_path / "r.jsonl", [*good, retokenized, marked, tokenless, short, unrewarded, alone, *ties, old])
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(tmp_path / "b.jsonl"), "+format=rl"]) == 0
    err = capsys.readouterr().err
    assert ("kept 7 of 12; skipped 2 not token-exact; 1 without token ids; 1 with malformed token fields; "
            "1 without a reward") in err
    batch = {b["rollout_id"]: b for b in read_jsonl(tmp_path / "b.jsonl")}
    assert sorted(batch) == ["r0-0", "r0-1", "r0-2", "r1-0", "r2-0", "r2-1", "r3-0"]
    group0 = [batch[f"r0-{r}"]["advantage"] for r in range(3)]  # rewards 0, 1, 0 over the kept rollouts
    assert sum(group0) == pytest.approx(0.0, abs=1e-9) and group0[1] > 0 > group0[0]
    assert batch["r1-0"]["advantage"] == 0.0
    assert batch["r2-0"]["advantage"] == batch["r2-1"]["advantage"] == 0.0
    assert batch["r3-0"]["policy_versions"] is None


def test_token_less_file_exports_nothing_and_says_why(tok: GgufTokenizer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"output": [{"type": "message", "role": "assistant", "content": "hi"}], "reward": 1.0,
             "_rollout": {"id": f"x{r}", "task_index": 0, "repeat_index": r}} for r in range(2)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(tmp_path / "b.jsonl"), "+format=rl"]) == 0
    err = capsys.readouterr().err
    assert "kept 0 of 2; skipped 0 not token-exact; 2 without token ids" in err and "+training=true" in err
    assert (tmp_path / "b.jsonl").read_text() == ""


def test_positional_groups_without_rollout_meta(tok: GgufTokenizer, tmp_path: Path) -> None:
    rows = [_row(tok, t, r, float(r), "Ok.") for t in range(2) for r in range(2)]
    for row in rows:
        del row["_rollout"]
    _write(tmp_path / "r.jsonl", rows)
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(tmp_path / "b.jsonl"), "+format=rl",
                          "+num_repeats=2"]) == 0
    batch = read_jsonl(tmp_path / "b.jsonl")
    assert [(b["task_index"], b["repeat_index"], b["rollout_id"]) for b in batch] == [
        (0, 0, None), (0, 1, None), (1, 0, None), (1, 1, None)]
    assert [b["advantage"] for b in batch] == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-5)


def test_bad_input_names_file_and_line_and_keeps_the_old_output(tok: GgufTokenizer, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.jsonl"
    out.write_text("previous batch\n")
    assert rollgate_main(["export", str(tmp_path / "missing.jsonl"), str(out), "+format=rl"]) == 2
    assert f"{tmp_path / 'missing.jsonl'}: no such file" in capsys.readouterr().err
    good = _row(tok, 0, 0, 1.0, "Fine.")
    (tmp_path / "r.jsonl").write_text(json.dumps({k: v for k, v in good.items() if k != "_conversation"})
                                      + "\n{broken\n")
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(out), "+format=rl"]) == 2
    assert f"{tmp_path / 'r.jsonl'}:2: not valid JSON" in capsys.readouterr().err
    assert out.read_text() == "previous batch\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl", "r.jsonl"]  # no temp file left behind
    assert rollgate_main(["export", str(tmp_path / "r.jsonl"), str(out), "+format=rl", "+min_reward=0.5"]) == 2
    assert "+min_reward does not apply to +format=rl" in capsys.readouterr().err
