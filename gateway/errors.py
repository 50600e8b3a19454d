"""The gateway's exceptions.

A rollout that fails is *data*: the core catches every ``RolloutFailure`` and turns it into a failed
``RolloutOutcome`` (stage, kind, message, http_status, attempts). Only start-up problems escape as exceptions.

::

    GatewayError                     anything the gateway raises on purpose
    ├── ConfigError                  the config file or the environment is unusable (start-up, exit 2)
    └── RolloutFailure               one rollout failed; carries stage/kind/http_status/attempts/url
        ├── InputError               stage=input   the task or params JSON is not usable
        ├── UnknownAgentError        stage=gateway the request names an agent this gateway does not serve
        ├── ModelError               stage=model   the model server failed or answered nonsense
        ├── ToolError                stage=tool    the resources server could not be reached for a tool call
        └── VerifyError              stage=verify  seed_session / verify failed or the reward is not a number

``kind`` says what happened: ``timeout``, ``http_error``, ``connection``, ``invalid_response``,
``invalid_request``, ``unknown_agent``, ``exception``, ``cancelled``. A tool that answers 404 or 500 is *not* a
``ToolError``: the model sees the error text as the tool's output (see ``_agent.py``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GatewayError",
    "InputError",
    "ModelError",
    "RolloutFailure",
    "ToolError",
    "UnknownAgentError",
    "VerifyError",
]


class GatewayError(Exception):
    """Base class of every exception the gateway raises on purpose.

        try:
            server, port = await create_server(load_config("agents.yaml"), "0.0.0.0:50051")
        except GatewayError as exc:
            sys.exit(f"error: {exc}")
    """


class ConfigError(GatewayError):
    """The gateway config cannot be used; the message names the file, the key and what to change.

        try:
            cfg = load_config("agents.yaml")
        except ConfigError as exc:
            print(exc)  # each bad value on its own line: "agents.yaml: agents.a.max_steps: <what is wrong>"
    """


class RolloutFailure(GatewayError):
    """One rollout failed at ``stage`` with ``kind``; ``attempts`` counts the calls made for the failing step.

        exc = RolloutFailure("POST /verify: HTTP 503", kind="http_error", stage="verify", http_status=503)
        exc.stage, exc.kind, exc.transient, exc.retry_cause  # ('verify', 'http_error', True, 'http_5xx')
    """

    stage: str = "gateway"

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        stage: str | None = None,
        http_status: int = 0,
        attempts: int = 1,
        url: str = "",
        retry_after: float | None = None,
        reached: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        if stage is not None:
            self.stage = stage
        self.http_status = http_status
        self.attempts = attempts
        self.url = url
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), when it said so."""
        self.reached = reached
        """False when the request provably never reached the server (connection refused): safe to resend."""

    @property
    def transient(self) -> bool:
        """Worth another attempt: no answer at all, a timeout, 408, 429 or a 5xx. Never a plain 4xx."""
        if self.kind in ("connection", "timeout"):
            return True
        return self.kind == "http_error" and (self.http_status in (408, 429) or self.http_status >= 500)

    @property
    def retry_cause(self) -> str:
        """The retry cause as a metric label from a fixed set: connection, timeout, http_408, http_429, http_5xx."""
        if self.kind in ("connection", "timeout"):
            return self.kind
        if self.http_status in (408, 429):
            return f"http_{self.http_status}"
        return "http_5xx" if self.http_status >= 500 else "other"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(stage={self.stage!r}, kind={self.kind!r}, http_status={self.http_status}, "
            f"attempts={self.attempts}, url={self.url!r}, message={self.message!r})"
        )


class InputError(RolloutFailure):
    """The request's task or params JSON is not usable (kind ``invalid_request``)."""

    stage = "input"


class UnknownAgentError(RolloutFailure):
    """The request names an agent this gateway does not serve (kind ``unknown_agent``)."""

    stage = "gateway"


class ModelError(RolloutFailure):
    """The model server could not be reached, answered an error status, or answered nonsense."""

    stage = "model"


class ToolError(RolloutFailure):
    """The resources server could not be reached for a tool call (an error *answer* is not a ToolError)."""

    stage = "tool"


class VerifyError(RolloutFailure):
    """``/seed_session`` or ``/verify`` failed, or the verifier's reward is not a finite number."""

    stage = "verify"
