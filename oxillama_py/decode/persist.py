"""The prefix cache's cells, saved and put back (snapshots); run on the decode thread between steps."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import GenerateError
from .prefix_cache import ALIGN, MIN_REUSE

if TYPE_CHECKING:
    from .worker import DecodeWorker

__all__ = ["SavedPrefix", "restore_prefixes", "save_prefixes"]


@dataclass(frozen=True)
class SavedPrefix:
    """One prefix-cache entry: its tokens and llama.cpp's state of its cells."""

    tokens: npt.NDArray[np.int32]
    pinned: bool
    state: bytes


def save_prefixes(worker: DecodeWorker) -> list[SavedPrefix]:
    """Every cached prefix, cut to a multiple of :data:`ALIGN` tokens (so that a restore keeps the grid).

    The cut is copied to a spare sequence id first (the cells are shared, not
    copied), so the running cache is not changed.
    """
    context, cache = worker.context, worker.cache
    assert context is not None and cache is not None
    if not worker.embed_ids:
        raise GenerateError("no sequence id is free to save the cache from (embeddings are running): try again")
    spare = worker.embed_ids.pop()
    saved = []
    try:
        for seq_id, tokens, pinned in cache.kept():
            n = len(tokens) - len(tokens) % ALIGN
            if n < MIN_REUSE:
                continue
            context.remove(spare)
            llama_cpp.llama_memory_seq_cp(context.memory, seq_id, spare, 0, n)
            saved.append(SavedPrefix(np.array(tokens[:n], dtype=np.int32), pinned, context.sequence_state(spare)))
    finally:
        context.remove(spare)
        worker.embed_ids.append(spare)
    return saved


def restore_prefixes(worker: DecodeWorker, prefixes: list[SavedPrefix]) -> int:
    """Put saved prefixes back into the cache (a fresh, idle engine); how many fitted."""
    context, cache = worker.context, worker.cache
    assert context is not None and cache is not None
    restored = 0
    for prefix in prefixes:
        load = partial(context.load_sequence_state, state=prefix.state)
        restored += cache.adopt(prefix.tokens, pinned=prefix.pinned, load=load)
    return restored
