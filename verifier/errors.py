"""Everything the verifier room raises, and what each failure looks like on the wire.

    VerifierError                    base of all of them
    ├── VerifierLoadError            the target cannot be loaded (bad spec, import failed, wrong kind of object);
    │                                raised before a server binds, so `serve` exits 2 with the message
    └── RequestError                 one request failed; ``kind`` and ``status`` become
        │                            ``{"error": {"kind", "message"}}`` with that HTTP status
        ├── InvalidRequest           400 invalid_request   body is not JSON / not an object / lacks a field
        ├── InvalidSession           400 invalid_session   a handler needs a session and none was seeded
        ├── RequestTooLarge          413 too_large         the body is over the server's size limit
        ├── NotFound                 404 not_found         no such route
        ├── UnknownTool              404 unknown_tool      ``POST /<name>`` for a tool the server lacks
        ├── InvalidTask              500 invalid_task      the task lacks what the verifier needs (user code
        │                                                  may raise it)
        ├── VerifyFailed             500 verify_exception  ``verify()`` raised; the type and message go to the client,
        │                                                  the stack trace only to the log
        ├── ToolFailed               500 tool_exception    a tool raised (same rule)
        ├── SessionHookFailed        500 session_exception ``seed_session``/``close_session`` raised (same rule)
        ├── InvalidReward            500 invalid_reward    the reward is missing, not a number, a bool, NaN or inf
        ├── InvalidResult            500 invalid_result    verify/tool returned something that is not JSON
        ├── JudgeFailed              502 judge_error       llm_judge: the judge model failed after retries, or
        │                                                  its answer had no score
        ├── VerifierBusy             503 busy              no free verify thread/worker within the time limit
        │                                                  (the verify never ran; a retry later may succeed)
        └── VerifyTimeout            504 timeout           a sync ``verify()`` ran past ``--verify-timeout-s``
                                                           (its worker process, if it had one, was killed)

The 5xx kinds are the verifier's or the user code's fault, so the gateway records them as stage ``verify`` (or
``tool``) failures; 4xx kinds are the caller's. The gateway retries 5xx answers, except ``timeout``: the same
answer would only tie up another worker for as long again (it records kind ``timeout``, stage ``verify``).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "InvalidRequest",
    "InvalidResult",
    "InvalidReward",
    "InvalidSession",
    "InvalidTask",
    "JudgeFailed",
    "NotFound",
    "RequestError",
    "RequestTooLarge",
    "SessionHookFailed",
    "ToolFailed",
    "UnknownTool",
    "VerifierBusy",
    "VerifierError",
    "VerifierLoadError",
    "VerifyFailed",
    "VerifyTimeout",
]


class VerifierError(Exception):
    """Base of every error the verifier room raises.

        try:
            loaded = load_target(spec)
        except VerifierError as exc:  # a VerifierLoadError here; a RequestError from a core call
            print(f"error: {exc}")
    """


class VerifierLoadError(VerifierError):
    """The target (``module:attr`` or a built-in name) cannot become a verifier.

    ``spec`` is the target as given; the message says what is wrong and, where it can, how to fix it.

        try:
            load_target("no_such_module:verify")
        except VerifierLoadError as exc:
            print(exc.spec, exc)  # no_such_module:verify, then why it cannot load
    """

    def __init__(self, message: str, *, spec: str = "") -> None:
        super().__init__(message)
        self.spec = spec


class RequestError(VerifierError):
    """One request failed; ``kind`` and ``status`` are what the client sees."""

    kind: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        # Context (tool name, session id, exception type) for logs; never sent to the client beyond ``message``.
        self.context = context

    def to_wire(self) -> dict[str, Any]:
        return {"error": {"kind": self.kind, "message": self.message}}


class InvalidRequest(RequestError):
    kind = "invalid_request"
    status = 400


class InvalidSession(RequestError):
    kind = "invalid_session"
    status = 400


class RequestTooLarge(RequestError):
    kind = "too_large"
    status = 413


class NotFound(RequestError):
    kind = "not_found"
    status = 404


class UnknownTool(RequestError):
    kind = "unknown_tool"
    status = 404


class InvalidTask(RequestError):
    """Raise it from ``verify()`` when the task lacks a field the verifier needs (answered as 500 invalid_task).

        if "expected_answer" not in task:
            raise InvalidTask("this verifier needs the task field 'expected_answer'")
    """

    kind = "invalid_task"
    status = 500


class VerifyFailed(RequestError):
    kind = "verify_exception"
    status = 500


class ToolFailed(RequestError):
    kind = "tool_exception"
    status = 500


class SessionHookFailed(RequestError):
    kind = "session_exception"
    status = 500


class InvalidReward(RequestError):
    kind = "invalid_reward"
    status = 500


class InvalidResult(RequestError):
    kind = "invalid_result"
    status = 500


class JudgeFailed(RequestError):
    """The ``llm_judge`` model could not be reached after retries, refused, or answered without a score."""

    kind = "judge_error"
    status = 502


class VerifierBusy(RequestError):
    """Every verify thread (or worker process) stayed busy for the whole time limit: this call never ran."""

    kind = "busy"
    status = 503


class VerifyTimeout(RequestError):
    """A sync ``verify()`` ran past the server's ``--verify-timeout-s``; only its own rollout fails.

    A built-in with its own time bound (``regex``) raises it too when that bound runs out.
    """

    kind = "timeout"
    status = 504
