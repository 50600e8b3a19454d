"""The collector's errors, and the exit status each one maps to.

    CollectorError                  any failure that stops a collector command before or between rollouts
    ├── UsageError          (exit 2) a config the command cannot run with (e.g. the output is the input file)
    ├── InputError          (exit 2) the tasks file is missing or a line is not a valid task: ``FILE:LINE: what``
    ├── OutputError         (exit 2) the output path cannot be written (a directory, no permission …)
    ├── UnknownAgentError   (exit 2) the gateway does not serve the requested agent; lists the ones it does
    ├── GatewayRefused      (exit 2) the gateway answers but refuses us (token, TLS client certificate)
    ├── GatewayUnreachable  (exit 1) no gateway answers at the address
    └── StackError          (exit 1) ``rollgate up`` could not start or keep a child service

A failed *rollout* is not an exception: it is data (``error: {stage, kind, …}``) written to the failures sidecar.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CollectorError",
    "GatewayRefused",
    "GatewayUnreachable",
    "InputError",
    "OutputError",
    "StackError",
    "UnknownAgentError",
    "UsageError",
]


class CollectorError(Exception):
    """Base class; ``exit_status`` is what the command exits with after printing ``error: <message>``.

        try:
            status = asyncio.run(collect(cfg))
        except CollectorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = exc.exit_status
    """

    exit_status = 1


class UsageError(CollectorError):
    exit_status = 2


class InputError(CollectorError):
    """The tasks file cannot be used; ``path`` and ``line`` (1-based, None for the whole file) say where."""

    exit_status = 2

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


class OutputError(CollectorError):
    """The output (or its sidecar, manifest, temp file) cannot be written; nothing was sent yet."""

    exit_status = 2

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: cannot write the output: {problem}")


class UnknownAgentError(CollectorError):
    exit_status = 2

    def __init__(self, agent: str, address: str, available: Sequence[str]) -> None:
        self.agent = agent
        self.address = address
        self.available = list(available)
        served = ", ".join(self.available) if self.available else "(none)"
        super().__init__(f"unknown agent {agent!r}: the gateway at {address} serves: {served}")


class GatewayUnreachable(CollectorError):
    exit_status = 1

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        self.detail = detail
        super().__init__(
            f"cannot reach the gateway at {address}: {detail} "
            "(start one with `rollgate up`, or point +gateway=HOST:PORT / ROLLGATE_GATEWAY at a running one)"
        )


class GatewayRefused(CollectorError):
    exit_status = 2

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        self.detail = detail
        super().__init__(
            f"the gateway at {address} refused the collector: {detail} "
            "(set ROLLGATE_TOKEN to the gateway's token; for mutual TLS pass +tls_cert and +tls_key)"
        )


class StackError(CollectorError):
    exit_status = 1
