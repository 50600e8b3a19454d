"""The reorder buffer's two bounds: a count of rollouts and the bytes of finished rows held behind a straggler."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rollgate.collector.run._collect import reorder_window
from rollgate.collector.run._writer import GroupWriter


def _row(i: int) -> dict[str, object]:
    return {"i": i, "_rollout": {"task_index": i}}


async def test_byte_cap_holds_back_new_rollouts_but_never_the_head(tmp_path: Path) -> None:
    writer = GroupWriter(tmp_path / "out.jsonl", num_repeats=1, window=100, max_buffered_bytes=10)
    try:
        for seq in (1, 2, 3):  # finished behind a straggler (seq 0), 24 bytes held
            writer.add(seq, _row(seq), True, size=8)
        assert writer.buffered_bytes == 24
        waiting = asyncio.create_task(writer.wait_for_room(5))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "over the byte cap, a new rollout waits"
        await asyncio.wait_for(writer.wait_for_room(0), 1)  # the straggler itself is always admitted
        writer.add(0, _row(0), True, size=8)
        await asyncio.wait_for(waiting, 5)
        assert writer.buffered_bytes == 0 and writer.written == 4
    finally:
        writer.close()
    assert [line.count('"i"') for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [1, 1, 1, 1]


async def test_count_bound_still_applies(tmp_path: Path) -> None:
    writer = GroupWriter(tmp_path / "out.jsonl", num_repeats=2, window=4)
    try:
        waiting = asyncio.create_task(writer.wait_for_room(4))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        for seq in (0, 1):
            writer.add(seq, _row(seq), True)
        await asyncio.wait_for(waiting, 5)
    finally:
        writer.close()


def test_window_leaves_room_for_a_long_tail() -> None:
    # One rollout ten times slower than the median must not idle the other slots: many times the parallelism.
    assert reorder_window(200, 1) >= 20 * 200
    assert reorder_window(1, 8) >= 16
