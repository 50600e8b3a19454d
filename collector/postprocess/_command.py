"""One entry point shape for the small file commands (``pairs``, ``stats``, ``compare``, ``export``).

``--help`` prints the usage line and the config's keys; other arguments parse into the config (both spellings);
a ``CollectorError`` becomes one ``error:`` line and its exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from rollgate._cli import parse_cli, run_cli
from rollgate.collector.errors import CollectorError

__all__ = ["command_entry"]


def command_entry(model: type[BaseModel], usage: str, body: Callable[[Any], int],
           positional: Sequence[str]) -> Callable[[Sequence[str] | None], int]:
    def main(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        if any(a in ("-h", "--help") for a in args):
            lines = [usage, "", "keys:"]
            for name, info in model.model_fields.items():
                lines.append(f"  {name}{' (required)' if info.is_required() else ''}: {info.description or ''}")
            print("\n".join(lines))
            return 0

        def run() -> int:
            cfg = parse_cli(args, model, positional=positional)
            try:
                return body(cfg)
            except CollectorError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return exc.exit_status

        return run_cli(run)

    return main
