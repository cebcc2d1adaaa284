"""What a finished generation returns: text, token ids, why it stopped, and timings.

Public types only; the bus and the decode workers build them, so this module
imports nothing of the package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

__all__ = [
    "CompletionResult",
    "FinishReason",
    "SpeculativeStats",
    "Timings",
    "TokenLogprob",
    "ToolCall",
    "TopLogprob",
    "VerifyStep",
]

FinishReason: TypeAlias = Literal["stop", "length", "cancelled", "error"]
"""Why a generation ended: end of generation or a stop string, ``max_tokens``, a cancel, an error."""


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
class TopLogprob:
    """One alternative at a position: a token and its log-probability."""

    token_id: int
    token: str
    """The token's text (a control token as its own text, ``<eos>``; invalid UTF-8 as U+FFFD)."""
    token_bytes: bytes
    """The token's exact bytes (a token may hold part of a UTF-8 character)."""
    logprob: float
    """Natural log of its probability under the model's raw distribution (log-softmax of the logits)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token of the text with its log-probability and the most likely tokens at its position.

    The distribution is the model's own over the whole vocabulary, before any
    sampling filter, penalty, bias or grammar (as OpenAI and llama.cpp report it):
    a sampled or constrained token may have a low value.
    """

    token_id: int
    token: str
    token_bytes: bytes
    logprob: float
    top_logprobs: tuple[TopLogprob, ...] = ()
    """The ``logprobs`` most likely tokens at this position, most likely first."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made, in OpenAI's terms (``chat(..., tools=...)``)."""

    id: str
    """``call_...``: what the tool's answer names as its ``tool_call_id``."""
    name: str
    arguments: str
    """The arguments as JSON text (an object valid against the function's ``parameters``, unless the
    answer was cut short by ``max_tokens``)."""

    def parse_arguments(self) -> Any:
        """The arguments as Python values (``json.loads``)."""
        return json.loads(self.arguments)


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
    cached_tokens: int = 0
    """Prompt tokens whose KV cells came from the prefix cache instead of a prefill."""
    logprobs: tuple[TokenLogprob, ...] | None = None
    """One entry per token of ``token_ids``, with ``logprobs=k``; ``None`` when not asked."""
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    """One entry per prompt token (BOS included), with ``prompt_logprobs=True``; the first is ``None``
    (nothing predicts it). ``None`` when not asked."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls of a ``chat(..., tools=...)`` answer (``text`` is then the answer's text, often empty)."""

    @property
    def tokens_per_sec(self) -> float:
        """Completion tokens over the whole generation time, prefill and queueing included."""
        total = self.timings.total_secs
        return self.completion_tokens / total if total > 0 else 0.0
