"""A snapshot of an engine's decode worker: how loaded it is, how far it has got."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineStats"]


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Read at any time from any thread (``engine.stats``); for health checks and tests."""

    loaded: bool
    """Whether the model is loaded and its decode thread runs."""
    slots: int
    """Sequences the worker decodes together (``max_concurrency``)."""
    active: int
    """Requests holding a slot: prefilling or generating."""
    waiting: int
    """Requests queued for a slot."""
    decode_steps: int
    """``llama_decode`` calls of the target model so far (prefill chunks included)."""
