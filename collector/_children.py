"""Child services: the ready line, and stopping a child cleanly.

Each rollgate server prints one ``{"event": "ready", …}`` JSON line on stdout when it listens. ``parse_ready``
recognises it; ``wait_ready`` reads a child process's stdout until it appears (blocking, for callers without an
event loop such as ``rollgate demo``; ``rollgate up`` reads asynchronously with ``parse_ready``).
``stop_process`` ends a child: SIGTERM (so servers drain), SIGKILL after a grace, and its stdout pipe closed.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

__all__ = ["parse_ready", "stop_process", "wait_ready"]


def parse_ready(line: str | bytes) -> dict[str, Any] | None:
    """The ready event in ``line``, or None for any other output."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("event") == "ready" else None


def wait_ready(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """Block until ``proc`` prints its ready line; raise if it exits first or the time runs out."""
    assert proc.stdout is not None, "start the process with stdout=subprocess.PIPE"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode} before it was ready")
            time.sleep(0.05)
            continue
        event = parse_ready(line)
        if event is not None:
            return event
    raise RuntimeError(f"{proc.args!r} was not ready within {timeout_s:g} s")


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """Terminate ``proc`` (kill it after ``grace_s``), wait for it, and close its stdout pipe."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
    if proc.stdout is not None:
        proc.stdout.close()
