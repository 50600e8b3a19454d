"""The verifier version sent as ``X-Verifier-Version`` and recorded in every rollout.

Precedence: a declared version (class attribute ``version`` on a ``ResourcesServer``, or a module-level
``__verifier_version__``), else ``sha256:`` + the first 12 hex digits of a hash over the source files that define
the target. Built-ins are ``NAME@PACKAGE_VERSION``. Editing the user's file therefore changes the version, which
is what makes a reload visible in the rollouts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from collections.abc import Iterable
from pathlib import Path

from rollgate.verifier.errors import VerifierLoadError

__all__ = ["builtin_version", "declared_version", "package_version", "source_version"]

# Header values must be plain visible ASCII; keep them short enough for logs and the rollout record.
_HEADER_SAFE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,127}$")


def package_version() -> str:
    try:
        return importlib.metadata.version("rollgate")
    except importlib.metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0+unknown"


def builtin_version(name: str) -> str:
    return f"{name}@{package_version()}"


def declared_version(value: object, where: str) -> str:
    """Check a user-declared version; it must fit in an HTTP header."""
    if not isinstance(value, str) or not _HEADER_SAFE.match(value):
        raise VerifierLoadError(
            f"{where} must be a non-empty string of printable ASCII (at most 128 characters), got {value!r}"
        )
    return value


def source_version(files: Iterable[Path]) -> str:
    """Hash of the given source files (their names and bytes), in a stable order."""
    digest = hashlib.sha256()
    for path in sorted({p.resolve() for p in files}):
        digest.update(path.name.encode())
        digest.update(b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:  # a file that vanished after import: the name alone still distinguishes it
            digest.update(b"<unreadable>")
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:12]
