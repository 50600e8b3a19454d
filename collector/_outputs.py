"""A run's files on disk: the main output, its sidecars, and the backups of what an earlier run left there.

``<output>.failures`` holds failed groups (never ending in ``.jsonl``, so ``outputs/*.jsonl`` globs skip it),
``<output>.manifest.json`` the run's record. ``move_aside`` keeps what a previous run wrote:
``<output>.<UTC YYYYmmddTHHMMSSZ>.bak``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

__all__ = ["failures_path", "manifest_path", "move_aside", "utc_stamp"]


def failures_path(output: str | Path) -> Path:
    # Deliberately not ending in .jsonl, so `outputs/*.jsonl` globs never pick it up.
    return Path(f"{output}.failures")


def manifest_path(output: str | Path) -> Path:
    return Path(f"{output}.manifest.json")


def utc_stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")


def move_aside(path: Path, stamp: str) -> Path | None:
    """Rename an existing ``path`` to ``<path>.<stamp>.bak`` (``.<stamp>.N.bak`` if taken); warn on stderr."""
    if not path.exists():
        return None
    target = Path(f"{path}.{stamp}.bak")
    n = 1
    while target.exists():
        target = Path(f"{path}.{stamp}.{n}.bak")
        n += 1
    os.replace(path, target)
    print(f"warning: {path} already exists; moved the old file to {target}", file=sys.stderr, flush=True)
    return target
