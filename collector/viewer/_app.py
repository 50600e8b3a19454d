"""The viewer's HTTP surface: FastAPI routes that turn query strings into ``_query`` calls and answers into JSON.

``Viewer`` holds the open indexes (the file, and the run to compare with); the routes never touch files themselves.
Errors reach the page as ``{"error": {"kind", "message"}}`` with a 4xx status.

    app = create_app(Viewer.open(Path("rollouts.jsonl")))
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from rollgate.collector.viewer._index import Malformed, Progress, RolloutIndex, RowStatus, failures_sidecar, finite
from rollgate.collector.viewer._query import (
    FilterError,
    Query,
    compare,
    group_stats,
    run_query,
    search,
    summary,
    task_table,
)

__all__ = ["Viewer", "create_app"]

_MAX_LIMIT = 500
_MAX_GROUP = 64


def _sources(path: Path) -> list[Path]:
    side = failures_sidecar(path)
    return [path, side] if side is not None else [path]


@dataclass
class Viewer:
    """The open run (``a``) and, optionally, a second run over the same tasks (``b``).

        viewer = Viewer.open(Path("rollouts.jsonl"), compare_with=Path("baseline.jsonl"))
        app = create_app(viewer)  # a FastAPI app; serve it with uvicorn
    """

    a: RolloutIndex
    b: RolloutIndex | None = None
    _groups: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    _searches: dict[str, set[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _summary: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: Path, compare_with: Path | None = None, progress: Progress | None = None) -> Viewer:
        a = RolloutIndex.build(_sources(path), progress)
        b = RolloutIndex.build(_sources(compare_with), progress) if compare_with is not None else None
        return cls(a, b)

    def groups(self, run: str) -> dict[int, list[int]]:
        index = self.a if run == "a" else self.b
        assert index is not None
        with self._lock:
            cached = self._groups.get(run)
            if cached is None:
                cached = self._groups[run] = group_stats(index)
            return cached

    def search(self, text: str) -> set[int]:
        with self._lock:
            hit = self._searches.get(text)
        if hit is None:
            hit = search(self.a, text)
            with self._lock:
                if len(self._searches) > 16:
                    self._searches.clear()
                self._searches[text] = hit
        return hit

    def candidates(self) -> list[str]:
        """Rollout files beside the open one that the page may offer for comparison."""
        here = self.a.paths[0]
        return sorted(p.name for p in here.parent.glob("*.jsonl") if p.is_file() and p != here)

    def set_compare(self, name: str) -> None:
        if name not in self.candidates():
            raise LookupError(f"{name!r} is not a .jsonl file beside {self.a.paths[0].name}")
        b = RolloutIndex.build(_sources(self.a.paths[0].parent / name))
        with self._lock:
            self.b = b
            self._groups.pop("b", None)


def _json(obj: Any, status: int = 200) -> Response:
    try:
        body = orjson.dumps(obj)
    except TypeError:  # ints over 64 bits: the standard library writes them
        body = json.dumps(obj, default=str).encode()
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, kind: str, message: str) -> Response:
    return _json({"error": {"kind": kind, "message": message}}, status)


def _int(value: str | None, default: int, lo: int = 0, hi: int = 1 << 62) -> int:
    try:
        return max(lo, min(hi, int(value))) if value is not None else default
    except ValueError:
        return default


def _row_payload(index: RolloutIndex, i: int) -> dict[str, Any]:
    path, line = index.where(i)
    data = index.read_row(i)
    out: dict[str, Any] = {
        "row": i, "file": path, "line": line, "status": RowStatus(index.status[i]).name.lower(),
        "task": index.task[i], "repeat": index.repeat[i], "reward": finite(index.reward[i]),
    }
    if isinstance(data, Malformed):
        out["status"] = "malformed"
        out["malformed"] = {"line": data.line, "error": data.error, "raw": data.raw}
    else:
        out["data"] = data
    return out


def create_app(viewer: Viewer) -> FastAPI:
    app = FastAPI(title="rollgate viewer", docs_url=None, redoc_url=None, openapi_url=None)
    static = resources.files("rollgate.collector.viewer") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/api/summary")
    def api_summary() -> Response:
        with viewer._lock:
            if viewer._summary is None:
                viewer._summary = summary(viewer.a)  # the open file never changes: compute once
        out = dict(viewer._summary)
        out["compare"] = [str(p) for p in viewer.b.paths] if viewer.b is not None else None
        return _json(out)

    @app.get("/api/rows")
    def api_rows(request: Request) -> Response:
        p = request.query_params
        query = Query(filter=p.get("filter", ""), search=p.get("search", ""),
                      failures_only=p.get("failures", "") in ("1", "true"),
                      sort=p.get("sort", "index"), desc=p.get("desc", "") in ("1", "true"),
                      offset=_int(p.get("offset"), 0), limit=_int(p.get("limit"), 50, 1, _MAX_LIMIT))
        try:
            return _json(run_query(viewer.a, query, viewer.search))
        except FilterError as exc:
            return _error(400, "bad_filter", str(exc))

    @app.get("/api/rollout/{i}")
    def api_rollout(i: int, run: str = "a") -> Response:
        index = viewer.b if run == "b" else viewer.a
        if index is None or not 0 <= i < len(index):
            return _error(404, "not_found", f"no row {i}")
        return _json(_row_payload(index, i))

    @app.get("/api/tasks")
    def api_tasks(request: Request) -> Response:
        p = request.query_params
        return _json(task_table(viewer.a, viewer.groups("a"), p.get("sort", "task"), p.get("desc", "") == "1",
                                _int(p.get("offset"), 0), _int(p.get("limit"), 50, 1, _MAX_LIMIT)))

    @app.get("/api/group/{task}")
    def api_group(task: int, run: str = "a") -> Response:
        index = viewer.b if run == "b" else viewer.a
        if index is None:
            return _error(404, "no_compare", "no comparison run is open")
        ids = viewer.groups("b" if run == "b" else "a").get(task)
        if not ids:
            return _error(404, "not_found", f"no rollouts for task {task}")
        ids = sorted(ids, key=lambda i: (index.repeat[i], i))[:_MAX_GROUP]
        return _json({"task": task, "rollouts": [_row_payload(index, i) for i in ids]})

    @app.get("/api/compare")
    def api_compare(request: Request) -> Response:
        if viewer.b is None:
            return _error(404, "no_compare", "no comparison run is open: start with +compare_jsonl_fpath=FILE "
                                             "or pick a file on the Compare tab")
        p = request.query_params
        out = compare(viewer.a, viewer.b, p.get("sort", "abs_delta"), p.get("desc", "") == "1",
                      _int(p.get("offset"), 0), _int(p.get("limit"), 50, 1, _MAX_LIMIT), viewer.groups("a"))
        out["files"] = {"a": [str(x) for x in viewer.a.paths], "b": [str(x) for x in viewer.b.paths]}
        return _json(out)

    @app.get("/api/compare/files")
    def api_compare_files() -> Response:
        current = str(viewer.b.paths[0]) if viewer.b is not None else None
        return _json({"current": current, "candidates": viewer.candidates()})

    @app.post("/api/compare")
    async def api_set_compare(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            name = body["file"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "bad_request", 'send {"file": "NAME.jsonl"}')
        try:
            # Indexing a large file takes seconds: off the event loop.
            await asyncio.to_thread(viewer.set_compare, str(name))
        except LookupError as exc:
            return _error(404, "not_found", str(exc))
        except OSError as exc:
            return _error(400, "unreadable", str(exc))
        return _json({"current": str(viewer.b.paths[0]) if viewer.b else None})

    return app
