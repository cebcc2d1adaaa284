"""The scheduler: which requests decode, how many prompt tokens each step takes, and when the weights may change.

It owns the waiting line (first come, first served), the running set (one
slot each), the exclusive barrier (a task that changes the weights runs once
the running generations have ended, and none starts in between; one withdrawn
while it waits holds nothing back), the embedding and logits reads, admission
(a slot from the id pool and room in the KV budget, the longest correct cached
prefix lent by the prefix cache), preemption when the cells run out (the
policy is :mod:`.kv_budget`'s), cancellation, and each step's rows: generating
rows first, then prompt chunks, oldest prompt first, within the prefill budget
of :class:`~.pace.PrefillPace` (all of ``n_batch`` when nothing generates),
then drafts where the cost model says they pay. Oldest first, not shortest
first: a prompt's wait is then bounded by those before it, and a long one is
never starved by a stream of short ones. :meth:`Scheduler.schedule` returns a :class:`~.plan.StepPlan`,
the runner executes it, and :meth:`Scheduler.update` takes its output: tokens
become events, ended sequences give their cells to the cache and their slots
back.

No llama.cpp here: the cache and the sequences are reached through their
methods, so tests drive the scheduler with a fake runner and no model.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..bus import Finished, FinishReason, Request, Step, TokenEvent
from .cells import Holder
from .pace import PrefillPace
from .plan import StepOutput, StepPlan, Task

if TYPE_CHECKING:
    from .drafters import Draft
    from .ids import Lease, SeqIdPool
    from .kv_budget import KvBudget
    from .prefix_cache import PrefixCache
    from .reads import ReadJob
    from .sequence import ActiveSequence
    from .speculation import Speculator

__all__ = ["Scheduler", "end_unstarted"]

_log = logging.getLogger("oxillama_py.decode")

SCORED_ROWS = 64
"""Prompt rows with logits (a request's own prompt log-probabilities) per step, over all requests:
each keeps a vocabulary's worth of floats in llama.cpp's output buffer (1 MB for Gemma)."""

StartSequence = Callable[["Request", "Lease", float], "ActiveSequence"]


class Scheduler:
    """Decides each step of the decode thread; see the module docstring."""

    def __init__(
        self,
        n_batch: int,
        ids: SeqIdPool,
        cache: PrefixCache,
        start: StartSequence,
        budget: KvBudget | None = None,
        pace: PrefillPace | None = None,
        exact_hits: bool = True,
    ) -> None:
        self.n_batch = n_batch
        self.exact_hits = exact_hits
        """Drop the entries of sequences decoded beside others before a lone request (``prefix_cache_exact``)."""
        self.budget = budget
        """The KV cells as one pool (``None``: unbounded, for tests of other things)."""
        self.pace = PrefillPace() if pace is None else pace
        """The prompt rows a step may carry beside generating ones, learned from the steps' costs."""
        self.ids = ids
        self.cache = cache
        self.start = start
        """Makes the sequence of an admitted request (its sampler or speculation); may raise for that request."""
        self.speculator: Speculator | None = None
        """Set once a request asks for speculation: it plans the drafts."""
        self.waiting: deque[tuple[Request, float]] = deque()
        self.preempted: deque[ActiveSequence] = deque()
        """Sequences whose cells were taken back, oldest first: the front of the waiting line."""
        self.preemptions = 0
        self.running: list[ActiveSequence] = []
        self.exclusive: deque[Task] = deque()
        self.reads: list[ReadJob] = []

    # -- intake ----------------------------------------------------------------------
    def add(self, request: Request, submitted: float) -> None:
        """Into the waiting line at its place (``request.order``: when its call was made), first come first served.

        Calls reach the worker in the order their tokenizing threads finish
        and their loops resume them, which is not the order they were made.
        """
        waiting, order = self.waiting, request.order
        if not waiting or waiting[-1][0].order <= order:  # the usual case: it is the latest
            waiting.append((request, submitted))
            return
        at = len(waiting)
        while at and waiting[at - 1][0].order > order:
            at -= 1
        waiting.insert(at, (request, submitted))

    def add_exclusive(self, task: Task) -> None:
        self.exclusive.append(task)

    def add_read(self, job: ReadJob) -> None:
        self.reads.append(job)

    @property
    def idle(self) -> bool:
        """Nothing to do until something new arrives."""
        return not (self.running or self.waiting or self.preempted or self.exclusive or self.reads)

    # -- deciding --------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        """Drop what was cancelled, then plan the turn: due exclusive tasks, reads, admission, one batch."""
        self._drop_cancelled()
        due: list[Task] = []
        if self.exclusive:  # one withdrawn while it waited holds nothing back
            self.exclusive = deque(task for task in self.exclusive if not task.future.cancelled())
            if not self.running:
                due, self.exclusive = list(self.exclusive), deque()
        reads = self._live_reads() if self.reads else ()
        if not self.exclusive and not due:  # a weight change first: then the waiting requests start
            self._admit()
        self._fit()
        running = self.running
        if len(running) > 1:  # their cells interleave: off the prefix cache's grid
            for seq in running:
                seq.on_grid = False
        generating = [seq for seq in running if not seq.prefilling]
        room = self.n_batch - len(generating)
        prompt_room = self.pace.budget(len(generating), room)
        scored_rows = SCORED_ROWS
        chunks: list[tuple[ActiveSequence, list[int]]] = []
        for seq in running:
            if prompt_room <= 0:
                break
            if seq.prefilling:
                take = prompt_room
                if seq.prompt_logprobs is not None:  # every row keeps its logits: bounded per step
                    take = min(take, scored_rows)
                    if take <= 0:
                        continue
                    scored_rows -= take
                chunk = seq.prompt[seq.n_prefilled : seq.n_prefilled + take]
                chunks.append((seq, chunk))
                room -= len(chunk)
                prompt_room -= len(chunk)
        speculator = self.speculator
        drafts: dict[ActiveSequence, Draft] = {}
        if speculator is not None:
            ending = [seq for seq, chunk in chunks if seq.n_prefilled + len(chunk) == len(seq.prompt)]
            speculating = [seq for seq in (*generating, *ending) if seq.spec is not None]
            if speculating:
                try:  # a draft model decodes here: its failure ends the step, as a failed decode does
                    drafts = speculator.plan_drafts(speculating, running, self.n_batch - room, room)
                except Exception as exc:
                    _log.exception("drafting failed")
                    self.retire_all(exc)
                    return StepPlan([], [], {}, due, reads)
        return StepPlan(generating, chunks, drafts, due, reads)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.running if s.request.cancel_requested()]:
            self._retire(seq, "cancelled")
        if any(request.cancel_requested() for request, _ in self.waiting):
            keep: deque[tuple[Request, float]] = deque()
            for request, submitted in self.waiting:
                if request.cancel_requested():
                    end_unstarted(request, submitted, "cancelled")
                else:
                    keep.append((request, submitted))
            self.waiting = keep
        for seq in [s for s in self.preempted if s.request.cancel_requested()]:
            self.preempted.remove(seq)
            self._end_preempted(seq, "cancelled")

    def _live_reads(self) -> list[ReadJob]:
        """The reads still wanted; a withdrawn one gives its cells and ids back now."""
        live = []
        for job in self.reads:
            if job.future.cancelled():
                job.release(self.cache)
            elif not job.future.done():
                live.append(job)
        self.reads = live
        return live

    def _admit(self) -> None:
        if self.exact_hits and (self.waiting or self.preempted) and not self.running:
            self.cache.drop_off_grid()  # a lone request gets a fresh-like cell layout
        while self.preempted or self.waiting:
            head = len(self.preempted[0].prompt) if self.preempted else len(self.waiting[0][0].prompt_tokens)
            if not self._room_for(head):
                return
            lease = self.ids.slot()
            if lease is None:
                return
            if self.preempted:
                self._restart(self.preempted.popleft(), lease)
                continue
            request, submitted = self.waiting.popleft()
            try:
                seq = self.start(request, lease, submitted)
            except Exception as exc:
                lease.release(unused=True)
                end_unstarted(request, submitted, "error", exc)
                continue
            self._lend(seq)
            self.running.append(seq)

    def _lend(self, seq: ActiveSequence) -> None:
        """Give a new sequence the longest cached prefix of its prompt that is still correct."""
        cache = self.cache
        seq.block = cache.new_block()
        self._lend_cells(seq)

    def _lend_cells(self, seq: ActiveSequence) -> None:
        cache = self.cache
        others = (Holder(s.slot, s.kv_tokens(), s.runs(), s.on_grid) for s in self.running)
        if seq.prompt_logprobs is not None:  # its prompt's logits are wanted: every row is decoded
            return
        prompt = np.asarray(seq.prompt, dtype=np.int32)
        count = not seq.request.pin and not seq.preempted  # a replay is not a new prompt
        reuse = cache.lookup(prompt, others, lone=not self.running, count=count)
        if reuse is not None:
            cache.share(reuse, seq.slot)
            seq.reuse(reuse.n_tokens, reuse.runs, reuse.on_grid)

    # -- the KV budget (the policy is kv_budget's) -------------------------------------
    def _room_for(self, n_tokens: int) -> bool:
        """Whether a sequence prefilling ``n_tokens`` may start now (always, when nothing runs)."""
        budget = self.budget
        if budget is None or not self.running:
            return True
        reserve = budget.reserve(self.running, self._max_draft, self.reads, self.pace.budget)
        return budget.admits(n_tokens, reserve, self._free())

    @property
    def _max_draft(self) -> int:
        """The most drafts one sequence may add to a step (none until a request speculates)."""
        return self.speculator.max_draft if self.speculator is not None else 0

    def _free(self) -> int:
        assert self.budget is not None
        return self.budget.free(self.running, self.cache.pinned_runs(), self.reads)

    def _step_cells(self) -> int:
        assert self.budget is not None
        return self.budget.step_cells(self.running, self._max_draft, self.reads, self.pace.budget)

    def _fit(self) -> None:
        """Preempt the newest sequences until the turn's new cells fit (the last one never: alone, it fits)."""
        if self.budget is not None:
            while len(self.running) > 1 and self._step_cells() > self._free():
                self.preempt_newest()

    def preempt_newest(self) -> bool:
        """Take the cells and slot of the sequence submitted last; ``False`` when at most one runs."""
        if len(self.running) < 2:
            return False
        newest = max(enumerate(self.running), key=lambda item: (item[1].submitted, item[0]))[1]
        self.running.remove(newest)
        self.preemptions += 1
        _log.debug("preempting the sequence of slot %d (%d cells)", newest.slot, newest.pos)
        try:
            newest.on_grid = False  # decoded beside others: its entry is dropped once the worker is idle
            self._keep(newest, pinned=False)
            self.cache.free_cells(newest.slot)
        finally:
            newest.lease.release()
            newest.suspend()
            self.preempted.appendleft(newest)
        return True

    def _restart(self, seq: ActiveSequence, lease: Lease) -> None:
        """Re-admit a preempted sequence: a new slot (and drafter), and what the prefix cache kept of it."""
        seq.resume(lease, self.cache.new_block())
        if seq.spec is not None and self.speculator is not None:
            seq.spec.drafter = self.speculator.drafter(seq.request, lease.seq_id)
        self._lend_cells(seq)
        self.running.append(seq)

    def _end_preempted(self, seq: ActiveSequence, reason: FinishReason, error: BaseException | None = None) -> None:
        """End a preempted sequence (cancelled, or the worker closes): it holds no cells and no slot."""
        finished = seq.finished(reason, time.perf_counter(), error)
        try:
            seq.close()
        finally:
            seq.request.publish(finished)

    # -- after the step --------------------------------------------------------------
    def update(self, plan: StepPlan, output: StepOutput) -> None:
        """Turn the step's tokens into events; end what ended (prefixes to pin end once prefilled)."""
        speculator = self.speculator
        if speculator is not None and not plan.chunks:  # every row had logits: what the cost curve measures
            speculator.cost.observe(output.rows, output.seconds)
        prompt_rows = sum(len(chunk) for _, chunk in plan.chunks)
        self.pace.observe(output.rows - prompt_rows, prompt_rows, output.seconds)
        for seq, _ in plan.chunks:
            if seq.request.pin and not seq.prefilling:
                self._retire(seq, "stop")
        now = time.perf_counter()
        for seq, placed in output.sampled:
            if placed.error is not None or placed.chosen is None:
                self._retire(seq, "error", placed.error)
                continue
            events: list[TokenEvent] = []
            logprobs = placed.logprobs
            for i, token in enumerate(placed.chosen):
                event = seq.advance(token, now, logprobs[i] if logprobs is not None else None)
                if event is not None:
                    events.append(event)
                if seq.reason is not None:
                    seq.pos = min(seq.pos, seq.n_text)  # what the cache may keep
                    break
            if seq.reason is not None or events:
                self._emit(seq, tuple(events))

    def _emit(self, seq: ActiveSequence, tokens: tuple[TokenEvent, ...]) -> None:
        """Publish one step's tokens of ``seq`` (with its end, if it ended)."""
        if seq.reason is None:
            if tokens:
                seq.request.publish(Step(tokens, seq.take_prompt_logprobs()))
            return
        self._retire(seq, seq.reason, step=Step(tokens, seq.take_prompt_logprobs()) if tokens else None)

    def _retire(
        self,
        seq: ActiveSequence,
        reason: FinishReason,
        error: BaseException | None = None,
        step: Step | None = None,
    ) -> None:
        """Free the slot and its KV cells, then tell the request it ended.

        The request is told in a ``finally``: whatever fails while freeing, its
        caller (which waits, shielded, for this answer) is answered.
        """
        finished = Finished(
            "error", time.perf_counter(), len(seq.request.prompt_tokens), error, sequence=seq.request.sequence
        )
        try:
            finished = seq.finished(reason, time.perf_counter(), error)
            self.running.remove(seq)
            if reason != "error":
                self._keep(seq, pinned=seq.request.pin and reason == "stop")
            else:
                self.cache.forget(on_grid=seq.on_grid)
            self.cache.free_cells(seq.slot)
            seq.lease.release()
            seq.close()
        finally:
            seq.request.publish(*((step, finished) if step is not None else (finished,)))

    def _keep(self, seq: ActiveSequence, *, pinned: bool) -> None:
        """Hand the cells of an ended sequence to the prefix cache (its state is whole between steps).

        Never cells of a failed sequence: a step that raised may have left them half written.
        """
        try:
            self.cache.store(seq.slot, seq.kv_tokens(), seq.runs(), pinned=pinned, on_grid=seq.on_grid)
        except Exception:  # the cache is an optimisation: a failure here only loses the entry
            _log.exception("caching a prefix failed")

    # -- failures --------------------------------------------------------------------
    def retire_all(self, error: BaseException) -> None:
        """End every running sequence with ``error``; one that fails to retire does not stop the rest."""
        for seq in list(self.running):
            try:
                self._retire(seq, "error", error)
            except Exception:
                _log.exception("retiring a sequence failed")

    def fail_all(self, error: BaseException) -> None:
        """Answer everything with ``error`` (the worker closes or crashed)."""
        self.retire_all(error)
        while self.exclusive:
            self.exclusive.popleft().fail(error)
        reads, self.reads = self.reads, []
        for job in reads:
            job.fail(error, self.cache)
        preempted, self.preempted = self.preempted, deque()
        for seq in preempted:
            self._end_preempted(seq, "error", error)
        waiting, self.waiting = self.waiting, deque()
        for request, submitted in waiting:
            end_unstarted(request, submitted, "error", error)


def end_unstarted(request: Request, submitted: float, reason: FinishReason, error: BaseException | None = None) -> None:
    """End a request that never reached a slot (cancelled while waiting, or failed)."""
    request.publish(
        Finished(
            reason,
            time.perf_counter(),
            len(request.prompt_tokens),
            error,
            submitted=submitted,
            sequence=request.sequence,
        )
    )
