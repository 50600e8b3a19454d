"""Typed models of the NeMo Gym resources-server protocol, for clients, user code and tests.

They mirror NeMo Gym's ``BaseVerifyRequest`` / ``BaseVerifyResponse`` (extra fields allowed: a task's own fields
ride along and are echoed back). The server itself does not parse ``/verify`` bodies through them: that path
stays raw bytes + orjson for speed (see ``_app.py``); these models are the documented shape, checked against
real NeMo Gym bodies in the tests.

    req = VerifyRequest.model_validate(row)              # responses_create_params, response, task fields
    ans = VerifyResponse.model_validate(answer_json)     # the same fields plus reward (and metrics)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ErrorBody", "ErrorDetail", "SessionRequest", "SessionResponse", "VerifyRequest", "VerifyResponse"]


class VerifyRequest(BaseModel):
    """``POST /verify`` body: the request sent to the model, its Responses API answer, and the task's fields."""

    model_config = ConfigDict(extra="allow")

    responses_create_params: dict[str, Any]
    """The OpenAI Responses API request as sent (``input``, ``tools``, sampling parameters …)."""
    response: dict[str, Any]
    """The Responses API object the model produced (``output`` holds messages, function calls, reasoning)."""


class VerifyResponse(VerifyRequest):
    """``POST /verify`` answer: the request echoed, plus ``reward`` and any metrics (``accuracy`` …)."""

    reward: float = Field(allow_inf_nan=False)
    """The reward: a finite number."""


class SessionRequest(BaseModel):
    """``POST /seed_session`` / ``POST /close_session`` body (may be empty; extra fields allowed)."""

    model_config = ConfigDict(extra="allow")


class SessionResponse(BaseModel):
    """``POST /seed_session`` / ``POST /close_session`` answer (``{}``); the session travels as a cookie."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    kind: str
    """A fixed vocabulary (``verifier.errors``): verify_exception, invalid_reward, unknown_tool …"""
    message: str
    """What went wrong, without a stack trace."""


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of a rollgate verifier: ``{"error": {"kind", "message"}}``."""

    error: ErrorDetail
