"""What the KV cells of a sequence are, as the scheduler and the prefix cache talk about them.

Pure data, no llama.cpp: the lineage of a sequence's cells (:class:`Run`),
a ``seq_id`` whose cells may be lent (:class:`Holder`), and what a lender
gives (:class:`Reuse`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Holder", "Reuse", "Run", "Tokens", "common_prefix", "distinct_cells", "truncate"]

Tokens = npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class Run:
    """Cells ``[start, end)`` of a sequence that were computed as one ``block``.

    A sequence that shares another's cells inherits its runs; cells of one block
    are the same cells in every sequence that holds them, so counting blocks
    counts the cells the KV cache really holds.
    """

    block: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Holder:
    """A ``seq_id`` whose cells a new sequence may share: its tokens with KV, and their lineage."""

    seq_id: int
    tokens: Tokens
    runs: tuple[Run, ...]
    on_grid: bool


@dataclass(frozen=True, slots=True)
class Reuse:
    """What a new sequence takes: the first ``n_tokens`` cells of ``source``."""

    source: int
    n_tokens: int
    runs: tuple[Run, ...]
    on_grid: bool


def common_prefix(a: Tokens, b: Tokens) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def truncate(runs: Iterable[Run], n: int) -> tuple[Run, ...]:
    """The lineage of the first ``n`` cells."""
    return tuple(Run(r.block, r.start, min(r.end, n)) for r in runs if r.start < n)


def distinct_cells(runs: Iterable[Run]) -> int:
    """Distinct cells of several holders: cells of one block are shared, from its start."""
    spans: dict[int, tuple[int, int]] = {}
    for run in runs:
        start, end = spans.get(run.block, (run.start, run.end))
        spans[run.block] = (start, max(end, run.end))
    return sum(end - start for start, end in spans.values())
