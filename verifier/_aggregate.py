"""``POST /aggregate_metrics`` as NeMo Gym's resources servers answer it by default.

NeMo Gym 0.7's collector ends every run by posting its rows (stripped of ``response`` but for ``usage`` and
``incomplete_details``) as ``{"verify_responses": [...]}``, and writes the answer, an ``AggregateMetrics``
object, next to its output. A server that overrides nothing answers with ``compute_aggregate_metrics``
(``nemo_gym/reward_profile.py``, default ``compute_metrics`` / ``get_key_metrics`` / ``compute_repeat_metrics``);
``aggregate_metrics`` here gives the same keys and numbers, in plain Python:

- the numeric fields of each row (bools as 0/1, ``response.usage``'s numbers merged in, ``_``-prefixed keys and
  rows whose ``mask_sample`` is true left out) are the metric columns;
- ``group_level_metrics``: per ``_ng_task_index``, ``mean/ max/ min/ median/ std/<column>`` plus the rollouts'
  own numbers (``rollout_infos``) and completion counts;
- ``agent_metrics``: the same statistics over every row, ``num_repeats`` (distinct ``_ng_rollout_index``), and
  with more than one repeat the spread of each repeat's mean across repeats (``mean_across_repeats/mean/…``,
  ``se_…``, a 95% Student-t interval ``ci_low_95_…`` / ``ci_high_95_…``);
- ``key_metrics``: the ``mean/…`` entries of ``agent_metrics``;
- ``repeat_level_metrics``: per repeat (when there are several), each column's mean, median, std, sem, min, max,
  p25, p75 and 95% interval over the tasks;
- ``perf_summary``: token, turn and latency statistics of the rows' ``ng_perf`` (null when no row has one);
- masked rows (``mask_sample``) are counted under ``coverage/…`` instead of being averaged.

A standard deviation of fewer than two values is left out, except that when no column has two values (one rollout
per task) complete columns get 0.0, as pandas' ``std`` and NeMo Gym's fill give. Two rows with the same
``(_ng_task_index, _ng_rollout_index)`` are refused (``ValueError``), as NeMo Gym's profiler refuses them; the
indices must be integers (absent means 0).

    aggregate_metrics([{"_ng_task_index": 0, "_ng_rollout_index": 0, "reward": 1.0}])["key_metrics"]
    # {"mean/reward": 1.0}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from rollgate.verifier._stats import mean, median, quantile, sample_std, t_interval

__all__ = ["HookFailed", "MetricsHooks", "aggregate_metrics", "is_primary_metric"]

TASK_INDEX = "_ng_task_index"
ROLLOUT_INDEX = "_ng_rollout_index"
AGENT_REF = "agent_ref"
MASK_SAMPLE = "mask_sample"
ACROSS_REPEATS = "_across_repeats/"
# NeMo Gym's profiler names the single agent of one /aggregate_metrics call "agent".
_AGENT = "agent"

# nemo_gym/metrics_config.py: which repeat-level numbers are point estimates worth summarising across repeats.
_EXCLUDED_NAMES = frozenset({TASK_INDEX, ROLLOUT_INDEX, "_ng_attempt_index", "sample_count", "missing_count",
                             "num_repeats", "token_usage_version"})
_EXCLUDED_PREFIXES = tuple(f"{s}/" for s in ("max", "min", "median", "std", "sem", "se", "p25", "p75", "ci_low_95",
                                              "ci_high_95", "histogram"))
_EXCLUDED_SUFFIXES = ("/max", "/min", "/median", "/p5", "/p25", "/p75", "/p95", "/ci_low_95", "/ci_high_95",
                      "/ci_lower", "/ci_upper", "_ci_lower", "_ci_upper", "_ci95_lower", "_ci95_upper",
                      "/_ng_attempt_index", "/std_dev_across_runs", "/std_err_across_runs", "/avg_sample_std_dev")

Number = int | float


@dataclass(frozen=True)
class MetricsHooks:
    """A server's overrides of NeMo Gym's aggregation hooks (``ResourcesServer.compute_metrics`` …); None: default."""

    compute_metrics: Callable[[list[list[dict[str, Any]]]], Any] | None = None
    get_key_metrics: Callable[[dict[str, Any]], Any] | None = None
    compute_repeat_metrics: Callable[[list[list[dict[str, Any]]]], Any] | None = None


class HookFailed(Exception):
    """A server's ``compute_metrics`` or ``get_key_metrics`` raised, or answered something other than a dict."""


def _hook(name: str, fn: Callable[[Any], Any], arg: Any) -> dict[str, Any]:
    try:
        answer = fn(arg)
    except Exception as exc:
        raise HookFailed(f"{name} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(answer, dict):
        raise HookFailed(f"{name} must return a dict, got {type(answer).__name__}")
    return answer


def is_primary_metric(name: str) -> bool:
    """NeMo Gym's ``is_primary_metric``: a point estimate, not a statistic of one or bookkeeping."""
    return (name not in _EXCLUDED_NAMES and not name.startswith(_EXCLUDED_PREFIXES)
            and not name.endswith(_EXCLUDED_SUFFIXES) and ACROSS_REPEATS not in name)


def _number(value: Any) -> Number | None:
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, (int, float)) else None


def _index(row: Mapping[str, Any], key: str) -> int:
    value = row.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


@dataclass
class _Rollout:
    task: int
    repeat: int
    numbers: dict[str, Number] = field(default_factory=dict)  # the metric columns this rollout has
    info: dict[str, Any] = field(default_factory=dict)  # its ``rollout_infos`` entry


def _rollout(row: Mapping[str, Any]) -> _Rollout:
    task, repeat = _index(row, TASK_INDEX), _index(row, ROLLOUT_INDEX)
    response = row.get("response")
    usage = response.get("usage") if isinstance(response, Mapping) else None
    usage = usage if isinstance(usage, Mapping) else {}
    fields = {k: v for k, v in row.items() if k != MASK_SAMPLE}
    info: dict[str, Any] = {"rollout_id": f"{task}:{repeat}", TASK_INDEX: task, ROLLOUT_INDEX: repeat}
    if "reward" in fields:
        info["reward"] = fields["reward"]
    for key, value in [*usage.items(), *((k, v) for k, v in fields.items()
                                         if not str(k).startswith("_") and k not in ("reward", "response"))]:
        if (number := _number(value)) is not None:
            info[key] = number
    numbers: dict[str, Number] = {}
    for key, value in {**fields, **usage}.items():  # usage wins a name clash, as in NeMo Gym
        if not str(key).startswith("_") and (number := _number(value)) is not None:
            numbers[str(key)] = number
    return _Rollout(task, repeat, numbers, info)


def _columns(rollouts: Sequence[_Rollout]) -> list[str]:
    """Every metric column, in the order first seen (pandas' order for a frame built from these records)."""
    return list(dict.fromkeys(key for r in rollouts for key in r.numbers))


def _describe(rollouts: Sequence[_Rollout], columns: Sequence[str]) -> dict[str, float]:
    """``mean/ max/ min/ median/ std/<column>``, statistic by statistic, leaving out what has no value."""
    values = {c: [float(r.numbers[c]) for r in rollouts if c in r.numbers] for c in columns}
    stds = {c: sample_std(v) for c, v in values.items()}
    if all(math.isnan(s) for s in stds.values()):
        # pandas' std of one value is NaN; NeMo Gym reads "no spread" as 0 for the columns every rollout has.
        stds = {c: 0.0 if len(values[c]) == len(rollouts) else s for c, s in stds.items()}
    stats: list[tuple[str, Callable[[list[float]], float]]] = [("mean", mean), ("max", max), ("min", min),
                                                                ("median", median)]
    out = {f"{name}/{c}": float(fn(v)) for name, fn in stats for c, v in values.items() if v}
    out.update({f"std/{c}": s for c, s in stds.items() if not math.isnan(s)})
    return out


def _spread(values: list[float], join: str, name: str, stats: Sequence[str]) -> dict[str, float]:
    """Mean, median, std (ddof=1; 0 for one value), min, max, standard error, quartiles and the 95% t interval of
    ``values``, keyed ``<stat><join><name>`` for the ``stats`` asked (the interval only above one value)."""
    n = len(values)
    centre = mean(values)
    std = sample_std(values) if n > 1 else 0.0
    error = std / n ** 0.5
    every = {"mean": centre, "median": median(values), "std": std, "sem": error, "se": error, "min": min(values),
             "max": max(values), "p25": quantile(values, 0.25), "p75": quantile(values, 0.75)}
    out = {f"{stat}{join}{name}": float(every[stat]) for stat in stats}
    if n > 1:
        low, high = (centre, centre) if error == 0 else t_interval(centre, error, n)
        out[f"ci_low_95{join}{name}"], out[f"ci_high_95{join}{name}"] = low, high
    return out


def _repeat_level(rollouts: Sequence[_Rollout], columns: Sequence[str]) -> list[dict[str, Any]]:
    repeats = sorted({r.repeat for r in rollouts})
    if len(repeats) < 2:
        return []
    tasks = len({r.task for r in rollouts})
    entries = []
    for repeat in repeats:
        members = [r for r in rollouts if r.repeat == repeat]
        present = len({r.task for r in members})
        entry: dict[str, Any] = {ROLLOUT_INDEX: repeat, "sample_count": present, "missing_count": tasks - present}
        for column in sorted(columns):
            values = [float(r.numbers[column]) for r in members if column in r.numbers]
            if values:
                entry.update(_spread(values, "/", column, ("mean", "median", "std", "sem", "min", "max", "p25", "p75")))
        entries.append(entry)
    return entries


def _across_repeats(entries: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each repeat's point estimates (``mean/…``) summarised across the repeats."""
    names = [k for k in dict.fromkeys(k for e in entries for k in e) if is_primary_metric(k)]
    out: dict[str, float] = {}
    for name in names:
        values = [float(e[name]) for e in entries if name in e]
        out.update(_spread(values, ACROSS_REPEATS, name, ("mean", "median", "std", "min", "max", "se")))
    return out


def _coverage(rows: Sequence[Mapping[str, Any]], scored: Sequence[Mapping[str, Any]], masked: int) -> dict[str, int]:
    if not masked:
        return {}
    measured = {_index(r, TASK_INDEX) for r in scored}
    every = {_index(r, TASK_INDEX) for r in rows}
    return {"coverage/measured_rollouts": len(scored), "coverage/masked_rollouts": masked,
            "coverage/measured_tasks": len(measured), "coverage/fully_masked_tasks": len(every - measured)}


def _check_unique(rows: Sequence[Mapping[str, Any]], scored: Sequence[Mapping[str, Any]]) -> None:
    seen: dict[tuple[int, int], int] = {}
    for row in rows:
        key = (_index(row, TASK_INDEX), _index(row, ROLLOUT_INDEX))
        seen[key] = seen.get(key, 0) + 1
    for row in scored:
        key = (_index(row, TASK_INDEX), _index(row, ROLLOUT_INDEX))
        if seen[key] > 1:
            raise ValueError(f"{seen[key]} verify responses share the rollout key ({TASK_INDEX}, {ROLLOUT_INDEX}) = "
                             f"{key}; each rollout must be sent once")


def perf_summary(records: Sequence[Mapping[str, Any]], total: int) -> dict[str, Number] | None:
    """NeMo Gym's ``compute_perf_summary`` over the rows' ``ng_perf`` dicts (None when there are none).

    The values keep their JSON type where NeMo Gym's do: a total, min or max (and the median of an odd count) of
    integer token counts stays an integer."""
    if total <= 0 or not records:
        return None

    def values(key: str) -> list[Number]:
        return [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]

    def positive(r: Mapping[str, Any]) -> bool:
        value = r.get("token_observability_coverage")
        return isinstance(value, (int, float)) and value > 0

    stat: dict[str, Callable[[list[Number]], Number]] = {
        "mean": statistics.fmean, "median": statistics.median, "total": sum, "min": min, "max": max,
        "std": statistics.pstdev, "p50": lambda v: float(quantile(v, 0.5)), "p90": lambda v: float(quantile(v, 0.9)),
        "p99": lambda v: float(quantile(v, 0.99)),
    }
    out: dict[str, Number] = {"overall_observability_coverage": len(records) / total,
                              "token_observability_coverage": sum(1 for r in records if positive(r)) / total}
    for key in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "reasoning_tokens"):
        if found := values(key):
            out.update({f"{s}_{key}": stat[s](found) for s in ("mean", "median", "total")})
    if turns := values("num_turns"):
        out.update({f"{s}_num_turns": stat[s](turns) for s in ("mean", "median", "std", "min", "p90", "max")})
    per_turn = [float(r["completion_tokens"]) / float(r["num_turns"]) for r in records
                if isinstance(r.get("completion_tokens"), (int, float)) and isinstance(r.get("num_turns"), (int, float))
                and r["num_turns"] > 0]
    if per_turn:
        out["mean_tokens_per_turn"], out["median_tokens_per_turn"] = mean(per_turn), median(per_turn)
    if latency := values("total_latency_ms"):
        out.update({f"total_latency_{s}_ms": stat[s](latency) for s in ("p50", "p90", "p99", "mean")})
    return out


def _by_task(rows: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rows grouped by task, in task order (a hook's argument, as NeMo Gym groups them)."""
    tasks: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        tasks.setdefault(_index(row, TASK_INDEX), []).append(dict(row))
    return [tasks[t] for t in sorted(tasks)]


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _repeat_hook(fn: Callable[[Any], Any], scored: Sequence[Mapping[str, Any]], repeats: list[dict[str, Any]],
                 agent: dict[str, Any], custom: Mapping[str, Any]) -> None:
    """A server's ``compute_repeat_metrics``, applied as NeMo Gym applies it: run once per repeat on that repeat's
    rows; each name it returns replaces the generic repeat-level value of that name, is kept only where it is finite
    for every repeat (and in ``compute_metrics``' answer, if there), and is summarised across repeats again."""
    by_repeat: dict[int, list[Mapping[str, Any]]] = {}
    for row in scored:
        by_repeat.setdefault(_index(row, ROLLOUT_INDEX), []).append(row)
    answers = [_hook("compute_repeat_metrics", fn, _by_task(by_repeat.get(e[ROLLOUT_INDEX], []))) for e in repeats]
    names = {name for answer in answers for name in answer}
    if not names:
        return
    for name in names:
        numbers = [float(v) for answer in answers if _finite(v := answer.get(name))]
        for entry in repeats:
            entry.pop(name, None)
        if (name not in custom or _finite(custom[name])) and len(numbers) == len(answers):
            for entry, number in zip(repeats, numbers, strict=True):
                entry[name] = number
    for name in [k for k in agent if ACROSS_REPEATS in k and k.split(ACROSS_REPEATS, 1)[1] in names]:
        del agent[name]
    agent.update(_across_repeats(repeats))


def aggregate_metrics(verify_responses: Sequence[Mapping[str, Any]], hooks: MetricsHooks | None = None,
                      ) -> dict[str, Any]:
    """NeMo Gym's ``AggregateMetrics`` for these verify responses, as a JSON-ready dict: its default, with a
    server's ``compute_metrics`` / ``get_key_metrics`` applied where NeMo Gym applies them (``HookFailed`` when one
    fails)."""
    hooks = hooks or MetricsHooks()
    answer: dict[str, Any] = {"group_level_metrics": [], "agent_metrics": {}, "key_metrics": {},
                              "perf_summary": None, "repeat_level_metrics": []}
    if not verify_responses:
        return answer
    scored = [r for r in verify_responses if not r.get(MASK_SAMPLE)]
    coverage = _coverage(verify_responses, scored, len(verify_responses) - len(scored))
    answer["perf_summary"] = perf_summary(
        [r["ng_perf"] for r in verify_responses if isinstance(r.get("ng_perf"), Mapping)], len(verify_responses))
    if not scored:
        answer["agent_metrics"], answer["key_metrics"] = dict(coverage), dict(coverage)
        return answer
    _check_unique(verify_responses, scored)

    rollouts = sorted((_rollout(r) for r in scored), key=lambda r: (r.task, r.repeat))
    columns = _columns(rollouts)
    by_task: dict[int, list[_Rollout]] = {}
    for r in rollouts:
        by_task.setdefault(r.task, []).append(r)
    for task, members in by_task.items():
        answer["group_level_metrics"].append({
            TASK_INDEX: task, **_describe(members, columns), "sample": {AGENT_REF: {"name": _AGENT}},
            "num_rollouts": len(members), "expected_num_rollouts": len(members), "missing_num_rollouts": 0,
            "reward_profile_completion_pct": 100.0, "rollout_infos": [r.info for r in members],
        })

    repeats = _repeat_level(rollouts, columns)
    agent = {**_describe(rollouts, columns), **_across_repeats(repeats), **coverage}
    custom: dict[str, Any] = {}
    if hooks.compute_metrics is not None:
        custom = _hook("compute_metrics", hooks.compute_metrics, _by_task(scored))
        per_task = custom.pop("per_task_metrics", None)
        if per_task:
            found = {m[TASK_INDEX]: m for m in per_task if isinstance(m, dict) and TASK_INDEX in m}
            for group in answer["group_level_metrics"]:
                group.update({k: v for k, v in found.get(group[TASK_INDEX], {}).items() if k != TASK_INDEX})
        agent.update(custom)
    agent["num_repeats"] = len({_index(r, ROLLOUT_INDEX) for r in verify_responses})
    answer["agent_metrics"] = agent
    if hooks.get_key_metrics is not None:
        answer["key_metrics"] = {**_hook("get_key_metrics", hooks.get_key_metrics, dict(agent)), **coverage}
    else:
        answer["key_metrics"] = {**{k: v for k, v in agent.items() if k.startswith("mean/")}, **coverage}
    if hooks.compute_repeat_metrics is not None and repeats:
        # After key_metrics, as NeMo Gym does: its per-repeat numbers replace the generic ones of the same name.
        _repeat_hook(hooks.compute_repeat_metrics, scored, repeats, agent, custom)
    answer["repeat_level_metrics"] = repeats
    return answer
