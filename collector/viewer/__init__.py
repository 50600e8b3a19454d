"""The rollouts viewer (``ng_viewer`` / ``rollgate view``): a local web page over a rollouts JSONL file.

The server indexes line offsets once and reads rows on demand, so large files open quickly and stay on disk.

    from rollgate.collector.viewer import viewer_main
    status = viewer_main(["+input_jsonl_fpath=rollouts.jsonl", "+port=0"])
"""

from __future__ import annotations

from rollgate.collector.viewer._app import Viewer, create_app
from rollgate.collector.viewer._index import RolloutIndex
from rollgate.collector.viewer._main import ViewerConfig, serve, viewer_main

__all__ = ["RolloutIndex", "Viewer", "ViewerConfig", "create_app", "serve", "viewer_main"]
