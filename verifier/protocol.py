"""Typed models of the NeMo Gym resources-server protocol, for clients, user code and tests.

They mirror NeMo Gym's ``BaseVerifyRequest`` / ``BaseVerifyResponse`` (extra fields allowed: a task's own fields
ride along and are echoed back). The server itself does not parse ``/verify`` bodies through them: that path
stays raw bytes + orjson for speed (see ``_app.py``); these models are the documented shape, checked against
real NeMo Gym bodies in the tests.

    req = VerifyRequest.model_validate(row)              # responses_create_params, response, task fields
    ans = VerifyResponse.model_validate(answer_json)     # the same fields plus reward (and metrics)

``AggregateMetricsRequest`` / ``AggregateMetrics`` mirror NeMo Gym's models of ``POST /aggregate_metrics``, which
NeMo Gym's collector posts once at the end of a run (the answer is what ``rollgate.verifier._aggregate`` computes
unless the server has its own ``aggregate_metrics``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AggregateMetrics", "AggregateMetricsRequest", "ErrorBody", "ErrorDetail", "SessionRequest",
           "SessionResponse", "VerifyRequest", "VerifyResponse"]


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


class AggregateMetricsRequest(BaseModel):
    """``POST /aggregate_metrics`` body: the run's verify answers, each with ``_ng_task_index``,
    ``_ng_rollout_index`` (absent: 0) and ``reward`` (``response`` cut down to ``usage`` by NeMo Gym's collector).

        AggregateMetricsRequest.model_validate({"verify_responses": rows})
    """

    verify_responses: list[dict[str, Any]]
    """One object per rollout."""


class AggregateMetrics(BaseModel):
    """``POST /aggregate_metrics`` answer: flat string keys, ready to log.

        AggregateMetrics.model_validate(answer_json).key_metrics   # {"mean/reward": 0.5, ...}
    """

    group_level_metrics: list[dict[str, Any]] = Field(default_factory=list)
    """Per task (``_ng_task_index``): ``mean/…``, ``max/…``, ``min/…``, ``median/…``, ``std/…``, rollout counts and
    each rollout's own numbers (``rollout_infos``)."""
    agent_metrics: dict[str, Any] = Field(default_factory=dict)
    """The same statistics over every rollout, ``num_repeats``, and with several repeats ``…_across_repeats/…``."""
    key_metrics: dict[str, Any] = Field(default_factory=dict)
    """The headline numbers: the ``mean/…`` entries of ``agent_metrics`` (and ``coverage/…`` when rows were
    masked)."""
    perf_summary: dict[str, Any] | None = None
    """Token, turn and latency statistics of the rows' ``ng_perf``; null when no row carried one."""
    repeat_level_metrics: list[dict[str, Any]] = Field(default_factory=list)
    """Per repeat (``_ng_rollout_index``), when there are several: each metric's statistics over the tasks."""
