"""The typed config of ``ng_collect_rollouts`` / ``rollgate collect``.

Every field can be given as ``+key=value`` or ``--key value``; ``+responses_create_params.X=V`` sets one
request parameter (the highest-precedence layer). Bad values fail before anything is read or sent.

NeMo Gym's current spellings (``gym eval run``'s flags, ``nemo_gym/cli/main.py``) work too, meaning what they mean
there: ``--agent/-a``, ``--input/-i``, ``--output/-o``, ``--num-repeats``, ``--concurrency`` (at most this many
rollouts at once: ``num_samples_in_parallel``), ``--temperature``, ``--top-p``, ``--max-output-tokens`` (request
parameters, as ``+responses_create_params.X``), ``--resume`` (a switch), ``--limit``; and the older
``+resume_from_cache``.

    cfg = parse_cli(["+agent_name=my_agent", "+input_jsonl_fpath=t.jsonl", "+output_jsonl_fpath=o.jsonl"],
                    CollectConfig, aliases=COLLECT_ALIASES, short=COLLECT_SHORT)
    # the same config: ["-a", "my_agent", "-i", "t.jsonl", "-o", "o.jsonl"]
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollgate._backend_params import metadata_objects

__all__ = ["COLLECT_ALIASES", "COLLECT_SHORT", "DEFAULT_GATEWAY", "CollectConfig"]

DEFAULT_GATEWAY = "127.0.0.1:50051"
# NeMo Gym's spellings: the documented +resume_from_cache, and `gym eval run`'s flags (dashes read as underscores).
COLLECT_ALIASES = {
    "resume_from_cache": "resume",
    "agent": "agent_name",
    "input": "input_jsonl_fpath",
    "output": "output_jsonl_fpath",
    "concurrency": "num_samples_in_parallel",
    "temperature": "responses_create_params.temperature",
    "top_p": "responses_create_params.top_p",
    "max_output_tokens": "responses_create_params.max_output_tokens",
}
COLLECT_SHORT = {"a": "agent_name", "i": "input_jsonl_fpath", "o": "output_jsonl_fpath"}


def _default_gateway() -> str:
    return os.environ.get("ROLLGATE_GATEWAY") or DEFAULT_GATEWAY


class CollectConfig(BaseModel):
    """What one collection run does: which agent, tasks in, rollouts out, and how hard to push the gateway.

        cfg = CollectConfig(agent_name="my_agent", input_jsonl_fpath="tasks.jsonl",
                            output_jsonl_fpath="rollouts.jsonl", num_repeats=4)
        status = asyncio.run(collect(cfg))  # the exit status
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    agent_name: str = Field(min_length=1)
    """The agent (as the gateway names it) that runs every rollout, e.g. ``my_agent``."""

    input_jsonl_fpath: str = Field(min_length=1)
    """Tasks in: JSONL, one object per line, each with an object ``responses_create_params``."""

    output_jsonl_fpath: str = Field(min_length=1)
    """Rollouts out: JSONL in input order; failed groups go to ``<output>.failures``."""

    responses_create_params: dict[str, Any] = Field(default_factory=dict)
    """Overrides merged over each row's own params (CLI wins), e.g. ``+responses_create_params.temperature=0.2``."""

    num_samples_in_parallel: int = Field(16, ge=1)
    """At most this many rollouts run at once, in total; as many again wait at the gateway, ready to start."""

    num_repeats: int = Field(1, ge=1)
    """Rollouts per task, written consecutively (``aabbcc``); with a ``seed``, repeat r is sent ``seed + r``."""

    limit: int | None = Field(None, ge=1)
    """Take only the first N tasks (before repeating); ``null`` means all."""

    gateway: str = Field(default_factory=_default_gateway, min_length=1)
    """``HOST:PORT``, several comma-separated (one stream each), or ``dns:///name:port`` (client-side round-robin
    over every address the name resolves to). Default: env ``ROLLGATE_GATEWAY``, else ``127.0.0.1:50051``."""

    deadline_s: float = Field(1800.0, gt=0)
    """Whole-rollout budget in seconds sent with each request; a straggler cannot hold the run open longer."""

    resume: bool = False
    """Keep what the output already holds and re-run only missing and failed rollouts (alias ``resume_from_cache``)."""

    training: bool = False
    """Training mode for this run (as an agent's ``training: true``): every model call's output carries its token
    ids and log-probs (``prompt_token_ids``, ``generation_token_ids``, ``generation_log_probs``), token-exactness
    across a rollout's calls is checked; needs a vLLM-compatible backend on ``chat_completions``."""

    keep_backups: int | None = Field(None, ge=1)
    """A re-run moves the previous output and its sidecars into one ``<output>.<UTC stamp>.bak/`` folder; keep
    only the newest N such folders of this output (default: keep every one)."""

    num_shards: int = Field(1, ge=1)
    """Split the tasks into this many deterministic shards (task index modulo ``num_shards``); ``rollgate merge``
    joins the shard outputs back into input order."""

    shard_index: int = Field(0, ge=0)
    """Which shard this run collects, ``0 <= shard_index < num_shards`` (a Kubernetes Indexed Job's index)."""

    max_failure_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Exit 0 as long as at most this fraction of the rollouts failed (they still go to ``<output>.failures``)."""

    reconnect_timeout_s: float = Field(300.0, ge=0)
    """How long to keep reconnecting to a gateway whose stream broke before its rollouts count as failed."""

    tls_ca: str | None = None
    """PEM file of the CA that signed the gateway's certificate; setting it (or ``tls_cert``) switches to TLS."""

    tls_cert: str | None = None
    """PEM client certificate for mutual TLS (with ``tls_key``)."""

    tls_key: str | None = None
    """PEM private key of ``tls_cert``."""

    @model_validator(mode="after")
    def _check(self) -> CollectConfig:
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index must be below num_shards ({self.num_shards}), got {self.shard_index}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (mutual TLS needs both)")
        metadata_objects(self.responses_create_params)  # bad backend extras stop the run, not each rollout
        return self
