"""The collector room: the user's CLI (``ng_collect_rollouts``, ``ng_viewer``, ``rollgate``).

Rooms of its own, by concern: ``run`` (the collection run), ``postprocess`` (commands over rollouts files),
``stack`` (the local stack), ``viewer`` (the browser view); ``rollgate_main`` is the front door that hands each
command to its room.

    from rollgate.collector import collect_main
    status = collect_main(["+agent_name=my_agent", "+input_jsonl_fpath=t.jsonl", "+output_jsonl_fpath=o.jsonl"])
"""

from __future__ import annotations

from rollgate.collector._frontdoor import rollgate_main, viewer_main
from rollgate.collector.errors import CollectorError
from rollgate.collector.run import CollectConfig, collect, collect_main

__all__ = ["CollectConfig", "CollectorError", "collect", "collect_main", "rollgate_main", "viewer_main"]
