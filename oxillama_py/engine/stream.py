"""``AsyncEngine.stream()``'s result: the pieces of one generation, pulled by its consumer.

It is an async iterator *and* an async context manager, and holds no task
group or cancel scope of its own (PEP 789): each ``__anext__`` pumps the
generation from the consumer's own task. So a plain ``async for ... break``
is safe: the dropped stream cancels its request at once (the worker frees the
slot at its next step) and its subscribers are finalised, as cancelled, when
the worker acknowledges. ``async with engine.stream(...) as pieces:`` makes
that end explicit and waits for it, as httpx's ``client.stream()`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio.lowlevel

from ..bus.pieces import PieceBuffer
from .call import Call

__all__ = ["TextStream"]


class TextStream:
    """Text pieces as they are decoded; joined, they equal ``generate()``'s text."""

    def __init__(self, prepare: Callable[[PieceBuffer], Awaitable[Call]], buffer: PieceBuffer | None = None) -> None:
        self._prepare = prepare
        self._buffer = PieceBuffer() if buffer is None else buffer
        self._call: Call | None = None
        self._closed = False

    async def _start(self) -> Call:
        if self._call is None:
            call = await self._prepare(self._buffer)
            call.generation.start()  # no await between preparing the display and starting
            self._call = call
        return self._call

    async def __aenter__(self) -> TextStream:
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> TextStream:
        return self

    async def __anext__(self) -> str:
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled scope ends the loop, buffered pieces or not
        pieces = self._buffer.pieces
        if self._closed:
            raise StopAsyncIteration
        call = await self._start()
        while not pieces:
            if not await call.generation.pump():
                await self._end(raise_errors=True)
                raise StopAsyncIteration
        return pieces.popleft()

    async def aclose(self) -> None:
        """Stop the generation if it still runs, and wait until it has ended and is finalised."""
        await self._end(raise_errors=False)

    async def _end(self, *, raise_errors: bool) -> None:
        if self._closed:
            return
        self._closed = True
        call = self._call
        if call is None:
            return
        await call.generation.aclose()
        if raise_errors:
            call.results()

    def __del__(self) -> None:
        # Dropped unfinished (``async for ... break``): cancel now, finalise on acknowledgement.
        if not self._closed and self._call is not None:
            self._closed = True
            self._call.generation.abandon()
