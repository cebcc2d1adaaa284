"""The event loop never blocks on llama.cpp."""

from __future__ import annotations

import time

import anyio
import pytest

from oxillama_py import AsyncEngine

pytestmark = pytest.mark.anyio


async def test_loop_ticks_every_10ms_while_generating(aengine: AsyncEngine) -> None:
    ticks: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        result = await aengine.complete("Once upon a time", 64, temperature=0, progress=lambda e: None)
        done.set()
    assert result.completion_tokens == 64
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 50
    assert max(gaps) < 0.1, f"the loop stalled for {max(gaps) * 1000:.0f} ms"
