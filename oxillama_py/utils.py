"""Sampling one token from a logits row in numpy: upstream's ``decode_from_logits``, for custom decoding loops.

Pairs with :meth:`~oxillama_py.AsyncEngine.logits` (a row of last-token
logits). The engines sample inside llama.cpp's sampler chain; this is for
notebooks and experiments that want the same filters on a row they hold.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .checks import check_int, check_number

__all__ = ["decode_from_logits"]


def decode_from_logits(
    logits: npt.ArrayLike,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> int:
    """A token id from one row of logits, after temperature, top-k and top-p.

    Without ``seed`` the most probable token that survives the filters is
    returned (upstream's behaviour: the same row always gives the same id).
    With a ``seed`` the token is drawn from the filtered distribution with
    numpy's generator of that seed, so it is random but reproducible.
    ``temperature`` 0 means greedy. A row that is not one-dimensional and
    non-empty, or holds NaN, is a ``ValueError``.
    """
    row = np.asarray(logits, dtype=np.float64)
    if row.ndim != 1 or row.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {row.shape}")
    if np.isnan(row).any():
        raise ValueError("logits hold NaN")
    check_number("temperature", temperature, low=0)
    check_int("top_k", top_k, low=0)
    check_number("top_p", top_p, low=0, high=1, low_open=True)
    if seed is not None:
        check_int("seed", seed, low=0)
    if seed is None or temperature == 0:
        probs = _filtered(row, max(float(temperature), 1e-6), top_k, top_p)
        return int(np.argmax(probs))
    probs = _filtered(row, float(temperature), top_k, top_p)
    return int(np.random.default_rng(seed).choice(row.size, p=probs))


def _filtered(row: npt.NDArray[np.float64], temperature: float, top_k: int, top_p: float) -> npt.NDArray[np.float64]:
    """The softmax of ``row / temperature`` over the tokens top-k and top-p keep (the rest 0)."""
    scaled = row / temperature
    if 0 < top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= kth, scaled, -math.inf)
    finite = np.isfinite(scaled)
    if not finite.any():  # all -inf: every token is as likely
        return np.full(row.size, 1.0 / row.size)
    shifted = np.where(finite, scaled - scaled[finite].max(), -math.inf)
    probs = np.exp(shifted)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        keep = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1
        mask = np.zeros(row.size, dtype=bool)
        mask[order[:keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs
