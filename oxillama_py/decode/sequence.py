"""One request while it holds a slot: prompt progress, sampler, the text released so far, log-probabilities.

Also the text's release rule (:class:`StopMatcher`). The scheduler admits and
retires these; the runner places their tokens and picks the next ones.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..bus import Finished, FinishReason, Request, TokenEvent
from ..llama.detokenizer import Detokenizer
from ..llama.logprobs import token_logprob
from .cells import Run

if TYPE_CHECKING:
    from ..llama import Context, Model, Sampler
    from ..results import TokenLogprob
    from .drafters import Draft
    from .ids import Lease
    from .speculation import SequenceSpeculation

__all__ = ["ActiveSequence", "StopMatcher"]


class StopMatcher:
    """Releases text only once it cannot be the start of a stop string.

    So the pieces a caller streams always join to the final text, which ends
    just before the first stop string (as llama-cpp-python's does).
    """

    __slots__ = ("_pending", "_stops")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add decoded text; return what is safe to release and whether a stop string hit."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        hit = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if hit >= 0:
            self._pending = ""
            return pending[:hit], True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:k]):
                    hold = k
                    break
        self._pending = pending[len(pending) - hold :]
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending


class ActiveSequence:
    """A request bound to a KV slot (``seq_id``) for as long as it decodes."""

    def __init__(self, request: Request, lease: Lease, model: Model, submitted: float, sampler: Sampler | None) -> None:
        self.request = request
        self.lease = lease
        self.slot = lease.seq_id
        self.model = model
        self.prompt = request.prompt_tokens
        """The tokens to prefill: the request's prompt, or after a preemption its prompt and generated tokens."""
        self.n_prefilled = 0
        self.pos = 0  # tokens of this sequence in the KV cache
        self.cached_tokens = 0  # prompt tokens whose cells came from the prefix cache
        self.reported_cached = 0  # what the usage reports: the cached prompt tokens of the first admission
        self.preempted = 0  # times its cells were taken back (see kv_budget)
        self.inherited: tuple[Run, ...] = ()
        self.block = 0  # the lineage id of the cells this sequence computes itself
        self.on_grid = True  # on the prefix cache's cell grid: decoded alone, on cells that were too
        self.sampler = sampler  # None where tokens are chosen elsewhere (speculative verification)
        self.spec: SequenceSpeculation | None = None
        cfg = request.sampler
        self._argmax = cfg.is_greedy and not cfg.adjusts_logits and request.grammar is None
        self.generated: list[int] = []
        self.last_token = -1
        self.submitted = submitted
        self.admitted = time.perf_counter()
        self.first_token: float | None = None
        self.reason: FinishReason | None = None
        self._hit_stop = False
        self._detok = Detokenizer()
        self._stops = StopMatcher(request.stop)
        self.prompt_logprobs: list[TokenLogprob | None] | None = [None] if request.prompt_logprobs else None
        """The prompt's log-probabilities so far (the first token has none); ``None`` when not asked."""
        self._prompt_sent = False

    def reuse(self, n_tokens: int, runs: tuple[Run, ...], on_grid: bool = True) -> None:
        """Start with the first ``n_tokens`` prompt cells already in the KV cache."""
        self.n_prefilled = self.pos = self.cached_tokens = n_tokens
        if not self.preempted:
            self.reported_cached = n_tokens
        self.inherited = runs
        self.on_grid = self.on_grid and on_grid

    def kv_tokens(self) -> npt.NDArray[np.int32]:
        """The tokens whose cells this sequence holds, in position order."""
        prompt = self.request.prompt_tokens
        held = prompt[: self.pos]
        if self.pos > len(prompt):
            held = held + self.generated[: self.pos - len(prompt)]
        return np.asarray(held, dtype=np.int32)

    @property
    def n_held(self) -> int:
        """How many cells (positions ``0..n_held-1``) this sequence holds."""
        return self.pos

    def runs(self) -> tuple[Run, ...]:
        """The lineage of the cells this sequence holds: what it inherited, then its own."""
        held = self.n_held
        own = (Run(self.block, self.cached_tokens, held),) if held > self.cached_tokens else ()
        return self.inherited + own

    def pick(self, context: Context, index: int) -> int:
        """The next token from batch row ``index``.

        Plain greedy decoding takes numpy's argmax (the first maximum, as
        llama.cpp's greedy sampler does): five times cheaper than running the
        sampler chain over the whole vocabulary, and the same token.
        """
        if self._argmax:
            return int(np.argmax(context.logits_array(index)))
        assert self.sampler is not None, "a sampled sequence needs its sampler chain"
        return self.sampler.sample(context.ptr, index)

    def logprobs_of(self, context: Context, index: int, tokens: list[int]) -> list[TokenLogprob] | None:
        """The log-probabilities of ``tokens``, chosen at rows ``index``, ``index + 1``... (when asked)."""
        k = self.request.logprobs
        if k is None:
            return None
        return [token_logprob(self.model, context.logits_array(index + i), t, k) for i, t in enumerate(tokens)]

    def score_prompt(self, context: Context, first_row: int, start: int, count: int) -> None:
        """Record the log-probability of each prompt token that rows ``first_row..`` (positions ``start..``) predict."""
        scores = self.prompt_logprobs
        k = self.request.logprobs
        assert scores is not None and k is not None
        prompt = self.prompt
        for i in range(count):
            following = start + i + 1
            if following < len(prompt):
                scores.append(token_logprob(self.model, context.logits_array(first_row + i), prompt[following], k))

    def take_prompt_logprobs(self) -> tuple[TokenLogprob | None, ...] | None:
        """The prompt's log-probabilities, once, after its prefill (for the first event that can carry them)."""
        if self.prompt_logprobs is None or self._prompt_sent or self.prefilling:
            return None
        self._prompt_sent = True
        return tuple(self.prompt_logprobs)

    def draft(self, k: int) -> Draft:
        """Up to ``k`` drafted tokens after the text so far (prompt, then generated), as far as the grammar allows."""
        assert self.spec is not None
        draft = self.spec.drafter.draft(self.request.prompt_tokens + self.generated, k, self.generated)
        matcher = self.request.matcher
        if matcher is not None and draft.tokens:  # drafts the grammar refuses cannot pass: not worth a row
            allowed = matcher.valid_prefix(draft.tokens)
            if allowed < len(draft.tokens):
                draft.tokens = draft.tokens[:allowed]
        return draft

    @property
    def n_text(self) -> int:
        """Tokens of its text so far: the request's prompt, then the generated ones."""
        return len(self.request.prompt_tokens) + len(self.generated)

    def suspend(self) -> None:
        """Preempted (its cells and slot were taken back): it will prefill its text again, then go on.

        Sampler, grammar, stop matcher, detokenizer and generated tokens stay as
        they are, so the tokens that follow are the ones that would have.
        """
        self.preempted += 1
        self.prompt = self.request.prompt_tokens + self.generated
        self.n_prefilled = self.pos = self.cached_tokens = 0
        self.inherited = ()
        self.on_grid = True
        if self.prompt_logprobs is not None:  # scored once: a replay is not scored again, unless cut short
            self.prompt_logprobs = None if self._prompt_sent else [None]

    def resume(self, lease: Lease, block: int) -> None:
        """Re-admitted after :meth:`suspend`, in the slot of ``lease``, computing cells of lineage ``block``."""
        self.lease = lease
        self.slot = lease.seq_id
        self.block = block

    @property
    def prefilling(self) -> bool:
        return self.n_prefilled < len(self.prompt)

    @property
    def remaining(self) -> int:
        return self.request.max_tokens - len(self.generated)

    def advance(self, token: int, now: float, logprob: TokenLogprob | None = None) -> TokenEvent | None:
        """Take one sampled token; sets :attr:`reason` when the sequence is done.

        Returns the token's event, or ``None`` for an end-of-generation token,
        which is not part of the output (nor is any token of a prompt scored
        with ``max_tokens=0``).
        """
        if self.first_token is None:
            self.first_token = now
        if self.request.max_tokens == 0:
            self.reason = "length"
            return None
        if self.model.is_eog(token):
            self.reason = "stop"
            return None
        self.generated.append(token)
        self.last_token = token
        piece, hit = self._stops.push(self._detok.feed(self.model.piece(token)))
        if hit:
            self.reason = "stop"
            self._hit_stop = True
        elif len(self.generated) >= self.request.max_tokens:
            self.reason = "length"
            piece += self._stops.push(self._detok.flush())[0] + self._stops.flush()
        return TokenEvent(token, piece, len(self.generated) - 1, now, self.request.sequence, logprob)

    def finished(self, reason: FinishReason, now: float, error: BaseException | None = None) -> Finished:
        tail = ""
        if reason == "stop" and not self._hit_stop:
            tail = self._stops.push(self._detok.flush())[0] + self._stops.flush()
        return Finished(
            reason=reason,
            time=now,
            prompt_tokens=len(self.request.prompt_tokens),
            error=error,
            submitted=self.submitted,
            admitted=self.admitted,
            first_token=self.first_token,
            tail=tail,
            sequence=self.request.sequence,
            cached_tokens=self.reported_cached,
            speculative=self.spec.stats(len(self.generated)) if self.spec is not None else None,
            prompt_logprobs=self.take_prompt_logprobs(),
        )

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
