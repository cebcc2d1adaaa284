"""The subscriber behind ``stream()``: forwards text pieces to an async iterator."""

from __future__ import annotations

from anyio.streams.memory import MemoryObjectSendStream

from .events import Finished, Step
from .subscriber import Outcome, Subscriber

__all__ = ["PieceForwarder"]


class PieceForwarder(Subscriber):
    """Sends every non-empty piece, in order, to ``sink``; closes it when finalised."""

    def __init__(self, sink: MemoryObjectSendStream[str]) -> None:
        self._sink = sink

    async def on_step(self, step: Step) -> None:
        for token in step.tokens:
            if token.piece:
                await self._sink.send(token.piece)

    async def on_finished(self, finished: Finished) -> None:
        if finished.tail:
            await self._sink.send(finished.tail)

    def finalise(self, outcome: Outcome) -> None:
        self._sink.close()
