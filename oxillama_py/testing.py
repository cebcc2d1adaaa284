"""Test hooks: documented ways for a test to look into a loaded engine's decode worker, or steer it.

Tests of the engine's mechanics (which KV cells a sequence holds, what the
prefix cache keeps, how far speculation drafts) need facts that the public
surface rightly hides. They read them here, not through private attributes,
so that a change inside the worker breaks this module (and its own test),
not a dozen tests. Each hook runs on the decode thread between two steps and
blocks until it did: call it from a thread, or from async code through
``anyio.to_thread.run_sync``. Not meant for production code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import llama_cpp

from .decode import DecodeWorker
from .decode.cost import StepCost
from .engine.async_engine import AsyncEngine
from .engine.base import decode_worker
from .engine.sync import Engine

__all__ = [
    "CachedPrefix",
    "SlotCells",
    "cached_prefixes",
    "evict_least_recent",
    "price_rows_as_free",
    "set_step_cost",
    "slot_cells",
    "sliding_window",
]


@dataclass(frozen=True, slots=True)
class SlotCells:
    """One ``seq_id`` of the context: the positions its KV cells span, and the sequence decoding in it."""

    slot: int
    pos_min: int
    """Lowest position with a cell (-1: none)."""
    pos_max: int
    """Highest position with a cell (-1: none)."""
    tokens: int | None
    """Tokens the running sequence of this slot has in the KV cache (``None``: no sequence runs in it)."""


@dataclass(frozen=True, slots=True)
class CachedPrefix:
    """One entry of the prefix cache: the ``seq_id`` holding its cells, its tokens, where its cells are."""

    seq_id: int
    tokens: tuple[int, ...]
    pos_min: int
    """Lowest position of the entry's cells still in the KV cache (llama.cpp may reuse stale window cells)."""
    pos_max: int


def _worker(engine: Engine | AsyncEngine) -> DecodeWorker:
    return decode_worker(engine.async_engine() if isinstance(engine, Engine) else engine)


def _on_worker(engine: Engine | AsyncEngine, func: Any) -> Any:
    return _worker(engine).run(func).result()


def slot_cells(engine: Engine | AsyncEngine) -> list[SlotCells]:
    """The cells of each generation slot (``max_concurrency`` of them), read between two steps."""

    def read(worker: DecodeWorker) -> list[SlotCells]:
        assert worker.context is not None and worker.scheduler is not None
        memory = worker.context.memory
        running = {seq.slot: seq.pos for seq in worker.scheduler.running}
        return [
            SlotCells(
                slot,
                llama_cpp.llama_memory_seq_pos_min(memory, slot),
                llama_cpp.llama_memory_seq_pos_max(memory, slot),
                running.get(slot),
            )
            for slot in range(worker.n_slots)
        ]

    result: list[SlotCells] = _on_worker(engine, read)
    return result


def cached_prefixes(engine: Engine | AsyncEngine) -> list[CachedPrefix]:
    """The prefix cache's entries, least recently used first (empty when the cache is off)."""

    def read(worker: DecodeWorker) -> list[CachedPrefix]:
        if worker.cache is None or worker.context is None:
            return []
        memory = worker.context.memory
        return [
            CachedPrefix(
                holder.seq_id,
                tuple(holder.tokens),
                llama_cpp.llama_memory_seq_pos_min(memory, holder.seq_id),
                llama_cpp.llama_memory_seq_pos_max(memory, holder.seq_id),
            )
            for holder in worker.cache.holders()
        ]

    result: list[CachedPrefix] = _on_worker(engine, read)
    return result


def evict_least_recent(engine: Engine | AsyncEngine) -> bool:
    """Evict the prefix cache's least recently used entry, as KV pressure would; ``False`` if it was empty."""

    def evict(worker: DecodeWorker) -> bool:
        return worker.cache is not None and worker.cache.evict_one()

    return bool(_on_worker(engine, evict))


def sliding_window(engine: Engine | AsyncEngine) -> int:
    """The model's sliding-window size in tokens (``n_swa``; 0 when it has no sliding-window layers)."""
    return _worker(engine).model.n_swa


class _FlatCost(StepCost):
    """Every row priced the same, and observed steps do not move it."""

    def __init__(self) -> None:
        super().__init__({1: 1.0, 64: 1.0})

    def observe(self, n: int, seconds: float) -> None:
        pass


def set_step_cost(engine: Engine | AsyncEngine, cost: StepCost) -> StepCost:
    """Give a speculating engine's drafting plan ``cost`` as its step-cost curve; return the one it had.

    Speculation must have been set up: by the engine's ``speculative`` config,
    or by a first request with ``speculative=True``.
    """

    def swap(worker: DecodeWorker) -> StepCost:
        if worker.speculator is None:
            raise RuntimeError("the engine has not set speculation up: load a speculating engine first")
        previous, worker.speculator.cost = worker.speculator.cost, cost
        return previous

    result: StepCost = _on_worker(engine, swap)
    return result


def price_rows_as_free(engine: Engine | AsyncEngine) -> StepCost:
    """Price every decoded row the same (as a memory-bound step would), so the plan drafts all it is offered.

    How many tokens a sequence drafts is otherwise the cost model's choice, from
    steps timed on the machine that runs the tests. Returns the curve it
    replaced, for :func:`set_step_cost` to put back.
    """
    return set_step_cost(engine, _FlatCost())
