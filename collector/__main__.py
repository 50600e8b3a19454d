"""``python -m rollgate.collector …`` is ``rollgate …``."""

from __future__ import annotations

from rollgate.collector._frontdoor import rollgate_main

raise SystemExit(rollgate_main())
