"""A count of open things that can be awaited to reach zero (a drain waits on it)."""

from __future__ import annotations

import asyncio


class Tally:
    """How many are open now; ``wait_zero`` returns once none is."""

    def __init__(self) -> None:
        self.count = 0
        self._zero = asyncio.Event()
        self._zero.set()

    def enter(self) -> None:
        self.count += 1
        self._zero.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._zero.set()

    async def wait_zero(self) -> None:
        await self._zero.wait()
