"""What a finished generation returns: text, token ids, why it stopped, and timings."""

from __future__ import annotations

from dataclasses import dataclass

from .bus.events import FinishReason, SpeculativeStats, VerifyStep

__all__ = ["CompletionResult", "Timings", "SpeculativeStats", "VerifyStep"]


@dataclass(frozen=True, slots=True)
class Timings:
    """Wall-clock seconds of one generation's phases."""

    queued_secs: float
    """From submission until the request got a decode slot."""
    prompt_secs: float
    """From getting a slot until the first token was sampled (prefill)."""
    generation_secs: float
    """From the first token until the end."""
    total_secs: float
    """From submission until the end."""


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """One prompt's completion, as returned by ``complete`` and ``complete_batch``."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    speculative: SpeculativeStats | None = None
    """Draft statistics, for generations of a :class:`~oxillama_py.SpeculativeEngine`."""

    @property
    def tokens_per_sec(self) -> float:
        """Completion tokens over the whole generation time, prefill and queueing included."""
        total = self.timings.total_secs
        return self.completion_tokens / total if total > 0 else 0.0
