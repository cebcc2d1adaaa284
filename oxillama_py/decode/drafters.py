"""Drafters: cheap guesses of the next tokens that the target model then verifies.

A drafter proposes up to ``k`` tokens after ``tokens`` (the prompt plus the
output accepted so far), deterministically (its ``q`` is one-hot, which keeps
the verification of sampled text exact and reproducible per seed), and is
told afterwards how many were accepted so it can drop what it cached beyond
them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..config import PromptLookup, SamplerConfig
from ..llama import Context, Model
from ..llama.context import BatchEntry
from .distribution import Distribution

__all__ = ["Draft", "Drafter", "ModelDrafter", "PromptLookupDrafter"]


class Draft:
    """Proposed tokens."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)


class Drafter(Protocol):
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


class ModelDrafter:
    """A smaller model (same vocabulary) decodes ``k`` tokens ahead, one at a time, greedily.

    Each sequence has its own ``seq_id`` in the draft context, kept in step
    with its accepted text: what it decoded beyond the accepted prefix is
    removed, what it never decoded is caught up at the next draft.
    :attr:`seconds_per_token` is what one of its single-token decodes took
    lately (the worker's plan counts it as the price of a drafted token).
    """

    def __init__(self, model: Model, context: Context, config: SamplerConfig, seq_id: int = 0) -> None:
        self.model = model
        self.context = context
        self.seq_id = seq_id
        self.dist = Distribution(config.with_overrides(temperature=0.0), model.n_vocab)
        self.n_cached = 0
        self.decode_calls = 0
        self.seconds_per_token = 0.0

    def _decode(self, tokens: Sequence[int], start: int, *, logits: bool = True) -> int:
        """Decode ``tokens`` from position ``start`` in chunks; the batch index of the last row."""
        n_batch = self.context.n_batch
        last = 0
        for offset in range(0, len(tokens), n_batch):
            chunk = tokens[offset : offset + n_batch]
            final = logits and offset + len(chunk) == len(tokens)
            began = time.perf_counter()
            self.context.decode(
                [
                    BatchEntry(t, start + offset + i, self.seq_id, final and i == len(chunk) - 1)
                    for i, t in enumerate(chunk)
                ]
            )
            if len(chunk) == 1:
                spent = time.perf_counter() - began
                self.seconds_per_token = (
                    spent if not self.seconds_per_token else 0.8 * self.seconds_per_token + 0.2 * spent
                )
            self.decode_calls += 1
            last = len(chunk) - 1
        return last

    def prefill(self, tokens: Sequence[int], end: int) -> None:
        if end > self.n_cached:
            self._decode(tokens[self.n_cached : end], self.n_cached, logits=False)
            self.n_cached = end

    def draft(self, tokens: Sequence[int], k: int, generated: Sequence[int]) -> Draft:
        if k <= 0:
            return Draft([])
        pending = list(tokens[self.n_cached :])
        index = self._decode(pending, self.n_cached)
        self.n_cached = len(tokens)
        history = list(generated)
        drafted: list[int] = []
        while True:
            token = self.dist.argmax(self.context.logits_array(index), history)
            drafted.append(token)
            history.append(token)
            if len(drafted) == k or self.model.is_eog(token):
                break
            index = self._decode([token], self.n_cached)
            self.n_cached += 1
        return Draft(drafted)

    def accepted(self, n_tokens: int) -> None:
        if self.n_cached > n_tokens:
            self.context.remove(self.seq_id, n_tokens, -1)
            self.n_cached = n_tokens

    def reset(self) -> None:
        self.context.remove(self.seq_id)
        self.n_cached = 0
