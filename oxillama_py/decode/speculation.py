"""Speculation inside the continuous batch: the engine's drafting setup and plan, and each sequence's verification.

:class:`Speculator` is the engine's (one per worker, set up on first use): the
draft cap, the acceptance seen over every sequence, the measured cost of a
step, and :meth:`Speculator.plan_drafts`, which gives each step's drafts to the
sequences where they pay. :class:`SequenceSpeculation` is one sequence's.

A speculating sequence adds its drafted tokens after its last token in the
step's ``llama_decode``, every row with logits. The rows are walked in order
and the longest prefix the target agrees with is kept. Greedy: a draft is
accepted if it is the target's argmax. Sampling: the target draws its own
token at each row from ``p`` by inverse transform with one uniform number per
emitted token, and the draft is accepted if that is the drafted token. With a
deterministic drafter (``q`` one-hot) this is speculative sampling exactly:
the draft passes with probability ``p(draft) = min(1, p/q)``, and a rejection
emits a token from the residual ``max(0, p - q)`` normalised (``p`` without the
draft). So the text is distributed as the target's, and, one uniform per
token, the same seed gives the same text however many tokens were drafted.
The accepted tokens plus one token of the target are published as one step;
the runner removes the cells of the rejected rows from this sequence alone.

No llama.cpp here: the scheduler plans drafts with it, and tests do without a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from ..bus import Request, SpeculativeStats, VerifyStep
from ..config import PromptLookup
from .backoff import DraftBackoff
from .cost import Acceptance, StepCost, plan
from .distribution import Distribution, Floats, sample_at
from .drafters import Draft, Drafter, PromptLookupDrafter

if TYPE_CHECKING:
    from ..llama import Context, Model
    from ..results import TokenLogprob
    from .draft_model import DraftModel

__all__ = ["Candidate", "Placement", "SequenceSpeculation", "Speculator"]

PRIOR_CAP = 0.9


@dataclass(slots=True)
class Placement:
    """Where one sequence's tokens of a step went: its sampled row, its draft, what it decoded; then its result."""

    index: int
    draft: Draft
    start: int
    batch: list[int]
    chosen: list[int] | None = None
    """The tokens this step gives the sequence (set by the runner once the batch is decoded)."""
    error: Exception | None = None
    """Why choosing them failed, if it did."""
    logprobs: list[TokenLogprob] | None = None
    """The chosen tokens' log-probabilities, for a request that asked (each from the row it was chosen at)."""


class Candidate(Protocol):
    """A sequence that may draft this step, as the plan sees it."""

    @property
    def spec(self) -> SequenceSpeculation | None: ...

    @property
    def remaining(self) -> int: ...

    def draft(self, k: int) -> Draft: ...


C = TypeVar("C", bound=Candidate)


class Speculator:
    """An engine's speculation: how sequences draft, the draft cap, the cost of a step, and each step's drafts."""

    def __init__(
        self,
        max_draft: int,
        cost: StepCost,
        *,
        lookup: PromptLookup | None = None,
        draft_model: DraftModel | None = None,
    ) -> None:
        self.max_draft = max_draft
        self.cost = cost
        """Seconds of a decode of ``n`` rows: measured at set-up, then moved by every step that samples all rows."""
        self.shared = Acceptance(0.5)
        """Acceptance over every sequence: a new sequence starts from it."""
        self.draft_cost = 0.0
        self.draft_model = draft_model
        self.lookup = None if draft_model is not None else lookup or PromptLookup()

    @property
    def model_drafts(self) -> bool:
        return self.draft_model is not None

    def drafter(self, request: Request, slot: int) -> Drafter:
        if self.lookup is not None:
            return PromptLookupDrafter(self.lookup)
        assert self.draft_model is not None
        return self.draft_model.drafter(request, slot)

    def plan_drafts(self, candidates: list[C], running: Iterable[Candidate], fixed: int, room: int) -> dict[C, Draft]:
        """The drafts of this step: as many per sequence as :func:`~.cost.plan` finds worth their rows.

        ``fixed`` rows are decoded anyway, ``room`` are left; ``running`` is every sequence of the batch.
        A sequence backing off after missed drafts (:mod:`.backoff`) is no candidate: it costs nothing here.
        """
        if room <= 0:
            return {}
        candidates = [seq for seq in candidates if seq.spec is not None and seq.spec.backoff.ready]
        if not candidates:
            return {}
        cost = self.cost
        offers = [offer(seq, self.max_draft) for seq in candidates]
        # A batch lasts as long as its longest sequence: tokens of one that is ahead are worth less.
        horizon = max(seq.remaining for seq in running)
        weights = [seq.remaining / horizon for seq in candidates]
        counts = plan(cost, fixed, offers, self.draft_cost, limit=room, weights=weights)
        if not any(counts):  # not even full drafts would pay: plain batching, no drafting at all
            return {}
        drafts: dict[C, Draft] = {}
        if self.model_drafts:  # a draft model's drafts cost decodes: draft exactly what was planned
            for seq, count in zip(candidates, counts, strict=True):
                if count:
                    drafts[seq] = seq.draft(count)
            self.observe_drafters(seq.spec.drafter for seq in candidates if seq.spec is not None)
            return drafts
        # Only where full drafts would pay is the drafter asked (its search reads the whole text).
        offered = {seq: seq.draft(most) for seq, (_, most), n in zip(candidates, offers, counts, strict=True) if n}
        offers = [
            (rate, len(offered[seq]) if seq in offered else 0)
            for seq, (rate, _) in zip(candidates, offers, strict=True)
        ]
        counts = plan(cost, fixed, offers, 0.0, limit=room, weights=weights)
        for seq, count in zip(candidates, counts, strict=True):
            if count:
                drafts[seq] = Draft(offered[seq].tokens[:count])
        return drafts

    def observe_drafters(self, drafters: Iterable[Drafter]) -> None:
        """Keep the price of a drafted token current (a draft model's single-token decodes)."""
        times = [d.seconds_per_token for d in drafters if d.seconds_per_token]
        if times:
            self.draft_cost = max(times) if not self.draft_cost else 0.8 * self.draft_cost + 0.2 * max(times)

    def close(self) -> None:
        if self.draft_model is not None:
            self.draft_model.close()


def offer(seq: Candidate, max_draft: int) -> tuple[float, int]:
    """A candidate's acceptance and the most it may draft this step (a probe after misses: short)."""
    spec = seq.spec
    assert spec is not None
    backoff = spec.backoff
    return backoff.rate(spec.acceptance.rate), backoff.limit(min(max_draft, seq.remaining - 1))


class SequenceSpeculation:
    """What a speculating sequence keeps: how it drafts, how often drafts pass, and its counters."""

    def __init__(self, request: Request, model: Model, drafter: Drafter, shared: Acceptance, *, trace: bool) -> None:
        self.model = model
        self.dist = Distribution(request.sampler, model.n_vocab)
        self.matcher = request.matcher
        self.rng = np.random.default_rng(request.seed)
        self.drafter = drafter
        self.shared = shared
        # From what other sequences saw, as one token's worth of evidence (capped: a copying neighbour
        # says little about this text), so its own first verified draft already moves it most of the way.
        self.acceptance = Acceptance(min(shared.rate, PRIOR_CAP))
        self.backoff = DraftBackoff()
        """When this sequence drafts: not for a while after drafts that missed."""
        self.drafted = 0
        self.accepted = 0
        self.target_calls = 0
        self.trace: list[VerifyStep] | None = [] if trace else None

    def verify(self, context: Context, index: int, draft: Draft, history: Seq[int]) -> tuple[list[int], list[int]]:
        """The accepted drafts plus one target token, and the target's choice at every row checked."""
        seen = list(history) if draft.tokens else history  # extended only past accepted drafts
        emitted: list[int] = []
        choices: list[int] = []
        for i in range(len(draft.tokens) + 1):
            row = context.logits_array(index + i)
            proposal = draft.tokens[i] if i < len(draft.tokens) else None
            matcher = self.matcher
            if self.dist.greedy:
                choice = self.dist.argmax(row, seen)
                if matcher is not None and not matcher.takes(choice):
                    matcher.mask()
                    choice = self.dist.argmax(matcher.restrict(row), seen)
            else:
                if matcher is not None:
                    matcher.mask()
                    row = matcher.restrict(row)
                choice = self.choose(self.dist.probs(row, seen), proposal, self.rng.random())
            if matcher is not None:
                matcher.consume(choice)  # only a chosen token moves the grammar: a rejected draft never did
            choices.append(choice)
            emitted.append(choice)
            if choice != proposal or self.model.is_eog(choice):
                break
            assert isinstance(seen, list)
            seen.append(choice)
        accepted = len(emitted) - 1
        self.drafted += len(draft.tokens)
        self.accepted += accepted
        if draft.tokens:
            self.acceptance.update(len(draft.tokens), accepted)
            self.shared.update(len(draft.tokens), accepted)
        return emitted, choices

    def step(self, context: Context, placed: Placement, history: Seq[int], n_real: int) -> list[int]:
        """Verify this step's rows: the tokens to publish. ``n_real`` tokens of text were real before it."""
        emitted, choices = self.verify(context, placed.index, placed.draft, history)
        self.backoff.observe(len(placed.draft.tokens), len(emitted) - 1)
        self.target_calls += 1
        self.record(placed.start, placed.batch, placed.draft.tokens, choices, emitted)
        self.drafter.accepted(n_real + len(emitted) - 1)
        return emitted

    def prefilled(self, placed: Placement, prompt: Seq[int], n_prefilled: int) -> None:
        """A prompt chunk that samples nothing (not the last): counted, traced, and fed to a draft model."""
        self.target_calls += 1
        self.record(placed.start, placed.batch, [], [], [])
        self.drafter.prefill(prompt, n_prefilled)

    @staticmethod
    def choose(p: Floats, proposal: int | None, u: float) -> int:
        """The target's token at a row: drawn from ``p`` with ``u``; the draft passes if it is that token."""
        return sample_at(p, u)

    def record(self, start: int, batch: list[int], drafted: list[int], choices: list[int], emitted: list[int]) -> None:
        if self.trace is not None:
            self.trace.append(
                VerifyStep(
                    start=start,
                    batch=tuple(batch),
                    drafted=tuple(drafted),
                    choices=tuple(choices),
                    accepted=max(0, len(emitted) - 1) if drafted else 0,
                    emitted=tuple(emitted),
                )
            )

    def stats(self, emitted: int) -> SpeculativeStats:
        return SpeculativeStats(
            drafted=self.drafted,
            accepted=self.accepted,
            target_calls=self.target_calls,
            emitted=emitted,
            steps=tuple(self.trace) if self.trace is not None else (),
        )
