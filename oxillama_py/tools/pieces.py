"""The subscriber behind ``stream_chat(..., tools=...)``: the answer's text, read out of the tool format."""

from __future__ import annotations

from collections import defaultdict

from ..bus.events import Finished, Step
from ..bus.pieces import PieceBuffer
from .parse import AnswerReader, TextDelta

__all__ = ["TextOfAnswer"]


class TextOfAnswer(PieceBuffer):
    """Keeps only the text deltas of each sequence's answer (a call yields no text)."""

    def __init__(self) -> None:
        super().__init__()
        self._readers: defaultdict[int, AnswerReader] = defaultdict(AnswerReader)

    def _read(self, sequence: int, piece: str) -> None:
        for event in self._readers[sequence].feed(piece):
            if isinstance(event, TextDelta):
                self.pieces.append(event.text)

    async def on_step(self, step: Step) -> None:
        for token in step.tokens:
            if token.piece:
                self._read(token.sequence, token.piece)

    async def on_finished(self, finished: Finished) -> None:
        if finished.tail:
            self._read(finished.sequence, finished.tail)
