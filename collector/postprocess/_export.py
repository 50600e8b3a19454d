"""``rollgate export``: rollouts to training data: TRL's conversational formats and token-level RL records.

- ``+format=sft`` → one ``{"messages": [...]}`` row per rollout with reward >= ``min_reward`` (SFTTrainer's
  conversational language-modelling format), plus ``"tools"`` (Chat Completions function schemas) when the task
  offered tools.
- ``+format=dpo`` → one ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` row per task group whose top
  two rewards differ by at least ``min_reward_gap`` (DPOTrainer's conversational preference format: ``prompt``
  is the message list before the answer, ``chosen``/``rejected`` the assistant turns).
- ``+format=rl`` → one token-level record per training-mode rollout (``token_ids``, ``loss_mask``, ``log_probs``,
  ``reward``, GRPO ``advantage``, ``policy_versions``, ids); see ``_export_rl``.

The output is written to a temporary file beside it and renamed into place when the input was read to its end,
so a bad input line (``FILE:LINE`` error, exit 2) leaves an existing output as it was.

Messages: ``instructions`` become a ``system`` message; a string ``input`` one ``user`` message; input messages
keep their role with their text parts joined. Output items: ``message`` → ``assistant`` text; consecutive
``function_call`` items → one ``assistant`` message with ``tool_calls`` (``arguments`` as a JSON object, as chat
templates expect); ``function_call_output`` → a ``tool`` message. ``reasoning`` items are left out.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rollgate.collector._json import loads
from rollgate.collector.errors import OutputError, UsageError
from rollgate.collector.postprocess._command import command_entry
from rollgate.collector.postprocess._export_rl import export_rl, summary
from rollgate.collector.postprocess._groups import iter_groups

__all__ = ["ExportConfig", "export_main", "prompt_messages", "trajectory_messages"]


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    input_jsonl_fpath: str
    """The rollouts file."""
    output_jsonl_fpath: str
    """The dataset JSONL to write."""
    format: Literal["sft", "dpo", "rl"] = "sft"
    """``sft``: ``{"messages"}`` rows; ``dpo``: ``{"prompt", "chosen", "rejected"}`` rows (both conversational);
    ``rl``: token ids, loss mask, log-probs, reward and GRPO advantage per training-mode rollout."""
    min_reward: float | None = None
    """SFT: keep rollouts with reward >= this (null: all). DPO: the chosen answer must reach it."""
    min_reward_gap: float = Field(0.15, ge=0)
    """DPO: the top two rewards of a group must differ by at least this much."""
    num_repeats: int | None = Field(None, ge=1)
    """Group rows by position (only for files whose rows have no ``_rollout``)."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return loads(raw)
        except ValueError:
            return raw
    return raw


def trajectory_messages(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Responses API items (input or output) as chat messages."""
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" or (kind not in ("function_call", "function_call_output", "reasoning")
                                 and "role" in item):
            messages.append({"role": item.get("role", "assistant"), "content": _text(item.get("content"))})
        elif kind == "function_call":
            names[str(item.get("call_id", ""))] = str(item.get("name", ""))
            call = {"type": "function", "function": {"name": item.get("name"),
                                                     "arguments": _arguments(item.get("arguments"))}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out = item.get("output")
            message = {"role": "tool", "content": out if isinstance(out, str) else json.dumps(out)}
            name = names.get(str(item.get("call_id", "")))
            if name:
                message["name"] = name
            messages.append(message)
    return messages


def prompt_messages(params: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if isinstance(params.get("instructions"), str):
        messages.append({"role": "system", "content": params["instructions"]})
    given = params.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages += trajectory_messages(given)
    return messages


def _tools(params: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if not tools:
        return None
    return [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters") if k in t}}
            for t in tools]


def _conversational(cfg: ExportConfig, out: IO[bytes]) -> tuple[int, int]:
    written = seen = 0
    for _, group in iter_groups(cfg.input_jsonl_fpath, cfg.num_repeats):
        seen += len(group) if cfg.format == "sft" else 1
        if cfg.format == "sft":
            for row in group:
                reward = row.get("reward")
                if cfg.min_reward is not None and not (isinstance(reward, (int, float))
                                                       and reward >= cfg.min_reward):
                    continue
                params = row.get("responses_create_params") or {}
                record: dict[str, Any] = {
                    "messages": prompt_messages(params) + trajectory_messages(row.get("output") or [])}
                tools = _tools(params)
                if tools:
                    record["tools"] = tools
                out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
                written += 1
            continue
        ranked = sorted(group, key=lambda x: x["reward"], reverse=True)
        if len(ranked) < 2 or ranked[0]["reward"] - ranked[1]["reward"] < cfg.min_reward_gap:
            continue
        if cfg.min_reward is not None and ranked[0]["reward"] < cfg.min_reward:
            continue
        params = ranked[0].get("responses_create_params") or {}
        record = {"prompt": prompt_messages(params),
                  "chosen": trajectory_messages(ranked[0].get("output") or []),
                  "rejected": trajectory_messages(ranked[1].get("output") or [])}
        out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        written += 1
    return written, seen


def _export(cfg: ExportConfig) -> int:
    if cfg.format == "rl" and cfg.min_reward is not None:
        raise UsageError("+min_reward does not apply to +format=rl (every rollout counts towards its group's "
                         "advantage)")
    target = Path(cfg.output_jsonl_fpath)
    tmp = target.with_name(f"{target.name}.export-{os.getpid()}.tmp")
    try:
        out = open(tmp, "wb")
    except OSError as exc:
        raise OutputError(cfg.output_jsonl_fpath, exc.strerror or str(exc)) from None
    try:
        with out:
            if cfg.format == "rl":
                kept, seen, skipped = export_rl(cfg.input_jsonl_fpath, out, cfg.num_repeats)
            else:
                written, seen = _conversational(cfg, out)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(cfg.output_jsonl_fpath, exc.strerror or str(exc)) from None
    finally:
        tmp.unlink(missing_ok=True)
    if cfg.format == "rl":
        print(f"{summary(kept, seen, skipped)} -> {cfg.output_jsonl_fpath}", file=sys.stderr)
        if seen and skipped["without token ids"] == seen:
            print("hint: no row carries token ids; collect with training mode (+training=true)", file=sys.stderr)
        return 0
    unit = "rollouts" if cfg.format == "sft" else "groups"
    print(f"exported {written} {cfg.format} rows from {seen} {unit} to {cfg.output_jsonl_fpath}", file=sys.stderr)
    return 0


_USAGE = __doc__ or ""


export_main = command_entry(
    ExportConfig,
    "usage: rollgate export ROLLOUTS.jsonl OUT.jsonl +format=sft|dpo|rl [+min_reward=0.8] [+min_reward_gap=0.15]\n\n"
    + _USAGE.strip(),
    _export,
    ["input_jsonl_fpath", "output_jsonl_fpath"],
)
