"""Hosting a verifier: what ``rollgate verifier serve`` is made of, for tests and for embedding in a process.

    server = await start_server(create_app("exact_match"), "127.0.0.1", 0)   # port 0: any free port
    print(server.url)
    await server.stop()

``load_target`` turns ``module:attr`` or a built-in name into a ``LoadedVerifier``; ``VerifierCore`` runs it
(sessions, verify, tools) without HTTP; ``create_app`` puts the HTTP face on it; ``Reloader`` swaps edited code
in without a restart (``serve --reload``); ``main`` is the command line.
"""

from __future__ import annotations

from rollgate.verifier._app import create_app
from rollgate.verifier._core import VerifierCore
from rollgate.verifier._loader import LoadedVerifier, load_target
from rollgate.verifier._reload import Reloader
from rollgate.verifier._server import RunningServer, main, start_server
from rollgate.verifier.errors import VerifierError, VerifierLoadError

__all__ = ["LoadedVerifier", "Reloader", "RunningServer", "VerifierCore", "VerifierError", "VerifierLoadError",
           "create_app", "load_target", "main", "start_server"]
