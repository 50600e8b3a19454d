"""The local stack: ``rollgate up`` (verifier(s) + gateway, and the embedded model when no model URL is given)
and ``rollgate demo`` (the whole thing on the embedded model, start to finish).

Each service runs as a child process; the stack waits for its ready line and stops all of them together.

    from rollgate.collector.stack import up_main
    status = up_main(["--config", "examples/stack.yaml"])
"""

from __future__ import annotations

from rollgate.collector.stack._demo import demo_main
from rollgate.collector.stack._up import up_main

__all__ = ["demo_main", "up_main"]
