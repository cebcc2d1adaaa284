"""First come, first served: requests start in the order they came, on every backend.

A call's place in the engine's waiting line is taken when it is made, not
when its tokenizing thread ends or its loop resumes it (the server's side:
``tests/test_server_order.py``). Observed through public results only: with
one slot, requests run one after another, so the order they finish in is the
order they started in.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from oxillama_py import AsyncEngine, EngineConfig
from oxillama_py.bus import take_order

pytestmark = pytest.mark.anyio

BLOCKER = "The history of the city begins"  # greedy, it runs to max_tokens
ORDERED = ["1, 2, 3, 4,", "a, b, c, d,", "Monday, Tuesday, Wednesday,", "January, February, March,", "A, B, C, D,"]


async def test_calls_start_in_the_order_they_were_made(model_path: Path) -> None:
    """Prepared in order, started in reverse while the one slot is busy: they still start in order."""
    async with AsyncEngine(EngineConfig(model_path, n_ctx=512, max_concurrency=1)) as engine:
        finished: list[int] = []
        blocker = await engine.prepare([BLOCKER], 24, temperature=0)
        # Longest prompt first: its tokenizing is the slowest, and it must still keep its place.
        calls = [
            await engine.prepare([prompt * (len(ORDERED) - i)], 2, temperature=0) for i, prompt in enumerate(ORDERED)
        ]

        async def run(index: int) -> None:
            await calls[index].run()
            finished.append(index)

        async with anyio.create_task_group() as group:
            group.start_soon(blocker.run)
            await anyio.sleep(0.05)
            for index in reversed(range(len(calls))):
                group.start_soon(run, index)
                await anyio.sleep(0.01)
        assert finished == list(range(len(ORDERED)))


async def test_an_order_taken_earlier_goes_first(model_path: Path) -> None:
    """``order=`` from ``take_order()`` is a place in the line; a bad one is refused before any work."""
    async with AsyncEngine(EngineConfig(model_path, n_ctx=512, max_concurrency=1)) as engine:
        early = take_order()
        finished: list[str] = []
        blocker = await engine.prepare([BLOCKER], 24, temperature=0)
        late = await engine.prepare([ORDERED[0]], 2, temperature=0)
        first = await engine.prepare_chat([{"role": "user", "content": "Hi"}], 2, temperature=0, order=early)

        async def run(name: str, call: object) -> None:
            await call.run()  # type: ignore[attr-defined]
            finished.append(name)

        async with anyio.create_task_group() as group:
            group.start_soon(blocker.run)
            await anyio.sleep(0.05)
            group.start_soon(run, "late", late)
            await anyio.sleep(0.01)
            group.start_soon(run, "early", first)
        assert finished == ["early", "late"]
        for bad in (-1, 1.5, True, "3"):
            with pytest.raises(TypeError, match="order must be an int"):
                await engine.prepare(["x"], 2, order=bad)  # type: ignore[arg-type]
