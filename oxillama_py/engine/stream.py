"""The pump behind ``AsyncEngine.stream()`` and ``Engine.stream()``: the pieces of one generation, pulled.

It is an async iterator *and* an async context manager, and holds no task
group or cancel scope of its own (PEP 789): each ``__anext__`` pumps the
generation from the consumer's own task, so the async generator
``AsyncEngine.stream()`` may yield its pieces and be closed from any task.
Dropped unfinished, it cancels its request at once (the worker frees the
slot at its next step) and its subscribers are finalised, as cancelled, when
the worker acknowledges; ``aclose()`` (or leaving ``async with``) waits for
that end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import anyio.lowlevel

from ..bus.pieces import PieceBuffer
from .call import Call

__all__ = ["Pump", "TextStream"]


class Pump(Protocol):
    """What the blocking facade drives on its loop: :class:`TextStream`, or a wrapped engine's stream."""

    async def __aenter__(self) -> Pump: ...
    async def __aexit__(self, *exc_info: object) -> None: ...
    def __aiter__(self) -> AsyncIterator[str]: ...


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
