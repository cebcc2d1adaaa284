"""The prefix cache's cells, saved and put back (snapshots); run on the decode thread between steps."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import GenerateError, OxiLlamaError, SnapshotError
from .prefix_cache import ALIGN, MIN_REUSE, common_prefix

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
    """The cached prefixes worth restoring, cut to a multiple of :data:`ALIGN` tokens (so a restore keeps the grid).

    Left out: entries decoded beside other sequences (off the grid: a lone
    request would not reuse them as they are), and entries whose tokens start
    another saved entry (that one serves their hits; a restore would not share
    their cells, so both might not fit). The cut is copied to a spare sequence
    id first (the cells are shared, not copied): the running cache is not changed.
    """
    context, cache = worker.context, worker.cache
    assert context is not None and cache is not None
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
    if not worker.embed_ids:
        raise GenerateError("no sequence id is free to save the cache from (8 embedding texts are decoding): try again")
    spare = worker.embed_ids.pop()
    saved = []
    try:
        for _, seq_id, tokens, pinned in chosen:
            context.remove(spare)
            llama_cpp.llama_memory_seq_cp(context.memory, seq_id, spare, 0, len(tokens))
            saved.append(SavedPrefix(np.array(tokens, dtype=np.int32), pinned, context.sequence_state(spare)))
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
        try:
            restored += cache.adopt(prefix.tokens, pinned=prefix.pinned, load=load)
        except (OxiLlamaError, ValueError) as exc:
            raise SnapshotError(f"corrupt snapshot: a cached prefix does not restore ({exc})") from exc
    return restored
