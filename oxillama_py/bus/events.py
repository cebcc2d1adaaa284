"""What travels on the bus: one :class:`Step` per decode step, then one :class:`Finished`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["TokenEvent", "Step", "Finished", "FinishReason", "Event", "SpeculativeStats", "VerifyStep"]

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token. ``piece`` is the text it released; it may be ``""``
    while a multi-byte character or a possible stop string is still incomplete."""

    token_id: int
    piece: str
    index: int
    time: float
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    """The tokens one decode step produced for one request (several when speculating)."""

    tokens: tuple[TokenEvent, ...]


@dataclass(frozen=True, slots=True)
class VerifyStep:
    """One target decode of a speculative generation, recorded when ``SpeculativeConfig.trace`` is on.

    Enough to replay the decode and check the verdict independently: the batch
    starts at KV position ``start``; ``choices[i]`` is the target's token for the
    row that follows ``batch[len(batch) - len(drafted) - 1 + i]``; the first
    ``accepted`` drafts were kept and ``emitted`` published. A prefill chunk has
    no drafts and emits nothing.
    """

    start: int
    batch: tuple[int, ...]
    drafted: tuple[int, ...]
    choices: tuple[int, ...]
    accepted: int
    emitted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SpeculativeStats:
    """Speculative-decoding counters of one generation."""

    drafted: int = 0
    """Draft tokens proposed to the target."""
    accepted: int = 0
    """Draft tokens the target accepted."""
    target_calls: int = 0
    """Target ``llama_decode`` calls, prompt prefill included."""
    emitted: int = 0
    """Tokens generated (accepted drafts plus one target token per verification)."""
    steps: tuple[VerifyStep, ...] = ()
    """The per-decode trace, when ``SpeculativeConfig(trace=True)``; empty otherwise."""

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens over drafted tokens (0.0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """Emitted tokens per target ``llama_decode`` (1.0 is plain decoding)."""
        return self.emitted / self.target_calls if self.target_calls else 0.0


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


Event = Step | Finished
