"""The speculative decode worker: draft ``k`` tokens, verify them in one target decode.

Each step decodes the tokens the target has not seen yet plus the draft in one
``llama_decode`` with logits for every row, walks the rows in order, and keeps
the longest prefix the target agrees with (greedy: equal to its argmax;
sampling: accepted with probability ``min(1, p/q)``, the first rejection
replaced by a token drawn from the normalised residual ``max(0, p - q)``).
The accepted tokens plus one target token are published as one step, and the
KV cells of the rejected rows are removed from both caches.

Requests are served one at a time (one sequence, ``seq_id`` 0), first come
first served; the base worker's queue, cancellation and retirement apply.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..bus import Finished, FinishReason, Request, SpeculativeStats, TokenEvent, VerifyStep
from ..config import EngineConfig, PromptLookup, SpeculativeConfig
from ..errors import LoadError
from ..llama import Context, Model
from ..llama.context import BatchEntry
from ..llama.model import resolve_model_path
from .distribution import Distribution, sample_from
from .drafters import Draft, Drafter, ModelDrafter, PromptLookupDrafter
from .sequence import Run, Sequence
from .worker import DecodeWorker

__all__ = ["SpeculativeWorker"]


class AdaptiveLength:
    """The draft length: one longer after a fully accepted draft, one shorter after a mostly rejected one."""

    __slots__ = ("k", "maximum")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.k = maximum

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if accepted == drafted:
            self.k = min(self.maximum, self.k + 1)
        elif 2 * accepted < drafted:
            self.k = max(1, self.k - 1)


class SpeculativeSequence(Sequence):
    """A sequence plus its drafter, acceptance RNG, counters and (optionally) its trace."""

    def __init__(
        self,
        request: Request,
        slot: int,
        model: Model,
        submitted: float,
        drafter: Drafter,
        num_speculative: int,
        trace: bool,
    ) -> None:
        super().__init__(request, slot, model, submitted, None)
        self.dist = Distribution(request.sampler, model.n_vocab)
        self.rng = np.random.default_rng(request.seed)
        self.drafter = drafter
        self.length = AdaptiveLength(num_speculative)
        self.tokens = list(self.prompt)  # prompt + accepted output
        self.n_past = 0  # how many of ``tokens`` the target's KV cache holds
        self.drafted = 0
        self.accepted_drafts = 0
        self.target_calls = 0
        self.trace: list[VerifyStep] | None = [] if trace else None

    def reuse(self, n_tokens: int, runs: tuple[Run, ...], on_grid: bool = True) -> None:
        super().reuse(n_tokens, runs, on_grid)
        self.n_past = n_tokens

    def kv_tokens(self) -> npt.NDArray[np.int32]:
        return np.asarray(self.tokens[: self.n_past], dtype=np.int32)

    @property
    def n_held(self) -> int:
        return self.n_past

    def stats(self) -> SpeculativeStats:
        return SpeculativeStats(
            drafted=self.drafted,
            accepted=self.accepted_drafts,
            target_calls=self.target_calls,
            emitted=len(self.generated),
            steps=tuple(self.trace) if self.trace is not None else (),
        )

    def finished(self, reason: FinishReason, now: float, error: BaseException | None = None) -> Finished:
        return replace(super().finished(reason, now, error), speculative=self.stats())

    def close(self) -> None:
        super().close()
        self.drafter.reset()


class SpeculativeWorker(DecodeWorker):
    """Owns the target model (and the draft model, if any) for one speculative engine."""

    def __init__(self, config: SpeculativeConfig, model_path: Path) -> None:
        super().__init__(config.target, model_path, name="oxillama-speculative")
        self.spec = config
        self.draft_model: Model | None = None
        self.draft_context: Context | None = None

    @property
    def n_slots(self) -> int:
        return 1

    def _open(self) -> None:
        super()._open()
        draft = self.spec.draft
        if isinstance(draft, EngineConfig):
            self.draft_model = Model(resolve_model_path(draft.model_path))
            _check_same_vocabulary(self.model, self.draft_model)
            self.draft_context = Context(
                self.draft_model,
                n_ctx=draft.n_ctx,
                n_batch=draft.n_batch,
                n_threads=draft.n_threads,
                n_seq_max=1,
                flash_attn=draft.flash_attn,
            )

    def _release(self) -> None:
        if self.draft_context is not None:
            self.draft_context.close()
        if self.draft_model is not None:
            self.draft_model.close()
        super()._release()

    def _new_sequence(self, request: Request, slot: int, submitted: float) -> Sequence:
        draft = self.spec.draft
        drafter: Drafter
        if isinstance(draft, PromptLookup):
            drafter = PromptLookupDrafter(draft)
        else:
            assert self.draft_model is not None and self.draft_context is not None
            self.draft_context.remove(0)
            rng = np.random.default_rng([request.seed, 1])  # its own stream, reproducible per seed
            drafter = ModelDrafter(self.draft_model, self.draft_context, request.sampler, rng)
        return SpeculativeSequence(request, slot, self.model, submitted, drafter, self.spec.max_draft, self.spec.trace)

    def step(self) -> None:
        """One target decode: a prefill chunk, or a draft verified and what was accepted published.

        A long prompt takes one chunk per step, so a cancellation (checked
        before every step) ends the request within one chunk.
        """
        assert self.context is not None
        ctx = self.context
        seq = self._active[0]
        assert isinstance(seq, SpeculativeSequence)
        pending = seq.tokens[seq.n_past :]
        if seq.request.pin:  # a prefix to cache: every token decoded, nothing sampled
            chunk = pending[: ctx.n_batch]
            self._decode([BatchEntry(t, seq.n_past + i, seq.slot, False) for i, t in enumerate(chunk)])
            self.decode_calls += 1
            seq.n_past += len(chunk)
            if seq.n_past == len(seq.tokens):
                self._retire(seq, "stop")
            return
        k = min(seq.length.k, seq.remaining - 1)
        if len(pending) > 1 and len(pending) + k > ctx.n_batch:
            # Prefill: the last pending token and the draft must fit the verifying batch.
            chunk = pending[: min(ctx.n_batch, len(pending) - 1)]
            self._decode([BatchEntry(t, seq.n_past + i, seq.slot, False) for i, t in enumerate(chunk)])
            self.decode_calls += 1
            seq.target_calls += 1
            self._record(seq, seq.n_past, chunk, [], [], 0, [])
            seq.n_past += len(chunk)
            seq.drafter.prefill(seq.tokens, seq.n_past)
            return
        k = min(k, ctx.n_batch - len(pending))
        draft = seq.drafter.draft(seq.tokens, k, seq.generated) if k > 0 else Draft([])
        batch = pending + draft.tokens
        base = len(pending) - 1
        self._decode([BatchEntry(t, seq.n_past + i, seq.slot, i >= base) for i, t in enumerate(batch)])
        self.decode_calls += 1
        seq.target_calls += 1
        emitted, choices = self._verify(seq, base, draft)
        accepted = len(emitted) - 1
        seq.drafted += len(draft.tokens)
        seq.accepted_drafts += accepted
        seq.length.update(len(draft.tokens), accepted)
        self._record(seq, seq.n_past, batch, draft.tokens, choices, accepted, emitted)
        # The target's cache keeps the pending tokens and the accepted drafts; the rest goes.
        keep = seq.n_past + len(pending) + accepted
        if keep < seq.n_past + len(batch):
            ctx.remove(seq.slot, keep, -1)
        seq.drafter.accepted(len(seq.tokens) + accepted)
        seq.n_past = keep
        seq.tokens.extend(emitted)
        now = time.perf_counter()
        events: list[TokenEvent] = []
        for token in emitted:
            event = seq.advance(token, now)
            if event is not None:
                events.append(event)
            if seq.reason is not None:
                break
        self._emit(seq, tuple(events))

    def _verify(self, seq: SpeculativeSequence, base: int, draft: Draft) -> tuple[list[int], list[int]]:
        """The accepted draft prefix plus one target token, and the target's choice per row checked."""
        ctx = self.context
        assert ctx is not None
        history = list(seq.generated)
        emitted: list[int] = []
        choices: list[int] = []
        for i in range(len(draft.tokens) + 1):
            row = ctx.logits_array(base + i)
            proposal = draft.tokens[i] if i < len(draft.tokens) else None
            if seq.dist.greedy:
                choice = seq.dist.argmax(row, history)
            else:
                p = seq.dist.probs(row, history)
                choice = self._sample_row(
                    seq, p, proposal, draft.probs[i] if draft.probs and proposal is not None else None
                )
            choices.append(choice)
            emitted.append(choice)
            if choice != proposal or self.model.is_eog(choice):
                break
            history.append(choice)
        return emitted, choices

    @staticmethod
    def _sample_row(seq: SpeculativeSequence, p: np.ndarray, proposal: int | None, q: np.ndarray | None) -> int:
        """Speculative sampling of one row: keep ``proposal`` w.p. min(1, p/q), else draw from the residual."""
        if proposal is None:
            return sample_from(p, seq.rng)
        q_token = 1.0 if q is None else float(q[proposal])
        if seq.rng.random() * q_token < p[proposal]:
            return proposal
        if q is None:  # a deterministic drafter: q is one-hot on the proposal
            residual = p.copy()
            residual[proposal] = 0.0
        else:
            residual = np.maximum(p - q, 0.0)
        if not residual.sum() > 0:
            residual = p
        return sample_from(residual, seq.rng)  # zero at the proposal: p < q there

    @staticmethod
    def _record(
        seq: SpeculativeSequence,
        start: int,
        batch: list[int],
        drafted: list[int],
        choices: list[int],
        accepted: int,
        emitted: list[int],
    ) -> None:
        if seq.trace is not None:
            seq.trace.append(
                VerifyStep(
                    start=start,
                    batch=tuple(batch),
                    drafted=tuple(drafted),
                    choices=tuple(choices),
                    accepted=accepted,
                    emitted=tuple(emitted),
                )
            )


def _check_same_vocabulary(target: Model, draft: Model) -> None:
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
