"""One sequence's speculation inside the continuous batch: its drafter, and the verification of its drafts.

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
the worker removes the cells of the rejected rows from this sequence alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np

from ..bus import SpeculativeStats, VerifyStep
from ..bus.request import Request
from ..config import EngineConfig, PromptLookup
from ..errors import LoadError
from ..llama import Context, Model
from ..llama.model import resolve_model_path
from .cost import Acceptance
from .distribution import Distribution, Floats, sample_at
from .drafters import Draft, Drafter, ModelDrafter, PromptLookupDrafter

__all__ = ["Drafting", "Laid", "Speculation", "check_same_vocabulary"]

NO_DRAFT = Draft([])
PRIOR_CAP = 0.9


@dataclass(slots=True)
class Laid:
    """Where one sequence's tokens of a step went: its sampled row, its draft, and what it decoded."""

    index: int
    draft: Draft
    start: int
    batch: list[int]


class Drafting:
    """An engine's speculation: the drafter of each sequence, the draft cap, and the draft model if any."""

    def __init__(self, config: EngineConfig, model: Model, n_slots: int) -> None:
        self.max_draft = config.max_draft
        self.shared = Acceptance(0.5)
        """Acceptance over every sequence: a new sequence starts from it."""
        self.draft_cost = 0.0
        self.lookup: PromptLookup | None = None
        self.draft_model: Model | None = None
        self.draft_context: Context | None = None
        spec = config.speculative
        if isinstance(spec, EngineConfig):
            draft_model = Model(resolve_model_path(spec.model_path))
            try:
                check_same_vocabulary(model, draft_model)
                self.draft_context = Context(
                    draft_model,
                    n_ctx=spec.n_ctx,
                    n_batch=spec.n_batch,
                    n_threads=spec.n_threads,
                    n_seq_max=n_slots,
                    flash_attn=spec.flash_attn,
                )
            except BaseException:
                draft_model.close()
                raise
            self.draft_model = draft_model
        else:
            self.lookup = spec if spec is not None else PromptLookup()

    @property
    def model_drafts(self) -> bool:
        return self.draft_model is not None

    def drafter(self, request: Request, slot: int) -> Drafter:
        if self.lookup is not None:
            return PromptLookupDrafter(self.lookup)
        assert self.draft_model is not None and self.draft_context is not None
        drafter = ModelDrafter(self.draft_model, self.draft_context, request.sampler, seq_id=slot)
        drafter.reset()
        return drafter

    def observe_drafters(self, drafters: Iterable[Drafter]) -> None:
        """Keep the price of a drafted token current (a draft model's single-token decodes)."""
        times = [d.seconds_per_token for d in drafters if isinstance(d, ModelDrafter) and d.seconds_per_token]
        if times:
            self.draft_cost = max(times) if not self.draft_cost else 0.8 * self.draft_cost + 0.2 * max(times)

    def close(self) -> None:
        if self.draft_context is not None:
            self.draft_context.close()
        if self.draft_model is not None:
            self.draft_model.close()


class Speculation:
    """What a speculating sequence keeps: how it drafts, how often drafts pass, and its counters."""

    def __init__(self, request: Request, model: Model, drafter: Drafter, shared: Acceptance, *, trace: bool) -> None:
        self.model = model
        self.dist = Distribution(request.sampler, model.n_vocab)
        self.rng = np.random.default_rng(request.seed)
        self.drafter = drafter
        self.shared = shared
        # From what other sequences saw, as one token's worth of evidence (capped: a copying neighbour
        # says little about this text), so its own first verified draft already moves it most of the way.
        self.acceptance = Acceptance(min(shared.rate, PRIOR_CAP))
        self.drafted = 0
        self.accepted = 0
        self.target_calls = 0
        self.trace: list[VerifyStep] | None = [] if trace else None

    def verify(self, context: Context, index: int, draft: Draft, history: Seq[int]) -> tuple[list[int], list[int]]:
        """The accepted drafts plus one target token, and the target's choice at every row checked."""
        seen = list(history)
        emitted: list[int] = []
        choices: list[int] = []
        for i in range(len(draft.tokens) + 1):
            row = context.logits_array(index + i)
            proposal = draft.tokens[i] if i < len(draft.tokens) else None
            if self.dist.greedy:
                choice = self.dist.argmax(row, seen)
            else:
                choice = self.choose(self.dist.probs(row, seen), proposal, self.rng.random())
            choices.append(choice)
            emitted.append(choice)
            if choice != proposal or self.model.is_eog(choice):
                break
            seen.append(choice)
        accepted = len(emitted) - 1
        self.drafted += len(draft.tokens)
        self.accepted += accepted
        if draft.tokens:
            self.acceptance.update(len(draft.tokens), accepted)
            self.shared.update(len(draft.tokens), accepted)
        return emitted, choices

    def step(self, context: Context, laid: Laid, history: Seq[int], n_real: int) -> list[int]:
        """Verify this step's rows: the tokens to publish. ``n_real`` tokens of text were real before it."""
        emitted, choices = self.verify(context, laid.index, laid.draft, history)
        self.target_calls += 1
        self.record(laid.start, laid.batch, laid.draft.tokens, choices, emitted)
        self.drafter.accepted(n_real + len(emitted) - 1)
        return emitted

    def prefilled(self, laid: Laid, prompt: Seq[int], n_prefilled: int) -> None:
        """A prompt chunk that samples nothing (not the last): counted, traced, and fed to a draft model."""
        self.target_calls += 1
        self.record(laid.start, laid.batch, [], [], [])
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


def check_same_vocabulary(target: Model, draft: Model) -> None:
    """Drafts are token ids: they only mean the same thing if both models share a vocabulary."""
    if target.n_vocab != draft.n_vocab:
        raise LoadError(
            f"the draft model's vocabulary ({draft.n_vocab} tokens, {draft.path}) differs from the "
            f"target's ({target.n_vocab} tokens, {target.path}); speculative decoding needs the same vocabulary"
        )
    probe = list(range(0, target.n_vocab, max(1, target.n_vocab // 512)))[:512]
    for token in probe:
        if target.piece(token) != draft.piece(token):
            raise LoadError(
                f"the draft model's vocabulary differs from the target's at token {token} "
                f"({draft.path} vs {target.path}); speculative decoding needs the same vocabulary"
            )
