"""How many sequences decode together by default: :func:`default_max_concurrency`.

A CPU decode step reads every weight once whatever the batch, so up to a
knee more rows cost little and the step's tokens per second grows with the
batch; past it the step computes and tokens per second stays flat while each
sequence's pace drops. The knee was read off the measured step-cost curve
(:class:`~oxillama_py.decode.cost.StepCost`, and ``benchmarks/batching.py``):
on the default model with 2 threads a batch of 16 gives 1.19x the tokens per
second of 8 (182 against 153 tok/s), and raw llama.cpp batches agree (171 against
151). So the default is 16 slots, as few as the context allows at
:data:`MIN_SLOT_CELLS` cells a slot: the context is one pool the slots share
(a lone request may use all of it), and more slots than ``n_ctx // 1024``
would mostly preempt each other once their conversations grow.
"""

from __future__ import annotations

__all__ = ["KNEE_SLOTS", "MIN_SLOT_CELLS", "default_max_concurrency"]

KNEE_SLOTS = 16
"""Rows at which the measured step-cost curve stops paying (tokens per second of a step flattens)."""

MIN_SLOT_CELLS = 1024
"""Context cells per slot below which the default takes fewer slots (the pool is shared, not split)."""


def default_max_concurrency(n_ctx: int) -> int:
    """``max_concurrency`` when none is given: :data:`KNEE_SLOTS`, fewer when ``n_ctx`` is small (at least 1).

    16384 cells (the default ``n_ctx``) give 16 slots of 1024; 8192 give 8; 2048 give 2.
    """
    return max(1, min(KNEE_SLOTS, n_ctx // MIN_SLOT_CELLS))
