"""The collection run (``ng_collect_rollouts`` / ``rollgate collect``): tasks in, rollouts out.

Reads the tasks file, streams rollouts to the gateway(s) over gRPC with flow control and reconnects, and writes
rows in input order, whole groups only, with a manifest and a ``.failures`` sidecar. Every result also goes to a
completion journal (``<output>.journal``, ``_journal``) as it arrives, so ``+resume=true`` skips every rollout
an earlier run finished, even those an interrupted or killed run had not written yet.

    from rollgate.collector.run import collect_main
    status = collect_main(["+agent_name=my_agent", "+input_jsonl_fpath=t.jsonl", "+output_jsonl_fpath=o.jsonl"])
"""

from __future__ import annotations

from rollgate.collector.run._collect import collect, collect_main
from rollgate.collector.run._config import CollectConfig

__all__ = ["CollectConfig", "collect", "collect_main"]
