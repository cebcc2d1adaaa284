"""The context's sequence ids: one pool that leases them to slots, cache entries and spare work.

llama.cpp allows 256 ``seq_id`` values per context, fixed when it is created.
They are split once: a slot per sequence decoded together, ids for the prefix
cache's entries, and a few spare ids for work beside the generations (texts
being embedded or scored, a snapshot's copy, the step-cost measurement). Every
holder takes a :class:`Lease` and gives it back; nothing else hands out ids.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LLAMA_MAX_SEQ", "SPARE_IDS", "Lease", "SeqIdPool"]

LLAMA_MAX_SEQ = 256
"""Sequence ids a llama.cpp context allows."""
SPARE_IDS = 8
"""Ids kept for work beside the generations: that many texts are embedded together."""


class _Ids:
    """One kind's free ids: taken from the front (``fifo``) or the back, given back at the back."""

    __slots__ = ("fifo", "free", "size")

    def __init__(self, ids: Iterable[int], *, fifo: bool) -> None:
        self.free = list(ids)
        self.size = len(self.free)
        self.fifo = fifo

    def take(self) -> Lease | None:
        if not self.free:
            return None
        return Lease(self, self.free.pop(0) if self.fifo else self.free.pop())


class Lease:
    """One ``seq_id`` held until :meth:`release`; releasing twice gives it back once."""

    __slots__ = ("_ids", "seq_id")

    def __init__(self, ids: _Ids, seq_id: int) -> None:
        self._ids: _Ids | None = ids
        self.seq_id = seq_id

    @property
    def held(self) -> bool:
        return self._ids is not None

    def release(self, *, unused: bool = False) -> None:
        """Give the id back; an ``unused`` one goes back where it was taken, so the next taker gets it again."""
        ids, self._ids = self._ids, None
        if ids is None:
            return
        if unused:
            ids.free.insert(0 if ids.fifo else len(ids.free), self.seq_id)
        else:
            ids.free.append(self.seq_id)

    def __repr__(self) -> str:
        return f"Lease({self.seq_id}{'' if self.held else ', released'})"


class SeqIdPool:
    """Slots ``0..n_slots-1`` (lowest free first), then the cache's ids (highest first), then the spares (lowest first).

    The orders are the ones the worker has always used, so a given workload
    gets the same ids (and the same cell layout) as before the pool existed.
    """

    def __init__(self, n_slots: int, n_cache: int, n_spare: int) -> None:
        first_spare = n_slots + n_cache
        self._slots = _Ids(range(n_slots), fifo=True)
        self._cache = _Ids(range(n_slots, first_spare), fifo=False)
        self._spare = _Ids(reversed(range(first_spare, first_spare + n_spare)), fifo=False)
        self.size = first_spare + n_spare
        """``n_seq_max`` of the context."""

    @classmethod
    def sized(cls, n_slots: int, cache_ids: int, spare_ids: int = SPARE_IDS) -> SeqIdPool:
        """Slots first; spares and cache ids from what llama.cpp's limit leaves, spares before the cache."""
        n_spare = max(0, min(spare_ids, LLAMA_MAX_SEQ - n_slots))
        return cls(n_slots, max(0, min(cache_ids, LLAMA_MAX_SEQ - n_slots - n_spare)), n_spare)

    @property
    def n_slots(self) -> int:
        return self._slots.size

    @property
    def n_cache(self) -> int:
        return self._cache.size

    @property
    def n_spare(self) -> int:
        return self._spare.size

    def free_slots(self) -> int:
        return len(self._slots.free)

    def free_spares(self) -> int:
        return len(self._spare.free)

    def free_cache_ids(self) -> int:
        return len(self._cache.free)

    def slot(self) -> Lease | None:
        """A generation slot, or ``None`` when every slot decodes."""
        return self._slots.take()

    def cache_id(self) -> Lease | None:
        """An id for a prefix-cache entry, or ``None`` when every entry has one."""
        return self._cache.take()

    def spare(self) -> Lease | None:
        """An id for work beside the generations, or ``None`` while all are in use."""
        return self._spare.take()
