"""The ``rollgate`` front door: one command, dispatched to the rooms.

Every command lives elsewhere and is imported only when it runs: ``collect`` in ``run``, ``up`` and ``demo`` in
``stack``, the file commands in ``postprocess``, ``view`` in ``viewer``; ``gateway …`` and ``verifier …`` are handed
to those rooms' own ``main(argv)``, so a broken sibling never breaks ``rollgate collect``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["rollgate_main", "viewer_main"]


def viewer_main(argv: Sequence[str] | None = None) -> int:
    """``ng_viewer`` / ``rollgate view``: browse a rollouts file in the browser."""
    # Imported lazily: the viewer pulls in FastAPI/uvicorn, which `ng_collect_rollouts` never needs.
    from rollgate.collector.viewer import viewer_main as _viewer_main

    return _viewer_main(list(sys.argv[1:] if argv is None else argv))


def _lazy(module: str, attr: str) -> Callable[[list[str]], int]:
    """The command ``module.attr(argv)``, imported only when it runs: each command pays for its own imports."""

    def run(argv: list[str]) -> int:
        try:
            entry = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            print(f"error: cannot load {module}.{attr}: {exc}", file=sys.stderr)
            return 2
        status = entry(argv)
        return int(status) if status is not None else 0

    return run


_RUN, _STACK, _POST = "rollgate.collector.run", "rollgate.collector.stack", "rollgate.collector.postprocess"

# name -> (what it does, entry)
_COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "collect": ("collect rollouts (same as ng_collect_rollouts)", _lazy(_RUN, "collect_main")),
    "view": ("browse a rollouts file (same as ng_viewer)", viewer_main),
    "up": ("start a local stack: verifier(s) + gateway (+ the embedded model)", _lazy(_STACK, "up_main")),
    "gateway": ("run a gateway or change its routing (rollgate gateway serve|set ...)",
                _lazy("rollgate.gateway", "main")),
    "verifier": ("run a verifier (rollgate verifier serve MODULE:ATTR|BUILTIN)",
                 _lazy("rollgate.verifier.hosting", "main")),
    "demo": ("the whole thing on the embedded model", _lazy(_STACK, "demo_main")),
    "reverify": ("re-score existing rollouts with another verifier", _lazy(_POST, "reverify_main")),
    "merge": ("join shard outputs into one file in input order", _lazy(_POST, "merge_main")),
    "pairs": ("DPO chosen/rejected pairs from repeat groups", _lazy(_POST, "pairs_main")),
    "stats": ("reward distribution, per-task statistics, pass@k", _lazy(_POST, "stats_main")),
    "compare": ("two runs on the same tasks, metric by metric", _lazy(_POST, "compare_main")),
    "export": ("SFT messages / DPO pairs in the formats TRL reads", _lazy(_POST, "export_main")),
}


def _help() -> str:
    width = max(len(name) for name in _COMMANDS)
    lines = ["usage: rollgate COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, (what, _) in _COMMANDS.items()]
    lines.append("")
    lines.append("Run `rollgate COMMAND --help` for a command's keys.")
    return "\n".join(lines)


def rollgate_main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in _COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(_COMMANDS)}", file=sys.stderr)
        return 2
    return _COMMANDS[name][1](rest)
