"""What travels on the bus: one :class:`Step` per decode step, then one :class:`Finished`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..results import FinishReason, SpeculativeStats, TokenLogprob, VerifyStep

__all__ = ["TokenEvent", "Step", "Finished", "FinishReason", "Event", "SpeculativeStats", "VerifyStep"]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token. ``piece`` is the text it released; it may be ``""``
    while a multi-byte character or a possible stop string is still incomplete."""

    token_id: int
    piece: str
    index: int
    time: float
    sequence: int = 0
    logprob: TokenLogprob | None = None
    """Its log-probability and the top alternatives, for a request that asked for ``logprobs``."""


@dataclass(frozen=True, slots=True)
class Step:
    """The tokens one decode step produced for one request (several when speculating)."""

    tokens: tuple[TokenEvent, ...]
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    """The prompt's log-probabilities, on a request's first step (when it asked for them)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The terminal event: exactly one per request, whatever ended it.

    ``tail`` is text released at the very end with no token of its own (text held
    back as a possible stop-string prefix when end-of-generation came instead).
    Times are ``time.perf_counter()`` values.
    """

    reason: FinishReason
    time: float
    prompt_tokens: int = 0
    error: BaseException | None = None
    submitted: float = 0.0
    admitted: float | None = None
    first_token: float | None = None
    tail: str = ""
    sequence: int = 0
    speculative: SpeculativeStats | None = field(default=None)
    cached_tokens: int = 0
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    """The prompt's log-probabilities, when no step carried them (nothing was generated)."""


Event = Step | Finished
