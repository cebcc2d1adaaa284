"""The runner: executes a step's plan on the llama.cpp context.

It lays the batch (each sequence's tokens, then its draft), decodes it
(evicting cached prefixes while the KV cache is full), picks each sampled
sequence's tokens (a sample, or the verification of its draft), and removes
the cells of rejected drafts. It decides nothing: the plan says what to decode.
A batch llama.cpp has no cells for leaves the sequences as they were and raises
:class:`~oxillama_py.KvCacheFullError` (the worker preempts, see :mod:`.kv_budget`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import KvCacheFullError, OxiLlamaError
from ..llama import Context, Model
from ..llama.context import BatchEntry
from .cost import POINTS, StepCost
from .drafters import NO_DRAFT, Draft
from .plan import StepOutput, StepPlan
from .speculation import Placement

if TYPE_CHECKING:
    from .adapters import AdapterSet
    from .ids import SeqIdPool
    from .prefix_cache import PrefixCache
    from .sequence import ActiveSequence

__all__ = ["Runner"]


class Runner:
    """Owns the context's use between steps: batches, decodes, picks, rolls back."""

    def __init__(
        self,
        model: Model,
        context: Context,
        cache: PrefixCache,
        ids: SeqIdPool,
        running: Sequence[ActiveSequence],
        adapters: AdapterSet,
    ) -> None:
        self.model = model
        self.context = context
        self.cache = cache
        self.ids = ids
        self.running = running
        """The scheduler's running sequences: every decode leaves room for their cells."""
        self.adapters = adapters
        """The applied LoRA adapters (reads restart when their version moves)."""
        self.steps = 0
        """Generation steps decoded (one ``llama_decode`` each; reads not counted)."""

    def execute(self, plan: StepPlan) -> StepOutput:
        """One ``llama_decode`` of the plan's batch, then each sampled sequence's tokens (or its error)."""
        ctx = self.context
        drafts = plan.drafts
        entries: list[BatchEntry] = []
        sampled: list[tuple[ActiveSequence, Placement]] = []
        scored: list[tuple[ActiveSequence, int, int, int]] = []  # prompt rows whose logits are kept
        before = [(seq, seq.pos, seq.n_prefilled) for seq in (*plan.generating, *(s for s, _ in plan.chunks))]
        for seq in plan.generating:
            sampled.append((seq, place(entries, seq, [seq.last_token], True, drafts.get(seq))))
        for seq, chunk in plan.chunks:
            last = seq.n_prefilled + len(chunk) == len(seq.prompt)
            pin = seq.request.pin
            every = seq.prompt_logprobs is not None
            placed = place(entries, seq, chunk, last and not pin, drafts.get(seq), every=every)
            if every:
                scored.append((seq, placed.index - len(chunk) + 1, seq.n_prefilled, len(chunk)))
            seq.n_prefilled += len(chunk)
            if last and not pin:
                sampled.append((seq, placed))
            elif not last and seq.spec is not None:
                seq.spec.prefilled(placed, seq.prompt, seq.n_prefilled)
        began = time.perf_counter()
        try:
            self.decode(entries)
        except KvCacheFullError:  # llama.cpp changed nothing: nor does this step (the scheduler preempts)
            for seq, pos, n_prefilled in before:
                seq.pos, seq.n_prefilled = pos, n_prefilled
                if seq.spec is not None:  # a draft model keeps the text, not this step's drafts
                    seq.spec.drafter.accepted(seq.n_text)
            raise
        seconds = time.perf_counter() - began
        self.steps += 1
        for seq, first, start, count in scored:
            seq.score_prompt(ctx, first, start, count)
        for seq, placed in sampled:
            try:
                if seq.spec is None:
                    tokens = [seq.pick(ctx, placed.index)]
                else:
                    tokens = seq.spec.step(ctx, placed, seq.generated, seq.n_text)
                placed.logprobs = seq.logprobs_of(ctx, placed.index, tokens)
            except Exception as exc:
                placed.error = exc
                continue
            placed.chosen = tokens
            if seq.spec is None:
                continue
            rejected = len(placed.draft) - (len(tokens) - 1)
            if rejected > 0:  # the drafts the target did not take: this sequence's cells only
                ctx.remove(seq.slot, seq.pos - rejected, -1)
                seq.pos -= rejected
        return StepOutput(sampled, len(entries), seconds)

    def decode(self, entries: Sequence[BatchEntry], held: int = 0) -> None:
        """Decode, evicting cached prefixes (least recently used first) while the KV cache is full.

        ``held``: cells that work beside the sequences (a read) holds already.
        llama.cpp changes nothing when it finds no room for a batch, so the
        same batch is simply tried again; a cached prefix never stops a request.
        """
        cache = self.cache
        if cache.enabled:  # (a sequence's new cells may be counted twice here: room to spare)
            active = (r for s in self.running for r in s.runs())
            cache.make_room(len(entries) + held, self.context.n_ctx, active)
        while True:
            try:
                self.context.decode(entries)
                return
            except KvCacheFullError:
                if not cache.evict_one():
                    raise

    def measure_steps(self) -> StepCost:
        """Time decodes of 1 to 64 tokens (every row with logits, as a verified draft has) on a spare ``seq_id``."""
        context = self.context
        lease = self.ids.spare()
        if lease is None:
            return StepCost.guess()
        spare = lease.seq_id
        token = max(self.model.bos, 0)

        def decode(n: int) -> float:
            began = time.perf_counter()
            try:
                context.decode([BatchEntry(token, i, spare, True) for i in range(n)])
            finally:
                context.remove(spare)
            return time.perf_counter() - began

        try:
            return StepCost.measure(decode, [n for n in POINTS if n <= context.n_batch])
        except OxiLlamaError:
            return StepCost.guess()
        finally:
            lease.release(unused=True)


def place(
    entries: list[BatchEntry],
    seq: ActiveSequence,
    tokens: list[int],
    sample: bool,
    draft: Draft | None,
    *,
    every: bool = False,
) -> Placement:
    """Append ``seq``'s tokens of this step (logits on the last if ``sample``, on all if ``every``) and its
    draft (logits on all)."""
    draft = draft or NO_DRAFT
    start = seq.pos
    slot = seq.slot
    last = len(tokens) - 1
    entries.extend(
        BatchEntry(token, start + i, slot, every or (sample and i == last)) for i, token in enumerate(tokens)
    )
    index = len(entries) - 1
    entries.extend(BatchEntry(token, start + len(tokens) + j, slot, True) for j, token in enumerate(draft.tokens))
    seq.pos += len(tokens) + len(draft.tokens)
    return Placement(index, draft, start, [*tokens, *draft.tokens] if seq.spec is not None else [])
