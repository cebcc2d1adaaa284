"""The prefix cache: KV cells of earlier sequences, lent to new ones that start the same way.

A finished (or cancelled) sequence's cells stay in the context under a cache
``seq_id`` of their own. A new request whose prompt starts with the tokens of a
cached entry, or of a sequence still decoding, gets those cells added to its
slot (``llama_memory_seq_cp``: with a unified KV cache this shares the cells,
nothing is copied) and prefills only the rest.

Sliding-window attention (Gemma 3: 512-token window on most layers). llama.cpp
keeps a second KV cache for the SWA layers. Even at full size (``swa_full``) it
overwrites a cell that the window has left behind (its position is ``n_swa`` or
more below its sequence's last one) when it is the next cell it searches, and
then purges that sequence's positions below it, so each sequence keeps a
contiguous range ``[pos_min, pos_max]`` there. A suffix decoded after position
``L`` reads the SWA cells of ``[L - n_swa, L)``, so a reuse of ``L`` tokens is
correct only if ``llama_memory_seq_pos_min(source) <= L - n_swa``; otherwise
it falls back to a full prefill. Cells held by two sequences are never
overwritten, so what is shared stays whole.

Bit-exactness. llama.cpp's attention sums over KV cells in SIMD accumulators
by cell index, so a sequence computes the same numbers as on a fresh context
only if each cell's index is congruent to its position modulo 64: measured
here (AVX-512), shifting a whole sequence by 16 cells keeps every logit, by 1,
8 or 37 cells moves them by up to 2.9; a hole of 64 cells inside a sequence
keeps them, of 9, 32 or 96 does not. llama.cpp places new cells from the first
free one, which is right after the entry stored last (the *tail*). So a lone
request (the worker otherwise idle) either continues the tail where its tokens
end, or cuts the tail exactly where its reuse ends (all that is left of the
tail is then shared with it), or cuts the tail back to a multiple of
:data:`ALIGN` and reuses a multiple of it. Every block of cells other than
the tail's therefore ends on the 64-cell grid, and holes left by evictions
are on it too. The rest of the prompt must also go through the same kernels
row by row as in a cold prefill: measured, it does when it starts at a
multiple of :data:`ROWS` tokens and has at least :data:`MIN_SUFFIX` (a 7-token
rest moves logits by 1.75; 8, 9, 10, 13 and 16 keep them). Cells that were
generated one token at a time (a chat's earlier answers) are not what a
prefill computes, so reusing them is correct but not bit-exact.
Sequences decoded together interleave their cells, off the grid: their
entries are marked so and dropped when a request finds the worker idle, and
the tail is cut back to the grid before other sequences join a lone one.

Only the decode thread uses this module; :meth:`PrefixCache.snapshot` is an
immutable object that other threads may read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import llama_cpp

from ..stats import PrefixCacheStats
from .cells import Holder, Reuse, Run, Tokens, common_prefix, distinct_cells, truncate
from .ids import LLAMA_MAX_SEQ, Lease, SeqIdPool

__all__ = ["ALIGN", "MIN_REUSE", "MIN_SUFFIX", "ROWS", "Holder", "PrefixCache", "Reuse", "common_prefix"]

ALIGN = 64
"""Cells are kept and lent in multiples of this (the grid of llama.cpp's SIMD sums)."""
ROWS = 4
"""llama.cpp's batched matmul kernels take prompt rows four at a time (the rest one by one)."""
MIN_SUFFIX = 8
"""A lone request prefills at least this many tokens: shorter batches take another kernel path."""
MIN_REUSE = ALIGN
"""Shorter shared prefixes are prefilled again: they save little and would add an entry."""
MAX_ENTRIES = 64
"""Cache ``seq_id`` values beyond the slots (llama.cpp allows 256 sequences in all)."""


@dataclass(slots=True, eq=False)
class _Entry:
    lease: Lease
    tokens: Tokens
    runs: tuple[Run, ...]
    pinned: bool
    used: int
    on_grid: bool
    reused: int = 0  # the most tokens a hit took from this entry
    prev: _Entry | None = None  # the tail this entry's own cells were placed after

    @property
    def seq_id(self) -> int:
        return self.lease.seq_id


def _covers(big: tuple[Run, ...], small: tuple[Run, ...]) -> bool:
    ends = {r.block: r.end for r in big}
    return all(ends.get(r.block, -1) >= r.end for r in small)


class PrefixCache:
    """LRU entries of KV cells, at most ``capacity`` distinct cells, each under its own ``seq_id``."""

    def __init__(self, memory: object, n_swa: int, capacity: int, ids: SeqIdPool) -> None:
        self._memory = memory
        self.n_swa = n_swa
        self.capacity = capacity if ids.n_cache > 0 else 0
        self._ids = ids
        self._entries: list[_Entry] = []
        self._tick = itertools.count(1)
        self._blocks = itertools.count(1)
        self._lookups = self._hits = self._hit_tokens = self._prompt_tokens = 0
        self._evictions = self._window_misses = 0
        self._tail: _Entry | None = None  # the entry whose cells end where the free cells start
        self._after_tail: _Entry | None = None  # the tail when the sequence now decoding was placed
        self.snapshot = PrefixCacheStats(capacity=self.capacity)

    @staticmethod
    def ids_for(n_slots: int, capacity: int) -> int:
        """How many ``seq_id`` values the cache needs beside ``n_slots``."""
        return min(MAX_ENTRIES, LLAMA_MAX_SEQ - n_slots) if capacity > 0 else 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def new_block(self) -> int:
        """A lineage id for cells a sequence computes itself."""
        return next(self._blocks)

    # -- lookups ---------------------------------------------------------------------
    def pinned_runs(self) -> list[Run]:
        """The lineage of the pinned entries' cells: the cells the KV budget does not count as free."""
        return [r for e in self._entries if e.pinned for r in e.runs]

    def holders(self) -> list[Holder]:
        return [Holder(e.seq_id, e.tokens, e.runs, e.on_grid) for e in self._entries]

    def lookup(self, prompt: Tokens, others: Iterable[Holder], *, lone: bool, count: bool = True) -> Reuse | None:
        """The longest correct reuse for ``prompt`` among the entries and ``others``.

        At least one prompt token is always left to decode (its logits give the
        first new token). A ``lone`` request (the worker is otherwise idle) is
        placed on the cell grid, so that it computes what a fresh engine would
        (see :meth:`_place`); other requests take the longest reuse as it is,
        after the tail is cut back to the grid (:meth:`_seal`).
        """
        best: Reuse | None = None
        best_cut: int | None = None
        window_miss = False
        tail = self._tail
        if not lone:
            self._seal()
        if self.enabled:
            limit = len(prompt) - (MIN_SUFFIX if lone else 1)
            for holder in itertools.chain(self.holders(), others):
                n = min(common_prefix(prompt, holder.tokens), limit)
                cut = None
                if lone:
                    n, cut = self._place(n - n % ROWS, from_tail=tail is not None and holder.seq_id == tail.seq_id)
                if n < MIN_REUSE or (best is not None and n <= best.n_tokens):
                    continue
                if not self._window_intact(holder.seq_id, n):
                    window_miss = True
                    continue
                best, best_cut = Reuse(holder.seq_id, n, truncate(holder.runs, n), holder.on_grid), cut
        if lone and best is None:
            best_cut = self._place(0, from_tail=False)[1]  # a cold prompt starts at position 0
        if count:
            self._lookups += 1
            self._prompt_tokens += len(prompt)
            if best is not None:
                self._hits += 1
                self._hit_tokens += best.n_tokens
            elif window_miss:
                self._window_misses += 1
        if best is not None:
            for entry in self._entries:
                if entry.seq_id == best.source:
                    entry.used = next(self._tick)
                    entry.reused = max(entry.reused, best.n_tokens)
        if best_cut is not None:
            self._cut_tail(best_cut)
        # The new sequence allocates after the tail; it becomes the tail once stored.
        self._after_tail, self._tail = (self._tail if lone else None), None
        self._publish()
        return best

    def _place(self, n: int, *, from_tail: bool) -> tuple[int, int | None]:
        """Where a lone reuse of ``n`` tokens ends, and where the tail is cut (``None``: not cut).

        Every block of cells but the tail's ends on the grid. So the new
        sequence either continues the tail where its tokens end, or cuts it
        exactly where the reuse ends (all that remains of it is then shared),
        or cuts it back to the grid and reuses a multiple of :data:`ALIGN`
        tokens (up to 63 of them are prefilled again).
        """
        tail = self._tail
        if tail is None:
            return n - n % ALIGN, None
        end = len(tail.tokens)
        own = tail.runs[-1].start if tail.runs else end
        if from_tail and n == end:
            return n, None
        free_to_cut = not tail.pinned
        if from_tail and free_to_cut and own <= n and tail.reused <= n:
            return n, n
        grid = end - end % ALIGN
        if grid == end:
            return n - n % ALIGN, None
        if free_to_cut and own <= grid and tail.reused <= grid and grid >= MIN_REUSE:
            return n - n % ALIGN, grid
        residue = end % ALIGN  # the tail cannot be cut: start the suffix at its residue
        return n - (n - residue) % ALIGN, None

    def _seal(self) -> None:
        """Before other sequences join: cut the tail back to the grid, so every kept block ends on it."""
        if self._tail is not None:
            cut = self._place(0, from_tail=False)[1]
            if cut is not None:
                self._cut_tail(cut)

    def _cut_tail(self, n: int) -> None:
        tail = self._tail
        assert tail is not None
        if n < len(tail.tokens):
            llama_cpp.llama_memory_seq_rm(self._memory, tail.seq_id, n, -1)
            tail.tokens = tail.tokens[:n]
            tail.runs = truncate(tail.runs, n)

    def _window_intact(self, seq_id: int, n: int) -> bool:
        """Whether ``seq_id`` still holds the SWA cells a suffix after ``n`` tokens reads."""
        if self.n_swa <= 0:
            return True
        pos_min = int(llama_cpp.llama_memory_seq_pos_min(self._memory, seq_id))
        return 0 <= pos_min <= max(0, n - self.n_swa)

    def share(self, reuse: Reuse, seq_id: int) -> None:
        """Give ``seq_id`` the cells of the reuse (no copy: the cells gain a second owner)."""
        llama_cpp.llama_memory_seq_cp(self._memory, reuse.source, seq_id, 0, reuse.n_tokens)

    # -- storing ---------------------------------------------------------------------
    def store(
        self, seq_id: int, tokens: Tokens, runs: tuple[Run, ...], *, pinned: bool = False, on_grid: bool = True
    ) -> int:
        """Keep the first cells of ``seq_id`` (before it is freed); the number of tokens kept."""
        after, self._after_tail = self._after_tail, None
        if on_grid:
            self._tail = after  # unless a new entry follows it (below), its cells end where the free ones start
        if not self.enabled:
            return 0
        n = min(len(tokens), self.capacity)
        if pinned:
            n -= n % ALIGN  # a pinned entry is never cut: it ends on the grid
        if n < MIN_REUSE:
            return 0
        tokens, runs = tokens[:n], truncate(runs, n)
        pos_min = llama_cpp.llama_memory_seq_pos_min(self._memory, seq_id)
        for entry in self._entries:
            # An entry that already holds these tokens (and its window) makes a new one redundant.
            if common_prefix(entry.tokens, tokens) == n and self._window_no_worse(entry.seq_id, pos_min):
                entry.used = next(self._tick)
                entry.pinned |= pinned
                self._publish()
                return n
        for entry in list(self._entries):
            # A shorter entry with cells of its own is redundant; one sharing our cells costs nothing.
            if common_prefix(entry.tokens, tokens) == len(entry.tokens) and not _covers(runs, entry.runs):
                pinned |= entry.pinned
                self._drop(entry)
        lease = self._ids.cache_id()
        if lease is None:
            self._evict(pinned_too=True)
            lease = self._ids.cache_id()
            assert lease is not None
        llama_cpp.llama_memory_seq_cp(self._memory, seq_id, lease.seq_id, 0, n)
        entry = _Entry(lease, tokens.copy(), runs, pinned, next(self._tick), on_grid, prev=after)
        self._entries.append(entry)
        if on_grid:
            self._tail = entry
        while distinct_cells(r for e in self._entries for r in e.runs) > self.capacity and self._evict(pinned_too=True):
            pass
        self._publish()
        return n

    def _window_no_worse(self, seq_id: int, pos_min: int) -> bool:
        return self.n_swa <= 0 or 0 <= int(llama_cpp.llama_memory_seq_pos_min(self._memory, seq_id)) <= max(pos_min, 0)

    # -- snapshots ------------------------------------------------------------------
    def kept(self) -> list[tuple[int, Tokens, bool, bool]]:
        """``(seq_id, tokens, pinned, on_grid)`` of every entry, in the order their cells were placed."""
        return [(e.seq_id, e.tokens, e.pinned, e.on_grid) for e in self._entries]

    def adopt(self, tokens: Tokens, *, pinned: bool, load: Callable[[int], None]) -> bool:
        """Add an entry whose cells ``load(seq_id)`` puts back (a restore); ``False`` if it does not fit.

        Called on an idle worker with multiples of :data:`ALIGN` tokens, each
        placed after the last: the layout a fresh engine gets from prefilling
        them in turn, so hits on them stay on the grid.
        """
        n = len(tokens)
        if not self.enabled or not self._ids.free_cache_ids() or n % ALIGN or n < MIN_REUSE:
            return False
        if distinct_cells(r for e in self._entries for r in e.runs) + n > self.capacity:
            return False
        lease = self._ids.cache_id()
        assert lease is not None
        entry_id = lease.seq_id
        try:
            load(entry_id)
            low = llama_cpp.llama_memory_seq_pos_min(self._memory, entry_id)
            high = llama_cpp.llama_memory_seq_pos_max(self._memory, entry_id)
            if high != n - 1 or not 0 <= low <= high or (self.n_swa <= 0 and low != 0):
                raise ValueError(f"the restored cells hold positions {low}..{high}, not 0..{n - 1}")
        except BaseException:
            llama_cpp.llama_memory_seq_rm(self._memory, entry_id, -1, -1)
            lease.release(unused=True)
            raise
        runs = (Run(self.new_block(), 0, n),)
        entry = _Entry(lease, tokens.copy(), runs, pinned, next(self._tick), True, prev=self._tail)
        self._entries.append(entry)
        self._tail = entry
        self._publish()
        return True

    # -- eviction --------------------------------------------------------------------
    def evict_one(self) -> bool:
        """Free the least recently used entry (KV pressure); ``False`` when nothing is left."""
        evicted = self._evict(pinned_too=True)
        self._publish()
        return evicted

    def make_room(self, n_cells: int, size: int, active: Iterable[Run]) -> None:
        """Evict (LRU) until ``n_cells`` more cells fit a cache of ``size`` beside the ``active`` ones.

        Cells are counted exactly (llama.cpp places a batch in any free cells),
        so llama.cpp never has to refuse a batch for want of room.
        """
        running = tuple(active)
        evicted = False
        while (
            self._entries and distinct_cells((*running, *(r for e in self._entries for r in e.runs))) + n_cells > size
        ):
            self._evict(pinned_too=True)
            evicted = True
        if evicted:
            self._publish()

    def drop_off_grid(self) -> None:
        """Drop the entries of sequences that were decoded together with others (called when idle)."""
        off_grid = [e for e in self._entries if not e.on_grid]
        for entry in off_grid:
            self._drop(entry)
            self._evictions += 1
        if off_grid:
            self._publish()

    def clear(self) -> None:
        """Drop every entry, pinned ones too (``Engine.reset()``); the counters stay."""
        for entry in list(self._entries):
            self._drop(entry)
        self._tail = self._after_tail = None
        self._publish()

    def _evict(self, *, pinned_too: bool) -> bool:
        candidates = [e for e in self._entries if not e.pinned] or (self._entries if pinned_too else [])
        if not candidates:
            return False
        self._drop(min(candidates, key=lambda e: e.used))
        self._evictions += 1
        return True

    def free_cells(self, seq_id: int) -> None:
        """Free every cell of ``seq_id`` (a slot or a spare id whose work ended): what the cache keeps has its own."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def forget(self, *, on_grid: bool) -> None:
        """A sequence ended without being stored (it failed): its cells are freed, the tail stands again."""
        after, self._after_tail = self._after_tail, None
        if on_grid:
            self._tail = after

    def _drop(self, entry: _Entry) -> None:
        # A block that ends on the grid leaves a hole on the grid; the tail's own cells were last,
        # so the one it was placed after becomes the tail again.
        if entry is self._tail:
            self._tail = entry.prev if entry.prev in self._entries else None
        if entry is self._after_tail:
            self._after_tail = entry.prev if entry.prev in self._entries else None
        llama_cpp.llama_memory_seq_rm(self._memory, entry.seq_id, -1, -1)
        self._entries.remove(entry)
        entry.lease.release()

    def _publish(self) -> None:
        self.snapshot = PrefixCacheStats(
            capacity=self.capacity,
            tokens=distinct_cells(r for e in self._entries for r in e.runs),
            entries=len(self._entries),
            pinned=sum(e.pinned for e in self._entries),
            lookups=self._lookups,
            hits=self._hits,
            hit_tokens=self._hit_tokens,
            prompt_tokens=self._prompt_tokens,
            evictions=self._evictions,
            window_misses=self._window_misses,
        )
