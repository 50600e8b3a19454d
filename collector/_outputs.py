"""A run's files on disk: the main output, its sidecars, and the backups of what an earlier run left there.

``<output>.failures`` holds failed groups (never ending in ``.jsonl``, so ``outputs/*.jsonl`` globs skip it),
``<output>.manifest.json`` the run's record.

``back_up`` keeps what a previous run wrote, all of it in one place: the output and its sidecars move together
into one folder, ``<output>.<UTC YYYYmmddTHHMMSSZ>.bak/``, under their own names; ``keep`` prunes the oldest
such folders of that output. So a re-run leaves one complete backup (output + manifest [+ failures]) and
nothing else, and ``outputs/*.jsonl`` globs never see a backup.

    back_up([out, failures_path(out), manifest_path(out)], utc_stamp(), keep=3)
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["back_up", "backups_of", "failures_path", "manifest_path", "utc_stamp"]

_BACKUP = re.compile(r"\.(\d{8}T\d{6}Z)(?:\.(\d+))?\.bak$")


def failures_path(output: str | Path) -> Path:
    # Deliberately not ending in .jsonl, so `outputs/*.jsonl` globs never pick it up.
    return Path(f"{output}.failures")


def manifest_path(output: str | Path) -> Path:
    return Path(f"{output}.manifest.json")


def utc_stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")


def backups_of(output: str | Path) -> list[Path]:
    """The backup folders of ``output``, oldest first."""
    output = Path(output)
    found: list[tuple[str, int, Path]] = []
    for path in output.parent.glob(f"{output.name}.*.bak"):
        m = _BACKUP.fullmatch(path.name[len(output.name):])
        if m and path.is_dir():
            found.append((m.group(1), int(m.group(2) or 0), path))
    return [p for _, _, p in sorted(found)]


def back_up(paths: Sequence[Path], stamp: str, *, keep: int | None = None) -> Path | None:
    """Move the existing ``paths`` (an output first, then its sidecars) into one new folder
    ``<output>.<stamp>.bak/`` (``.<stamp>.N.bak`` if taken) and say so on stderr; None when none exists.
    With ``keep``, the oldest backup folders of that output beyond the newest ``keep`` are removed."""
    output = paths[0]
    present = [p for p in paths if p.exists()]
    if not present:
        return None
    target = Path(f"{output}.{stamp}.bak")
    n = 1
    while target.exists():
        target = Path(f"{output}.{stamp}.{n}.bak")
        n += 1
    target.mkdir()
    for path in present:
        os.replace(path, target / path.name)
    print(f"warning: {output} already exists; moved it and its sidecars to {target}/", file=sys.stderr, flush=True)
    if keep is not None:
        for old in backups_of(output)[:-keep]:
            shutil.rmtree(old)
            print(f"removed the old backup {old}/ (+keep_backups={keep})", file=sys.stderr, flush=True)
    return target
