"""Log-probabilities from a row of logits: the model's raw distribution over the whole vocabulary.

The values are the log-softmax of the raw logits, before any sampler,
penalty, bias or grammar touches them (as OpenAI and llama.cpp report them).
The log-sum-exp is the stable one: float32 exponentials of the logits minus
their maximum, summed in float64. Only requests that ask pay for it (about a
millisecond per row over Gemma's 262k tokens, more with top alternatives).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ..results import TokenLogprob, TopLogprob
from .model import Model

__all__ = ["log_normaliser", "token_logprob", "top_tokens"]

Row = npt.NDArray[np.float32]


def log_normaliser(row: Row) -> float:
    """``log(sum(exp(row)))``, computed without overflow."""
    peak = float(row.max())
    return peak + math.log(float(np.exp(row - np.float32(peak)).sum(dtype=np.float64)))


def top_tokens(row: Row, k: int) -> npt.NDArray[np.intp]:
    """The ``k`` highest-scoring token ids, best first (ties: the lower id first)."""
    k = min(k, row.size)
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    best = np.argpartition(row, row.size - k)[row.size - k :]
    return best[np.lexsort((best, -row[best]))]


def token_logprob(model: Model, row: Row, token: int, k: int) -> TokenLogprob:
    """``token``'s log-probability under ``row``, with the ``k`` most likely tokens there."""
    norm = log_normaliser(row)
    top = []
    for best in top_tokens(row, k).tolist():
        text, data = _text(model, best)
        top.append(TopLogprob(best, text, data, float(row[best]) - norm))
    text, data = _text(model, token)
    return TokenLogprob(token, text, data, float(row[token]) - norm, tuple(top))


def _text(model: Model, token: int) -> tuple[str, bytes]:
    data = model.piece(token, special=True)
    return data.decode("utf-8", errors="replace"), data
