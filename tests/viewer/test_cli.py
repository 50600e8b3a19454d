"""``ng_viewer`` as a user runs it: prints its URL, serves the page, stops cleanly on Ctrl-C; clear errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from rollgate.collector import viewer_main
from tests.viewer.rows import make_run

ROOT = Path(__file__).resolve().parents[2]


def _fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def test_ng_viewer_prints_url_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "rollouts.jsonl"
    make_run(path, tasks=3, repeats=2)
    other = tmp_path / "other.jsonl"
    make_run(other, tasks=3, repeats=2, seed=5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollgate.collector", "view", "--input-jsonl-fpath", str(path), "+port=0",
         f"+compare_jsonl_fpath={other}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["service"] == "viewer"
        url = ready["url"]
        assert url.startswith("http://127.0.0.1:")
        page = _fetch(url + "/").decode()
        assert '<script src="/static/app.js">' in page
        assert not re.search(r'(src|href)="(https?:)?//', page)  # no CDN: the page loads nothing from elsewhere
        assert b"function renderConversation" in _fetch(url + "/static/app.js")
        summary = json.loads(_fetch(url + "/api/summary"))
        assert summary["rollouts"] == 6 and summary["compare"] == [str(other)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "indexed 6 rows" in err and url in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_bad_arguments_are_one_clear_error(tmp_path: Path, capsys: Any) -> None:
    assert viewer_main([f"+input_jsonl_fpath={tmp_path / 'missing.jsonl'}"]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert viewer_main(["+input_jsonl=x.jsonl"]) == 2
    assert "did you mean 'input_jsonl_fpath'" in capsys.readouterr().err
    assert viewer_main([]) == 2
    assert "input_jsonl_fpath" in capsys.readouterr().err


def test_rollgate_view_is_ng_viewer_and_all_matches_importable(capsys: Any) -> None:
    import rollgate.collector.viewer as viewer_pkg
    from rollgate.collector import rollgate_main

    assert rollgate_main(["view"]) == 2  # the same parser: it names the missing key
    assert "input_jsonl_fpath" in capsys.readouterr().err
    public = {n for n in dir(viewer_pkg) if not n.startswith("_") and n != "annotations"}
    assert set(viewer_pkg.__all__) == public
