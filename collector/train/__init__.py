"""Python API for trainers: rollout groups streamed from a gateway as they complete (``GroupStream``).

    from rollgate.collector.train import GroupStream
"""

from __future__ import annotations

from rollgate.collector.train._groups import Group, GroupFailure, GroupStream, StreamStats

__all__ = ["Group", "GroupFailure", "GroupStream", "StreamStats"]
