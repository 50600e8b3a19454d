"""Resume: reuse the rollouts a previous (killed, interrupted or partly failed) run already wrote.

Sources: the output itself, its ``.failures`` sidecar, and the ``*.partial`` files a killed resume left behind
(each a JSONL file in input order, read lazily), plus the completion journals of interrupted or killed runs
(``*.journal``, see ``_journal``: the finished rollouts that were still waiting in the reorder buffer, read up
front and sorted). A torn last line (no final newline: the process died in the middle of a write) and any
unreadable line are skipped, so they are re-run rather than trusted.

``ExistingRows.take(spec)`` walks all sources in step with the specs (both in (task, repeat) order, like a merge
join), so memory does not grow with the output: a row is reused only when its rollout id equals the spec's — a
changed task, parameter or agent gives a new id and the rollout runs again. Sidecar rows marked ``failed`` are
never reused; those marked ``completed`` are (their group now gets a chance to be complete).

Re-verify, never regenerate: a sidecar row that failed at stage ``verify`` and holds the model's response, with a
complete trajectory (every function call answered, or the tool loop cut at ``max_steps``), is not run from the
start: ``prior_response(spec)`` hands its response to the spec, and the gateway verifies that response again
without calling the model (``RolloutRequest.prior_response_json``). It walks the ordered sources a second time, in
step with the specs like ``take``. A failure at seed time has no response, and one at any other stage is run again.

    existing = ExistingRows(resume_sources(output))
    row = existing.take(spec)      # the stored row, or None when the rollout must run
"""

from __future__ import annotations

import glob
import heapq
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollgate.collector._json import dumps, loads
from rollgate.collector._outputs import failures_path
from rollgate.collector.run._journal import is_journal, journal_paths, read_journal
from rollgate.collector.run._lines import complete_lines
from rollgate.collector.run._tasks import RolloutSpec

__all__ = ["ExistingRows", "partial_paths", "read_complete_lines", "resume_sources", "reverifiable_response",
           "warn_about"]

_Key = tuple[int, int]


@dataclass
class SourceStats:
    torn: int = 0
    unreadable: int = 0


def read_complete_lines(path: Path, stats: SourceStats) -> Iterator[dict[str, Any]]:
    """Every complete JSON-object line of ``path``; a final line without ``\\n`` is torn and skipped."""
    for raw in complete_lines(path, stats):
        try:
            row = loads(raw)
        except ValueError:
            stats.unreadable += 1
            continue
        if isinstance(row, dict):
            yield row
        else:
            stats.unreadable += 1


def partial_paths(output: Path) -> list[Path]:
    """Leftovers of resumes that were killed before their final rename."""
    found: list[Path] = []
    for base in (output, failures_path(output)):
        found += sorted(Path(p) for p in glob.glob(glob.escape(str(base)) + ".resume-*.partial"))
    return found


def resume_sources(output: Path) -> list[Path]:
    return [p for p in (output, failures_path(output), *partial_paths(output), *journal_paths(output)) if p.exists()]


def _keyed(path: Path, stats: SourceStats) -> Iterator[tuple[_Key, int, dict[str, Any]]]:
    order = 0
    for row in read_complete_lines(path, stats):
        meta = row.get("_rollout")
        if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
            stats.unreadable += 1
            continue
        if meta.get("status") == "failed" or "error" in row:
            continue
        try:
            key = (int(meta["task_index"]), int(meta["repeat_index"]))
        except (KeyError, TypeError, ValueError):
            stats.unreadable += 1
            continue
        order += 1
        yield key, order, row


def _unanswered_calls(output: list[Any]) -> bool:
    answered = {i.get("call_id") for i in output if isinstance(i, dict) and i.get("type") == "function_call_output"}
    return any(isinstance(i, dict) and i.get("type") == "function_call" and i.get("call_id") not in answered
               for i in output)


def reverifiable_response(row: dict[str, Any]) -> dict[str, Any] | None:
    """The response of a failed row that may be verified again as it is, or None (it must run again)."""
    error, response, meta = row.get("error"), row.get("response"), row.get("_rollout")
    if not isinstance(error, dict) or error.get("stage") != "verify" or not isinstance(meta, dict):
        return None
    if not isinstance(response, dict) or not isinstance(response.get("output"), list) or not response["output"]:
        return None
    if _unanswered_calls(response["output"]) and meta.get("truncated") is not True:
        return None  # a trajectory that stopped mid-tool-loop is not a finished answer
    return response


def _failed_verifies(path: Path, stats: SourceStats) -> Iterator[tuple[_Key, int, dict[str, Any]]]:
    order = 0
    for row in read_complete_lines(path, stats):
        meta = row.get("_rollout")
        if not isinstance(meta, dict) or not isinstance(meta.get("id"), str) or "error" not in row:
            continue
        try:
            key = (int(meta["task_index"]), int(meta["repeat_index"]))
        except (KeyError, TypeError, ValueError):
            continue
        order += 1
        yield key, order, row


class ExistingRows:
    """A merge join of the stored rows against the specs, in (task, repeat) order."""

    def __init__(self, sources: list[Path]) -> None:
        self.sources = sources
        self.stats = SourceStats()
        self._rows = heapq.merge(*((read_journal if is_journal(p) else _keyed)(p, self.stats) for p in sources),
                                 key=lambda item: item[0])
        self._head: tuple[_Key, int, dict[str, Any]] | None = next(self._rows, None)
        # The failed rows, walked separately (their own stats: each line is counted once, by the walk above).
        self._failed = heapq.merge(*(_failed_verifies(p, SourceStats()) for p in sources if not is_journal(p)),
                                   key=lambda item: item[0])
        self._failed_head: tuple[_Key, int, dict[str, Any]] | None = next(self._failed, None)
        self.reused = 0
        self.stale = 0  # rows at a spec's position whose id differs (the config changed): re-run
        self.reverified = 0  # failed-at-verify rollouts sent with their stored response

    def prior_response(self, spec: RolloutSpec) -> bytes:
        """The stored response (JSON) of ``spec``'s rollout if it failed at verify and may be re-verified, else b"".

        Called once per spec, in spec order (like ``take``)."""
        want = (spec.task_index, spec.repeat_index)
        found = b""
        while self._failed_head is not None and self._failed_head[0] <= want:
            key, _, row = self._failed_head
            self._failed_head = next(self._failed, None)
            if key == want and not found and row["_rollout"]["id"] == spec.rollout_id:
                response = reverifiable_response(row)
                if response is not None:
                    found = dumps(response)
        if found:
            self.reverified += 1
        return found

    def take(self, spec: RolloutSpec) -> dict[str, Any] | None:
        want = (spec.task_index, spec.repeat_index)
        found: dict[str, Any] | None = None
        while self._head is not None and self._head[0] <= want:
            key, _, row = self._head
            self._head = next(self._rows, None)
            if key < want:
                continue  # a task outside this run (another shard, a smaller limit): not ours to write
            if found is None and row["_rollout"]["id"] == spec.rollout_id:
                found = row
            elif found is None:
                self.stale += 1
        if found is None:
            return None
        self.reused += 1
        meta = dict(found["_rollout"])
        meta.pop("status", None)  # a sidecar's completed/failed mark does not belong in the main file
        return {**found, "_rollout": meta}


def warn_about(existing: ExistingRows) -> None:
    if existing.reverified:
        print(f"{existing.reverified} rollout(s) that had failed at verify were sent with their stored responses, "
              "to be verified again rather than generated again", file=sys.stderr, flush=True)
    stats = existing.stats
    if stats.torn:
        print(f"warning: repaired {stats.torn} torn last line(s) (the previous run was killed mid-write); "
              "those rollouts run again", file=sys.stderr, flush=True)
    if stats.unreadable:
        print(f"warning: skipped {stats.unreadable} unreadable line(s) in the previous output; those rollouts "
              "run again", file=sys.stderr, flush=True)
