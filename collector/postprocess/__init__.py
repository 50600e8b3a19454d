"""Commands over rollouts files, after a run: ``rollgate pairs``, ``stats``, ``compare``, ``export``, ``merge``
and ``reverify``. Each streams its input (one task group in memory at a time) and never touches a gateway.

    from rollgate.collector.postprocess import stats_main
    status = stats_main(["rollouts.jsonl", "+per_task=false"])
"""

from __future__ import annotations

from rollgate.collector.postprocess._compare import compare_main
from rollgate.collector.postprocess._export import export_main
from rollgate.collector.postprocess._merge import merge, merge_main
from rollgate.collector.postprocess._pairs import pairs_main
from rollgate.collector.postprocess._reverify import reverify_main
from rollgate.collector.postprocess._stats import pass_at_k, stats_main

__all__ = ["compare_main", "export_main", "merge", "merge_main", "pairs_main", "pass_at_k", "reverify_main",
           "stats_main"]
