"""``rollgate reverify``: re-score existing rollouts with another (or an edited) verifier, without calling a model.

    rollgate reverify +input_jsonl_fpath=rollouts.jsonl +verifier=URL|module:attr|BUILTIN +output_jsonl_fpath=new.jsonl

A URL is used as it is; a ``module:attr`` or a built-in name is served for the run on a local port
(``rollgate verifier serve TARGET --port 0``, the same protocol the gateway speaks). Rows are sent to
``POST /verify`` in parallel and written in input order. Each output row carries the new ``reward``, the new
verifier fields and ``_rollout.verifier_version``; what they replaced is kept under ``_before_reverify``
(``reward``, ``verifier_version`` and the old value of every field the new verifier changed). Rows that were
failures (no ``response``) pass through unchanged. A row whose re-verification fails goes to
``<output>.failures`` with ``error: {stage: "verify", …}`` and the exit status is 1.

The before/after reward table goes to stderr; the summary JSON (rows, changed, failed, before, after) to stdout.
The table counts the rows with each reward value on both sides; with more than 11 distinct values it lists the
10 most common (in value order) and an ``other (K values)`` row holding the rest, so each column adds up to its
``n``. Floats are shown with 4 significant digits (more where two listed values would read the same). In the
JSON, ``before``/``after`` have ``distinct`` (how many reward values) and, when that is at most 10, ``counts``.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, Field
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

import rollgate
from rollgate._cli import CliError, parse_cli, run_cli
from rollgate.collector._children import stop_process, wait_ready
from rollgate.collector._outputs import back_up, failures_path, utc_stamp

__all__ = ["ReverifyConfig", "reverify_main"]

PREVIOUS_KEY = "_before_reverify"
# Never sent to the verifier as task fields: the trajectory and our own bookkeeping.
_NOT_TASK = frozenset({"output", "_rollout", "error", PREVIOUS_KEY, "reward"})


class ReverifyConfig(BaseModel):
    """``rollgate reverify`` arguments."""

    input_jsonl_fpath: str
    """The rollouts to re-score (a collector output file)."""
    verifier: str
    """http(s)://HOST:PORT of a running verifier, or MODULE:ATTR / a built-in name to serve for this run."""
    output_jsonl_fpath: str
    """Where the re-scored rows go (an existing file and its sidecar are moved aside to a .<timestamp>.bak folder)."""
    num_samples_in_parallel: int = Field(32, ge=1, le=4096)
    """Verify calls in flight at once."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-call timeout for POST /verify."""
    attempts: int = Field(3, ge=1, le=20)
    """Tries per row on connection errors, 408, 429 and 5xx other than a verify() exception."""
    start_timeout_s: float = Field(120.0, gt=0)
    """How long a locally served verifier may take to print its ready line."""


class _Transient(Exception):
    pass


class _RowFailed(Exception):
    def __init__(self, kind: str, message: str, http_status: int = 0) -> None:
        super().__init__(message)
        self.kind, self.message, self.http_status = kind, message, http_status


def _rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise CliError(f"{path}:{lineno}: not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise CliError(f"{path}:{lineno}: a row must be a JSON object")
            yield lineno, row


def _check_rows(path: str) -> int:
    """One streaming pass before anything is moved or written: a bad line stops the command with FILE:LINE."""
    return sum(1 for _ in _rows(path))


async def _post_verify(http: aiohttp.ClientSession, url: str, body: bytes,
                       cfg: ReverifyConfig) -> tuple[dict[str, Any], str]:
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(cfg.attempts),
        wait=wait_exponential(multiplier=0.2, max=5) + wait_random(0, 0.1),
        retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
        reraise=True,
    ):
        with attempt:
            try:
                async with http.post(f"{url}/verify", data=body, headers={"content-type": "application/json"}) as ans:
                    raw = await ans.read()
                    version = ans.headers.get("x-verifier-version", "unknown")
                    status = ans.status
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = None
            if status >= 400:
                err = data.get("error") if isinstance(data, dict) else None
                kind = str(err.get("kind")) if isinstance(err, dict) else "http_error"
                message = str(err.get("message")) if isinstance(err, dict) else raw[:200].decode("utf-8", "replace")
                # A verify() exception is deterministic: trying again scores nothing new.
                deterministic = kind.endswith(("_exception", "invalid_reward", "invalid_task"))
                if (status in (408, 429) or status >= 500) and not deterministic:
                    raise _Transient(f"HTTP {status}: {message}")
                raise _RowFailed(kind, message, status)
            if not isinstance(data, dict):
                raise _RowFailed("invalid_response", f"the verifier answered non-JSON: {raw[:200]!r}", status)
            reward = data.get("reward")
            if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
                raise _RowFailed("invalid_response", f"'reward' must be a finite number, got {reward!r}", status)
            return data, version
    raise AssertionError("unreachable")  # tenacity either returns or re-raises


def _rescored(row: dict[str, Any], data: dict[str, Any], body: dict[str, Any], version: str) -> dict[str, Any]:
    added = {k: v for k, v in data.items() if k not in body or body[k] != v}
    added["reward"] = float(data["reward"])
    raw_rollout = row.get("_rollout")
    old_rollout: dict[str, Any] = raw_rollout if isinstance(raw_rollout, dict) else {}
    previous: dict[str, Any] = {"reward": row.get("reward"), "verifier_version": old_rollout.get("verifier_version")}
    previous.update({k: row[k] for k in added if k in row and k != "reward"})
    out = {k: v for k, v in row.items() if k != PREVIOUS_KEY}
    # Reserved keys are never overwritten by a verifier field (DESIGN: rollouts out).
    reserved = ("responses_create_params", "response", "output", "_rollout", "error")
    out.update({k: v for k, v in added.items() if k not in reserved})
    out["_rollout"] = {**old_rollout, "verifier_version": version}
    out[PREVIOUS_KEY] = previous
    return out


async def _run(cfg: ReverifyConfig, url: str) -> tuple[dict[str, Any], list[float], list[float]]:
    """Re-score every row; returns the summary and the before/after reward lists (for the table)."""
    out_path = Path(cfg.output_jsonl_fpath)
    back_up([out_path, failures_path(out_path)], utc_stamp())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    before: list[float] = []
    after: list[float] = []
    counts = {"rows": 0, "changed": 0, "failed": 0, "passed_through": 0}
    inflight = asyncio.Semaphore(cfg.num_samples_in_parallel)
    # Tasks in input order; the bound keeps a slow head row from letting finished rows pile up without limit.
    ordered: asyncio.Queue[tuple[dict[str, Any], asyncio.Task[tuple[dict[str, Any], bool]]] | None] = asyncio.Queue(
        maxsize=4 * cfg.num_samples_in_parallel
    )

    async def one(http: aiohttp.ClientSession, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if not isinstance(row.get("response"), dict):
            return row, True  # a failed rollout has nothing to verify; kept as it was
        body = {k: v for k, v in row.items() if k not in _NOT_TASK}
        try:
            async with inflight:
                try:
                    data, version = await _post_verify(http, url, orjson.dumps(body), cfg)
                except _Transient as exc:
                    raise _RowFailed("connection", str(exc)) from None
            return _rescored(row, data, body, version), True
        except _RowFailed as exc:
            failed = dict(row)
            failed["error"] = {"stage": "verify", "kind": exc.kind, "message": exc.message,
                               "http_status": exc.http_status, "attempts": cfg.attempts}
            return failed, False

    async def writer() -> None:
        fails_fh = None
        try:
            with out_path.open("wb") as out:
                while (item := await ordered.get()) is not None:
                    original, task = item
                    row, ok = await task
                    if not ok:
                        counts["failed"] += 1
                        if fails_fh is None:  # no empty sidecar when nothing failed
                            fails_fh = failures_path(out_path).open("wb")
                        fails_fh.write(orjson.dumps(row) + b"\n")
                        continue
                    counts["rows"] += 1
                    out.write(orjson.dumps(row) + b"\n")
                    if row is original:
                        counts["passed_through"] += 1
                        continue
                    old = original.get("reward")
                    if isinstance(old, (int, float)) and not isinstance(old, bool):
                        before.append(float(old))
                    after.append(float(row["reward"]))
                    if old != row["reward"]:
                        counts["changed"] += 1
        finally:
            if fails_fh is not None:
                fails_fh.close()

    connector = aiohttp.TCPConnector(limit=cfg.num_samples_in_parallel)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as http:
        writing = asyncio.create_task(writer())
        tasks: list[asyncio.Task[Any]] = []
        try:
            for _, row in _rows(cfg.input_jsonl_fpath):
                task = asyncio.create_task(one(http, row))
                tasks.append(task)
                put = asyncio.create_task(ordered.put((row, task)))
                await asyncio.wait({put, writing}, return_when=asyncio.FIRST_COMPLETED)
                if writing.done():  # the writer died (disk full …): stop reading
                    put.cancel()
                    break
                if len(tasks) > 8 * cfg.num_samples_in_parallel:
                    tasks = [t for t in tasks if not t.done()]
            else:
                await ordered.put(None)
            await writing
        finally:
            for t in [*tasks, writing]:
                t.cancel()
            await asyncio.gather(*tasks, writing, return_exceptions=True)
    return {**counts, "before": _summary(before), "after": _summary(after)}, before, after


TABLE_TOP = 10
"""The reward table lists every value when there are at most this many (+1) distinct ones; otherwise the
``TABLE_TOP`` most common (before and after together) and one ``other`` row with the rest of each side."""


def _key(v: float) -> str:
    """A reward value as a JSON/table key: compact (``0``, ``1``, ``0.25``) yet never merging two values."""
    short = f"{v:g}"
    return short if float(short) == v else repr(v)


def _distribution(values: list[float]) -> Counter[float]:
    return Counter(values)  # keyed by the value itself: 0.1234561 and 0.1234562 stay two rows


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    dist = _distribution(values)
    summary: dict[str, Any] = {
        "n": len(values), "mean": round(statistics.fmean(values), 6), "min": min(values),
        "median": statistics.median(values), "max": max(values), "distinct": len(dist),
    }
    if len(dist) <= 10:  # binary or few-valued rewards: the counts are the distribution
        summary["counts"] = {_key(v): dist[v] for v in sorted(dist)}
    return summary


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.4g}"


def _labels(values: list[float]) -> list[str]:
    """``.4g`` labels, with more digits where two shown values would otherwise read the same."""
    for digits in (4, 6, 8, 10, 12, 15, 17):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return [repr(v) for v in values]


def _table(result: dict[str, Any], before: list[float] | None = None, after: list[float] | None = None) -> str:
    """The before/after table: summary statistics, then ``= VALUE`` rows with how many rows had each reward.

    Counts come from the reward lists themselves (``before``/``after``, the raw values), so a value that is
    common on one side and absent from the other is counted right on both. With more than ``TABLE_TOP + 1``
    distinct values (both sides together), the ``TABLE_TOP`` most common are listed in value order, followed by
    ``other (K values)`` with the rows of every value not listed, so each column's counts still add up to its
    ``n``. Without the lists, the summaries' ``counts`` (present for few-valued rewards) are used.
    """
    b, a = result["before"], result["after"]
    rows: list[tuple[str, str, str]] = [("reward", "before", "after")]
    for key in ("n", "mean", "min", "median", "max"):
        rows.append((key, _num(b.get(key)), _num(a.get(key))))
    if before is not None and after is not None:
        bd, ad = _distribution(before), _distribution(after)
    else:
        bd = Counter({float(k): int(c) for k, c in b.get("counts", {}).items()})
        ad = Counter({float(k): int(c) for k, c in a.get("counts", {}).items()})
    total = bd + ad
    shown = sorted(total) if len(total) <= TABLE_TOP + 1 else sorted(
        v for v, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:TABLE_TOP]
    )
    for v, label in zip(shown, _labels(shown), strict=True):
        rows.append((f"= {label}", str(bd[v]), str(ad[v])))
    if len(shown) < len(total):
        rest = len(total) - len(shown)
        rows.append((f"other ({rest} values)", str(bd.total() - sum(bd[v] for v in shown)),
                     str(ad.total() - sum(ad[v] for v in shown))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
    lines.append(f"rows: {result['rows']}  changed: {result['changed']}  failed: {result['failed']}  "
                 f"passed through (no response): {result['passed_through']}")
    return "\n".join(lines)


def _serve_locally(target: str, cfg: ReverifyConfig) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollgate.verifier", "serve", target, "--port", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()},
    )
    try:
        return proc, str(wait_ready(proc, cfg.start_timeout_s)["url"])
    except RuntimeError as exc:
        stop_process(proc)
        raise CliError(f"cannot start verifier {target!r}: {exc} (its error is above)") from None


def _pythonpath() -> str:
    # The child must import the verifier room from wherever this collector came from (the folder that holds the
    # `rollgate` package: site-packages, or a checkout), and the user's cwd module.
    here = str(Path(rollgate.__file__).resolve().parents[1])
    parts = [os.getcwd(), here, os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def reverify_main(argv: list[str]) -> int:
    def body() -> int:
        if any(a in {"-h", "--help"} for a in argv):
            print(__doc__)
            return 0
        cfg = parse_cli(argv, ReverifyConfig)
        if not Path(cfg.input_jsonl_fpath).is_file():
            raise CliError(f"input_jsonl_fpath: {cfg.input_jsonl_fpath} is not a file")
        if Path(cfg.input_jsonl_fpath).resolve() == Path(cfg.output_jsonl_fpath).resolve():
            raise CliError("output_jsonl_fpath must differ from input_jsonl_fpath")
        _check_rows(cfg.input_jsonl_fpath)
        proc = None
        url = cfg.verifier.rstrip("/")
        if not url.startswith(("http://", "https://")):
            proc, url = _serve_locally(cfg.verifier, cfg)
        try:
            result, before, after = asyncio.run(_run(cfg, url))
        finally:
            if proc is not None:
                stop_process(proc)
        print(_table(result, before, after), file=sys.stderr)
        print(orjson.dumps(result).decode())
        return 1 if result["failed"] else 0

    return run_cli(body)
