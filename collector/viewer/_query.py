"""Questions the page asks of an index: summary, filtered and sorted pages, groups, comparisons, text search.

Pure functions over ``RolloutIndex`` columns (no web types here), so tests call them directly.

A filter is a small expression over the numeric columns, e.g. ``reward < 0.3``, ``0.2 <= reward < 0.5``,
``reward >= 1 and accuracy == 0``; a row whose value is missing never matches.
"""

from __future__ import annotations

import math
import operator
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rollgate.collector.viewer._index import Malformed, RolloutIndex, RowStatus, finite

__all__ = ["FilterError", "Query", "compare", "group_stats", "parse_filter", "run_query", "search", "summary"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, "=": operator.eq, "==": operator.eq,
    "!=": operator.ne, ">=": operator.ge, ">": operator.gt,
}
_TOKEN = re.compile(r"\s*(<=|>=|==|!=|<|>|=|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[A-Za-z_][\w.]*)")
_SPLIT = re.compile(r"\s+and\s+|\s*,\s*|\s*&&\s*", re.IGNORECASE)
HIST_BINS = 20


class FilterError(ValueError):
    """A filter expression that cannot be read; the message says what is wrong and the valid names."""


Condition = tuple[str, Callable[[float, float], bool], float]


def _tokens(clause: str) -> list[str]:
    out, pos = [], 0
    while pos < len(clause):
        m = _TOKEN.match(clause, pos)
        if m is None:
            if clause[pos:].strip() == "":
                break
            raise FilterError(f"cannot read {clause[pos:].strip()!r} in {clause!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _is_num(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def parse_filter(text: str, names: Iterable[str]) -> list[Condition]:
    """``"0.2 <= reward < 0.5 and accuracy == 1"`` -> conditions ``(column, op, value)``."""
    valid = set(names) | {"task", "repeat"}
    conds: list[Condition] = []
    for clause in _SPLIT.split(text.strip()):
        if not clause:
            continue
        toks = _tokens(clause)
        if len(toks) == 3 and not _is_num(toks[0]) and toks[1] in _OPS and _is_num(toks[2]):
            conds.append((toks[0], _OPS[toks[1]], float(toks[2])))
        elif len(toks) == 3 and _is_num(toks[0]) and toks[1] in _OPS and not _is_num(toks[2]):
            # "0.5 < reward" reads as "reward > 0.5".
            flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(toks[1], toks[1])
            conds.append((toks[2], _OPS[flipped], float(toks[0])))
        elif len(toks) == 5 and _is_num(toks[0]) and toks[1] in _OPS and toks[3] in _OPS and _is_num(toks[4]):
            flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(toks[1], toks[1])
            conds.append((toks[2], _OPS[flipped], float(toks[0])))
            conds.append((toks[2], _OPS[toks[3]], float(toks[4])))
        else:
            raise FilterError(f"cannot read {clause!r}: write e.g. 'reward < 0.3' or '0.2 <= reward < 0.5'")
    for name, _, _ in conds:
        if name not in valid:
            raise FilterError(f"unknown column {name!r}; filter on: {', '.join(sorted(valid))}")
    return conds


@dataclass
class Query:
    filter: str = ""
    search: str = ""
    failures_only: bool = False
    sort: str = "index"
    desc: bool = False
    offset: int = 0
    limit: int = 50


def _values(index: RolloutIndex, name: str) -> Any:
    if name == "task":
        return index.task
    if name == "repeat":
        return index.repeat
    return index.column(name)


def _problem(status: int) -> bool:
    return status in (RowStatus.FAILED, RowStatus.MALFORMED)


def matching(index: RolloutIndex, query: Query, searcher: Callable[[str], set[int]] | None = None) -> list[int]:
    """Row ids that pass the query's filters, sorted as it asks."""
    conds = parse_filter(query.filter, index.metric_names())
    rows: Iterable[int] = range(len(index))
    if query.failures_only:
        status = index.status
        rows = [i for i in rows if _problem(status[i])]
    for name, op, value in conds:
        col = _values(index, name)
        # NaN compares false with everything, so rows without the value drop out (and `!=` must say so itself).
        rows = [i for i in rows if not math.isnan(col[i]) and op(col[i], value)]
    if query.search.strip():
        hits = (searcher or (lambda q: search(index, q)))(query.search.strip())
        rows = [i for i in rows if i in hits]
    rows = list(rows)
    if query.sort != "index":
        col = _values(index, query.sort)
        if col is None:
            raise FilterError(f"cannot sort by {query.sort!r}; sort by: index, task, repeat, "
                              + ", ".join(index.metric_names()))
        # Missing values go last in either direction.
        present = [i for i in rows if not math.isnan(col[i])]
        missing = [i for i in rows if math.isnan(col[i])]
        present.sort(key=lambda i: (col[i], i), reverse=query.desc)
        rows = present + missing
    elif query.desc:
        rows.reverse()
    return rows


def search(index: RolloutIndex, text: str, chunk: int = 8 << 20) -> set[int]:
    """Row ids whose raw line contains ``text`` (ASCII case-insensitive), by scanning the files in chunks."""
    needle = text.encode().lower()
    found: set[int] = set()
    for src, path in enumerate(index.paths):
        ids = [i for i in range(len(index)) if index.source[i] == src]
        starts = [index.offset[i] for i in ids]
        with open(path, "rb") as fh:
            base, tail = 0, b""  # base: file offset of the first byte of tail
            while True:
                block = fh.read(chunk)
                buf = tail + block
                # Search whole lines only; the last partial line waits for the next block, so a match never
                # straddles two blocks.
                cut = buf.rfind(b"\n") + 1 if block else len(buf)
                if block and cut == 0:
                    tail = buf
                    continue
                part = buf[:cut].lower()
                pos = part.find(needle)
                while pos != -1:
                    k = bisect_right(starts, base + pos) - 1
                    if k >= 0:
                        found.add(ids[k])
                    nl = part.find(b"\n", pos)  # one hit per row is enough: go on from the next line
                    pos = -1 if nl == -1 else part.find(needle, nl + 1)
                base += cut
                tail = buf[cut:]
                if not block:
                    break
    return found


def _hist(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"lo": 0.0, "hi": 1.0, "counts": [0] * HIST_BINS}
    lo, hi = min(values), max(values)
    if 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0  # the usual reward range: keep bins at round numbers
    if hi == lo:
        hi = lo + 1.0
    counts = [0] * HIST_BINS
    width = (hi - lo) / HIST_BINS
    for v in values:
        counts[min(int((v - lo) / width), HIST_BINS - 1)] += 1
    return {"lo": lo, "hi": hi, "counts": counts}


def summary(index: RolloutIndex) -> dict[str, Any]:
    ok = list(index.ok_rows())
    means: dict[str, float | None] = {}
    for name in index.metric_names():
        col = index.column(name)
        assert col is not None
        vals = [col[i] for i in ok if not math.isnan(col[i])]
        means[name] = finite(sum(vals) / len(vals)) if vals else None
    rewards = [index.reward[i] for i in ok if math.isfinite(index.reward[i])]
    by_stage: dict[str, int] = {}
    failed = 0
    for i in range(len(index)):
        if index.status[i] == RowStatus.FAILED:
            failed += 1
            stage = index.labels[index.stage[i]]
            by_stage[stage] = by_stage.get(stage, 0) + 1
    tasks = {index.task[i] for i in ok} | {index.task[i] for i in range(len(index))
                                            if index.status[i] == RowStatus.FAILED}
    return {
        "files": [str(p) for p in index.paths],
        "rows": len(index),
        "rollouts": len(index) - len(index.malformed),
        "ok": len(ok),
        "failed": failed,
        "failures_by_stage": by_stage,
        "malformed": len(index.malformed),
        "malformed_lines": [{"row": i, "path": index.where(i)[0], "line": index.where(i)[1]}
                            for i in index.malformed[:100]],
        "tasks": len(tasks),
        "metrics": index.metric_names(),
        "means": means,
        "histogram": _hist(rewards),
        "bytes": index.bytes_total,
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text(p.get("text") if isinstance(p, dict) else p) for p in content)
    return ""


def prompt_of(row: dict[str, Any]) -> str:
    """The last user message of the task, for one-line previews."""
    params = row.get("responses_create_params")
    inp = params.get("input") if isinstance(params, dict) else None
    if isinstance(inp, str):
        return inp
    if isinstance(inp, list):
        for item in reversed(inp):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text(item.get("content"))
    return ""


def answer_of(row: dict[str, Any]) -> str:
    output = row.get("output")
    if isinstance(output, list):
        for item in reversed(output):
            if isinstance(item, dict) and item.get("type") == "message":
                return _text(item.get("content"))
    return ""


def brief(index: RolloutIndex, i: int, width: int = 160) -> dict[str, Any]:
    """One list entry: the indexed numbers plus previews read from disk."""
    path, line = index.where(i)
    entry: dict[str, Any] = {
        "row": i, "file": path, "line": line, "status": RowStatus(index.status[i]).name.lower(),
        "task": index.task[i], "repeat": index.repeat[i], "reward": finite(index.reward[i]),
        "metrics": {k: finite(col[i]) for k, col in index.metrics.items()},
    }
    row = index.read_row(i)
    if isinstance(row, Malformed):
        entry["error"] = {"stage": "input", "kind": "malformed_line", "message": f"line {row.line}: {row.error}"}
        entry["prompt"] = row.raw[:width]
        return entry
    entry["prompt"] = prompt_of(row)[:width]
    entry["answer"] = answer_of(row)[:width]
    err = row.get("error")
    if isinstance(err, dict):
        entry["error"] = {"stage": err.get("stage"), "kind": err.get("kind"),
                          "message": str(err.get("message") or "")[:width]}
    return entry


def run_query(index: RolloutIndex, query: Query,
              searcher: Callable[[str], set[int]] | None = None) -> dict[str, Any]:
    rows = matching(index, query, searcher)
    page = rows[query.offset: query.offset + query.limit]
    return {"total": len(rows), "offset": query.offset, "rows": [brief(index, i) for i in page]}


def group_stats(index: RolloutIndex) -> dict[int, list[int]]:
    """Task index -> its row ids (failed included, malformed lines excluded), in file order."""
    groups: dict[int, list[int]] = {}
    for i in range(len(index)):
        if index.status[i] != RowStatus.MALFORMED:
            groups.setdefault(index.task[i], []).append(i)
    return groups


def task_table(index: RolloutIndex, groups: dict[int, list[int]], sort: str, desc: bool,
               offset: int, limit: int) -> dict[str, Any]:
    """One line per task: repeats, mean/min/max reward and spread (tasks with mixed rewards are DPO material)."""
    table: list[dict[str, Any]] = []
    for task, ids in groups.items():
        vals = [index.reward[i] for i in ids if math.isfinite(index.reward[i])]
        failed = sum(1 for i in ids if index.status[i] == RowStatus.FAILED)
        table.append({
            "task": task, "repeats": len(ids), "failed": failed,
            "mean": sum(vals) / len(vals) if vals else None,
            "min": min(vals) if vals else None, "max": max(vals) if vals else None,
            "spread": (max(vals) - min(vals)) if vals else None,
        })
    key = sort if sort in ("task", "repeats", "failed", "mean", "min", "max", "spread") else "task"
    present = [t for t in table if t[key] is not None]
    present.sort(key=lambda t: (t[key], t["task"]), reverse=desc)
    table = present + [t for t in table if t[key] is None]
    page = table[offset: offset + limit]
    for t in page:
        first = index.read_row(groups[t["task"]][0])
        t["prompt"] = prompt_of(first)[:160] if isinstance(first, dict) else ""
    return {"total": len(table), "offset": offset, "tasks": page}


def _task_means(index: RolloutIndex) -> dict[int, tuple[float | None, int, int]]:
    acc: dict[int, list[float]] = {}
    fails: dict[int, int] = {}
    for i in range(len(index)):
        st = index.status[i]
        if st == RowStatus.MALFORMED:
            continue
        t = index.task[i]
        acc.setdefault(t, [])
        if st == RowStatus.FAILED:
            fails[t] = fails.get(t, 0) + 1
        elif math.isfinite(index.reward[i]):
            acc[t].append(index.reward[i])
    return {t: (sum(v) / len(v) if v else None, len(v), fails.get(t, 0)) for t, v in acc.items()}


def compare(a: RolloutIndex, b: RolloutIndex, sort: str, desc: bool, offset: int, limit: int,
            groups_a: dict[int, list[int]]) -> dict[str, Any]:
    """Per-task mean reward in run A and run B and the delta B − A, with totals."""
    ma, mb = _task_means(a), _task_means(b)
    table: list[dict[str, Any]] = []
    for t in sorted(set(ma) | set(mb)):
        mean_a, n_a, f_a = ma.get(t, (None, 0, 0))
        mean_b, n_b, f_b = mb.get(t, (None, 0, 0))
        delta = mean_b - mean_a if mean_a is not None and mean_b is not None else None
        table.append({"task": t, "mean_a": mean_a, "mean_b": mean_b, "delta": delta, "n_a": n_a, "n_b": n_b,
                      "failed_a": f_a, "failed_b": f_b})
    both = [r for r in table if r["delta"] is not None]
    totals = {
        "tasks": len(table), "both": len(both),
        "only_a": sum(1 for t in table if t["n_a"] + t["failed_a"] and not (t["n_b"] + t["failed_b"])),
        "only_b": sum(1 for t in table if t["n_b"] + t["failed_b"] and not (t["n_a"] + t["failed_a"])),
        "better": sum(1 for r in both if r["delta"] > 0), "worse": sum(1 for r in both if r["delta"] < 0),
        "same": sum(1 for r in both if r["delta"] == 0),
        "mean_a": sum(r["mean_a"] for r in both) / len(both) if both else None,
        "mean_b": sum(r["mean_b"] for r in both) / len(both) if both else None,
    }
    key = sort if sort in ("task", "mean_a", "mean_b", "delta") else "abs_delta"
    field = "delta" if key == "abs_delta" else key
    present = [r for r in table if r[field] is not None]
    missing = [r for r in table if r[field] is None]
    if key == "abs_delta":
        present.sort(key=lambda r: (abs(r["delta"]), -r["task"]), reverse=not desc)
    else:
        present.sort(key=lambda r: (r[key], r["task"]), reverse=desc)
    table = present + missing
    page = table[offset: offset + limit]
    for r in page:
        ids = groups_a.get(r["task"])
        first = a.read_row(ids[0]) if ids else None
        r["prompt"] = prompt_of(first)[:160] if isinstance(first, dict) else ""
    return {"totals": totals, "total": len(table), "offset": offset, "tasks": page}
