"""The admin token of a local stack, handed from ``rollgate up`` to ``rollgate gateway set`` through a file.

A gateway refuses its admin API (``GatewayAdmin.SetRoute``) unless it was started with a token. ``rollgate up``
starts its gateway with a fresh random token and writes it to a file that only the user can read
(``<state dir>/admin-<host>_<port>.token``, folder mode 0700, file mode 0600); ``rollgate gateway set`` reads it
when ``ROLLGATE_ADMIN_TOKEN`` is not set and the gateway address is that stack's. The file is removed when the
stack stops. The state dir is ``$ROLLGATE_STATE_DIR``, else ``$XDG_RUNTIME_DIR/rollgate``, else
``~/.rollgate``.

    path = write_token("127.0.0.1:50051", token)      # rollgate up
    token = read_token("127.0.0.1:50051")             # rollgate gateway set (None when there is no such file)
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

__all__ = ["read_token", "remove_token", "state_dir", "token_path", "write_token"]

_LOOPBACK = {"localhost": "127.0.0.1", "[::1]": "::1", "ip6-localhost": "::1"}


def state_dir() -> Path:
    if explicit := os.environ.get("ROLLGATE_STATE_DIR"):
        return Path(explicit)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "rollgate"
    return Path.home() / ".rollgate"


def _key(address: str) -> str:
    host, sep, port = address.strip().rpartition(":")
    if not sep:
        host, port = address.strip(), ""
    host = _LOOPBACK.get(host.lower(), host.strip("[]"))
    return re.sub(r"[^A-Za-z0-9.\-]", "_", f"{host}_{port}")


def token_path(address: str) -> Path:
    """Where the token of the gateway at ``address`` (``HOST:PORT``) is kept."""
    return state_dir() / f"admin-{_key(address)}.token"


def write_token(address: str, token: str) -> Path:
    """Write ``token`` for ``address``, readable by the user alone; return the file's path."""
    folder = state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = token_path(address)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of another mode keeps its mode through O_TRUNC
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_token(address: str) -> str | None:
    """The token kept for ``address``, or None when there is none, or the file is not the user's alone."""
    path = token_path(address)
    try:
        info = path.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None  # someone else could have written (or read) it: never send it
    token = path.read_text(encoding="utf-8").strip()
    return token or None


def remove_token(address: str) -> None:
    try:
        token_path(address).unlink()
    except FileNotFoundError:
        pass
