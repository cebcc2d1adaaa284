"""The prefix cache's cells, saved and put back (snapshots); run on the decode thread between steps.

What a snapshot file holds of the cache is :class:`SavedPrefix`; writing and
reading the file is :mod:`oxillama_py.snapshot`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import GenerateError, OxiLlamaError, SnapshotError
from ..llama import Context
from .ids import SeqIdPool
from .prefix_cache import ALIGN, MIN_REUSE, PrefixCache, common_prefix

__all__ = ["SavedPrefix", "restore_prefixes", "save_prefixes"]


@dataclass(frozen=True)
class SavedPrefix:
    """One prefix-cache entry: its tokens and llama.cpp's state of its cells."""

    tokens: npt.NDArray[np.int32]
    pinned: bool
    state: bytes


def save_prefixes(context: Context, cache: PrefixCache, ids: SeqIdPool) -> list[SavedPrefix]:
    """The cached prefixes worth restoring, cut to a multiple of :data:`ALIGN` tokens (so a restore keeps the grid).

    Left out: entries decoded beside other sequences (off the grid: a lone
    request would not reuse them as they are), and entries whose tokens start
    another saved entry (that one serves their hits; a restore would not share
    their cells, so both might not fit). The cut is copied to a spare sequence
    id first (the cells are shared, not copied): the running cache is not changed.
    """
    kept = [
        (index, seq_id, tokens[: len(tokens) - len(tokens) % ALIGN], pinned)
        for index, (seq_id, tokens, pinned, on_grid) in enumerate(cache.kept())
        if on_grid and len(tokens) >= MIN_REUSE
    ]
    chosen: list[tuple[int, int, npt.NDArray[np.int32], bool]] = []
    for index, seq_id, tokens, pinned in sorted(kept, key=lambda item: -len(item[2])):  # the longest first
        cover = next((i for i, c in enumerate(chosen) if common_prefix(c[2], tokens) == len(tokens)), None)
        if cover is None:
            chosen.append((index, seq_id, tokens, pinned))
        elif pinned:  # the entry that holds its tokens keeps its pin
            chosen[cover] = (*chosen[cover][:3], True)
    chosen.sort(key=lambda item: item[0])  # the order their cells were placed in
    if not chosen:
        return []
    lease = ids.spare()
    if lease is None:
        raise GenerateError(
            f"no sequence id is free to save the cache from ({ids.n_spare} embedding texts are decoding): try again"
        )
    spare = lease.seq_id
    saved = []
    try:
        for _, seq_id, tokens, pinned in chosen:
            context.remove(spare)
            llama_cpp.llama_memory_seq_cp(context.memory, seq_id, spare, 0, len(tokens))
            saved.append(SavedPrefix(np.array(tokens, dtype=np.int32), pinned, context.sequence_state(spare)))
    finally:
        context.remove(spare)
        lease.release()
    return saved


def restore_prefixes(context: Context, cache: PrefixCache, prefixes: list[SavedPrefix]) -> int:
    """Put saved prefixes back into the cache (a fresh, idle engine); how many fitted."""
    restored = 0
    for prefix in prefixes:
        load = partial(context.load_sequence_state, state=prefix.state)
        try:
            restored += cache.adopt(prefix.tokens, pinned=prefix.pinned, load=load)
        except (OxiLlamaError, ValueError) as exc:
            raise SnapshotError(f"corrupt snapshot: a cached prefix does not restore ({exc})") from exc
    return restored
