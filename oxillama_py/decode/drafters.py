"""Drafters: cheap guesses of the next tokens that the target model then verifies.

A drafter proposes up to ``k`` tokens after ``tokens`` (the prompt plus the
output accepted so far) together with the probabilities it drew them from
(``None`` for a deterministic drafter, whose ``q`` is one-hot), and is told
afterwards how many were accepted so it can drop what it cached beyond them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..config import PromptLookup, SamplerConfig
from ..llama import Context, Model
from ..llama.context import BatchEntry
from .distribution import Distribution, Floats, sample_from

__all__ = ["Draft", "Drafter", "ModelDrafter", "PromptLookupDrafter"]


class Draft:
    """Proposed tokens and, for a sampling drafter, the distribution each was drawn from."""

    __slots__ = ("probs", "tokens")

    def __init__(self, tokens: list[int], probs: list[Floats] | None = None) -> None:
        self.tokens = tokens
        self.probs = probs


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
    """A smaller model (same vocabulary) decodes ``k`` tokens ahead, one at a time.

    It keeps its own KV cache in step with the accepted text: what it decoded
    beyond the accepted prefix is removed, what it never decoded is caught up
    at the next draft.
    """

    def __init__(self, model: Model, context: Context, config: SamplerConfig, rng: np.random.Generator) -> None:
        self.model = model
        self.context = context
        self.dist = Distribution(config, model.n_vocab)
        self.rng = rng
        self.n_cached = 0
        self.decode_calls = 0

    def _row(self, index: int) -> npt.NDArray[np.float32]:
        return self.context.logits_array(index)

    def _decode(self, tokens: Sequence[int], start: int, *, logits: bool = True) -> int:
        """Decode ``tokens`` from position ``start`` in chunks; the batch index of the last row."""
        n_batch = self.context.n_batch
        last = 0
        for offset in range(0, len(tokens), n_batch):
            chunk = tokens[offset : offset + n_batch]
            final = logits and offset + len(chunk) == len(tokens)
            self.context.decode(
                [BatchEntry(t, start + offset + i, 0, final and i == len(chunk) - 1) for i, t in enumerate(chunk)]
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
        probs: list[Floats] = []
        while True:
            row = self._row(index)
            if self.dist.greedy:
                token = self.dist.argmax(row, history)
            else:
                q = self.dist.probs(row, history)
                token = sample_from(q, self.rng)
                probs.append(q)
            drafted.append(token)
            history.append(token)
            if len(drafted) == k or self.model.is_eog(token):
                break
            index = self._decode([token], self.n_cached)
            self.n_cached += 1
        return Draft(drafted, None if self.dist.greedy else probs)

    def accepted(self, n_tokens: int) -> None:
        if self.n_cached > n_tokens:
            self.context.remove(0, n_tokens, -1)
            self.n_cached = n_tokens

    def reset(self) -> None:
        self.context.remove(0)
        self.n_cached = 0
