"""The target's next-token distribution in numpy, as llama.cpp's sampler chain forms it.

Speculative sampling needs the probabilities themselves (to accept a draft with
probability ``min(1, p/q)`` and to resample from the residual), which a
llama.cpp sampler chain never exposes. So the chain of
:class:`~oxillama_py.llama.Sampler` is mirrored here step by step, in llama.cpp's
order: logit bias, penalties (repetition, frequency, presence), top-k, top-p,
min-p, temperature, softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..config import SamplerConfig

__all__ = ["Distribution", "sample_at"]

Floats = npt.NDArray[np.float64]


class Distribution:
    """Turns one row of logits into the probabilities the sampler chain would draw from."""

    def __init__(self, config: SamplerConfig, n_vocab: int) -> None:
        if config.mirostat:
            raise ValueError("speculative decoding supports temperature/top-k/top-p/min-p sampling, not mirostat")
        self.config = config
        self.n_vocab = n_vocab
        biased = [(token, bias) for token, bias in config.logit_bias if bias != 0.0]
        self._bias_ids = np.asarray([t for t, _ in biased], dtype=np.int64)
        self._bias = np.asarray([b for _, b in biased], dtype=np.float32)

    @property
    def greedy(self) -> bool:
        return self.config.temperature == 0.0

    def _penalised(self, logits: npt.NDArray[np.float32], history: Sequence[int]) -> npt.NDArray[np.float32]:
        """The row after the logit bias and llama.cpp's penalties over the last ``repeat_last_n`` tokens."""
        cfg = self.config
        penalise = cfg.penalised and len(history) > 0
        if not penalise and not self._bias_ids.size:
            return logits
        out = np.array(logits, dtype=np.float32, copy=True)
        if self._bias_ids.size:
            out[self._bias_ids] += self._bias
        if penalise:
            window, counts = np.unique(np.asarray(history[-cfg.repeat_last_n :], dtype=np.int64), return_counts=True)
            values = out[window]
            values = np.where(
                values <= 0, values * np.float32(cfg.repeat_penalty), values / np.float32(cfg.repeat_penalty)
            )
            freq, present = np.float32(cfg.frequency_penalty), np.float32(cfg.presence_penalty)
            out[window] = values - (counts.astype(np.float32) * freq + present)
        return out

    def argmax(self, logits: npt.NDArray[np.float32], history: Sequence[int]) -> int:
        """The greedy choice (the first maximum, as llama.cpp's greedy sampler takes)."""
        return int(np.argmax(self._penalised(logits, history)))

    def probs(self, logits: npt.NDArray[np.float32], history: Sequence[int]) -> Floats:
        """Dense probabilities over the vocabulary; zero outside the kept candidates."""
        cfg = self.config
        values = self._penalised(logits, history).astype(np.float64)
        ids = np.arange(values.size)
        if 0 < cfg.top_k < values.size:
            keep = np.argpartition(-values, cfg.top_k - 1)[: cfg.top_k]
            ids, values = ids[keep], values[keep]
        order = np.argsort(-values, kind="stable")
        ids, values = ids[order], values[order]
        if cfg.top_p < 1.0:
            p = _softmax(values)
            cut = int(np.searchsorted(np.cumsum(p), cfg.top_p)) + 1  # the token crossing top_p stays
            ids, values = ids[:cut], values[:cut]
        if cfg.min_p > 0.0:
            kept = values >= values[0] + np.log(cfg.min_p)
            ids, values = ids[kept], values[kept]
        dense = np.zeros(self.n_vocab, dtype=np.float64)
        temperature = cfg.temperature if cfg.temperature > 0 else 1.0
        dense[ids] = _softmax(values / temperature)
        return dense


def _softmax(values: Floats) -> Floats:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()  # type: ignore[no-any-return]


def sample_at(probs: Floats, u: float) -> int:
    """The token whose share of the cumulative weights holds ``u`` in [0, 1) (inverse transform sampling)."""
    cumulative = np.cumsum(probs)
    total = cumulative[-1]
    if not total > 0:
        raise ValueError("cannot sample from an all-zero distribution")
    index = int(np.searchsorted(cumulative, u * total, side="right"))
    return min(index, probs.size - 1)
