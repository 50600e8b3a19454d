"""Shared test helpers: system tools and environments that some tests need.

A test that needs a system tool (jq, shuf …) or a prepared environment (NeMo Gym's venv for ``tests/compat/``)
skips with a clear reason on a machine without it, but under ``CI=true`` that skip is a failure: ``.ci/run``
installs every such tool.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``; under CI=true fail it instead (CI must have installed what it needs)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Return the tool's path; skip (or fail under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (.ci/run installs it)")
    return path
