"""Incremental detokenization that never splits a UTF-8 character across pieces."""

from __future__ import annotations

import codecs

__all__ = ["Detokenizer"]


class Detokenizer:
    """Turns token bytes into text pieces, holding back an incomplete character.

    Invalid bytes are dropped, as llama-cpp-python's ``create_completion`` does, so
    the joined pieces equal its text.
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
