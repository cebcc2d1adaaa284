"""The subscriber behind ``stream()``: keeps the pieces until the consumer takes them."""

from __future__ import annotations

from collections import deque

from .events import Finished, Step
from .subscriber import Subscriber

__all__ = ["PieceBuffer"]


class PieceBuffer(Subscriber):
    """Every non-empty piece, in order (the end's tail included)."""

    def __init__(self) -> None:
        self.pieces: deque[str] = deque()

    async def on_step(self, step: Step) -> None:
        self.pieces.extend(token.piece for token in step.tokens if token.piece)

    async def on_finished(self, finished: Finished) -> None:
        if finished.tail:
            self.pieces.append(finished.tail)
