"""A snapshot of an engine's decode worker: how loaded it is, how far it has got."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineStats", "PrefixCacheStats"]


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    """The prefix cache's size and how often it spared a prefill (``engine.stats.prefix_cache``)."""

    capacity: int = 0
    """Most KV cells the cache keeps (``EngineConfig.prefix_cache_tokens``; 0: off)."""
    tokens: int = 0
    """KV cells the cache holds now (cells shared by several entries count once)."""
    entries: int = 0
    """Cached token sequences."""
    pinned: int = 0
    """Entries pinned by ``cache_prefix``: evicted only after every other entry."""
    lookups: int = 0
    """Requests that looked for a cached prefix."""
    hits: int = 0
    """Requests that reused cached cells."""
    hit_tokens: int = 0
    """Prompt tokens reused instead of prefilled."""
    prompt_tokens: int = 0
    """Prompt tokens of every lookup."""
    evictions: int = 0
    """Entries evicted: least recently used first, to stay within capacity or to make room."""
    window_misses: int = 0
    """Lookups that matched a prefix whose sliding-window cells llama.cpp had already overwritten
    (so the prompt was prefilled in full)."""

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0.0 before the first lookup)."""
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def token_hit_rate(self) -> float:
        """Reused prompt tokens over all prompt tokens looked up."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


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
    prefix_cache: PrefixCacheStats = PrefixCacheStats()
    """The prefix cache's size and hit rate."""
    weight_changes: int = 0
    """Adapter changes waiting for the running generations to end (meanwhile no request starts)."""
    preemptions: int = 0
    """Sequences preempted so far because the KV cells ran out: each waited, prefilled its text again and went on
    (see :doc:`batching`)."""
