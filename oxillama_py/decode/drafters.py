"""Drafters: cheap guesses of the next tokens that the target model then verifies.

This module holds the protocol and the drafter that needs no model (prompt
lookup); a draft model's drafter is in :mod:`.draft_model`.

A drafter proposes up to ``k`` tokens after ``tokens`` (the prompt plus the
output accepted so far), deterministically (its ``q`` is one-hot, which keeps
the verification of sampled text exact and reproducible per seed), and is
told afterwards how many were accepted so it can drop what it cached beyond
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..config import PromptLookup

__all__ = ["NO_DRAFT", "Draft", "Drafter", "PromptLookupDrafter"]


class Draft:
    """Proposed tokens."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)


NO_DRAFT = Draft([])


class Drafter(Protocol):
    seconds_per_token: float
    """What drafting one token cost lately (0: free, or not measured)."""

    def draft(self, tokens: Sequence[int], k: int, generated: Sequence[int]) -> Draft: ...

    def prefill(self, tokens: Sequence[int], end: int) -> None:
        """The target has prefilled ``tokens[:end]``: keep up, so drafting later has little to catch up."""

    def accepted(self, n_tokens: int) -> None:
        """Only the first ``n_tokens`` of ``tokens + draft`` are now real."""

    def reset(self) -> None:
        """A new sequence starts."""


class PromptLookupDrafter:
    """Drafts the continuation of the latest earlier occurrence of the last n-gram.

    Tries n-grams from ``max_ngram`` down to one token; no match, no draft (the
    step is then plain decoding).
    """

    seconds_per_token = 0.0

    def __init__(self, lookup: PromptLookup) -> None:
        self.max_ngram = lookup.max_ngram
        self.num_pred_tokens = lookup.num_pred_tokens

    def draft(self, tokens: Sequence[int], k: int, generated: Sequence[int]) -> Draft:
        k = min(k, self.num_pred_tokens)
        if k <= 0 or len(tokens) < 2:
            return Draft([])
        arr = np.asarray(tokens, dtype=np.int64)
        for n in range(min(self.max_ngram, len(arr) - 1), 0, -1):
            pattern = arr[-n:]
            # Windows that start before the tail and leave at least one token after them.
            windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return Draft([int(t) for t in arr[start : start + k]])
        return Draft([])

    def prefill(self, tokens: Sequence[int], end: int) -> None:
        pass

    def accepted(self, n_tokens: int) -> None:
        pass

    def reset(self) -> None:
        pass
