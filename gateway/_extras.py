"""Backend extras merged into a model request body, as NeMo Gym's vLLM model server merges them.

Sources, lowest first: the agent's ``model.extra_body`` and ``model.chat_template_kwargs``, then the request's own
fields, then its ``metadata.extra_body`` / ``metadata.chat_template_kwargs`` (``rollgate._backend_params``). The
body's own fields win over every ``extra_body`` (so an extra never overrides, say, the row's ``temperature``);
``chat_template_kwargs`` are merged key by key: the agent's, the request's, then the metadata's, and replace any
an ``extra_body`` holds. ``tests/compat/test_backend_extras_with_nemo.py`` checks this against NeMo Gym's server.

    body = with_extras(body, params, agent_cfg.model)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollgate._backend_params import metadata_objects
from rollgate.gateway._config import ModelEndpoint
from rollgate.gateway.errors import InputError

__all__ = ["with_extras"]


def with_extras(body: dict[str, Any], params: dict[str, Any], model: ModelEndpoint,
                meta: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``body`` with the extras merged in (a new dict when there are any); ``InputError`` for bad metadata.

    ``meta``: ``params``' metadata extras already read (a rollout reads them once, not once per model call)."""
    if meta is None:
        try:
            meta = metadata_objects(params)
        except ValueError as exc:
            raise InputError(f"responses_create_params: {exc}", kind="invalid_request", attempts=0) from None
    extras = model.extra_body | meta.get("extra_body", {})
    meta_kwargs = meta.get("chat_template_kwargs", {})
    if not extras and not model.chat_template_kwargs and not meta_kwargs:
        return body  # the common case: nothing to merge, nothing copied
    kwargs = model.chat_template_kwargs | (body.get("chat_template_kwargs") or {}) | meta_kwargs
    merged = extras | body
    if kwargs:
        merged["chat_template_kwargs"] = kwargs  # replaces an extra_body's own, as NeMo Gym's body does
    return merged
