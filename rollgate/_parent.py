"""Children of ``rollgate up`` end with it, whatever ends it.

``rollgate up`` starts its services (verifiers, the gateway, the embedded model) in sessions of their own, so a
terminal's Ctrl-C reaches only ``up``, which then stops them in order. That also means a SIGKILL or an OOM kill of
``up`` would leave them running, holding their ports. So ``up`` names itself in ``ROLLGATE_PARENT_PID`` and each
child watches: once its parent is gone (it has been re-parented), it sends itself SIGTERM and drains as on any
stop. A thread that polls is used rather than Linux's ``PR_SET_PDEATHSIG``, which fires when the *thread* that
started the child exits (``up`` starts the embedded model from a worker thread) and exists only on Linux.

    watch_parent()          # in a server's main: a no-op unless ROLLGATE_PARENT_PID is set
    env = child_env()       # in the parent: os.environ plus ROLLGATE_PARENT_PID
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["PARENT_PID_ENV", "child_env", "watch_parent"]

PARENT_PID_ENV = "ROLLGATE_PARENT_PID"
_POLL_S = 0.5


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with this process named as the parent to watch."""
    return {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}


def watch_parent() -> bool:
    """Start the watcher when ``ROLLGATE_PARENT_PID`` names this process's parent; True when it started."""
    raw = os.environ.pop(PARENT_PID_ENV, None)  # popped: this process's own children watch it, not its parent
    try:
        parent = int(raw) if raw else 0
    except ValueError:
        return False
    if parent <= 1:
        return False
    if os.getppid() != parent:  # the parent died before we got here
        os.kill(os.getpid(), signal.SIGTERM)
        return True

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(_POLL_S):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="rollgate-parent-watch", daemon=True).start()
    return True
