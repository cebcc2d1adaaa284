"""The scheduler: which requests decode, how many prompt tokens each step takes, and when the weights may change.

It owns the waiting line (first come, first served), the running set (one
slot each), the exclusive barrier (a task that changes the weights runs once
the running generations have ended, and none starts in between; one withdrawn
while it waits holds nothing back), the embedding and logits reads, admission
(a slot from the id pool, the longest correct cached prefix lent by the prefix
cache), cancellation, and each step's prefill budget: generating rows first,
prompts share what they leave of ``n_batch``, drafts go where the cost model
says they pay. :meth:`Scheduler.schedule` returns a :class:`~.plan.StepPlan`,
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
from .plan import StepOutput, StepPlan, Task

if TYPE_CHECKING:
    from .drafters import Draft
    from .ids import Lease, SeqIdPool
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

    def __init__(self, n_batch: int, ids: SeqIdPool, cache: PrefixCache, start: StartSequence) -> None:
        self.n_batch = n_batch
        self.ids = ids
        self.cache = cache
        self.start = start
        """Makes the sequence of an admitted request (its sampler or speculation); may raise for that request."""
        self.speculator: Speculator | None = None
        """Set once a request asks for speculation: it plans the drafts."""
        self.waiting: deque[tuple[Request, float]] = deque()
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
        return not (self.running or self.waiting or self.exclusive or self.reads)

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
        running = self.running
        if len(running) > 1:  # their cells interleave: off the prefix cache's grid
            for seq in running:
                seq.on_grid = False
        generating = [seq for seq in running if not seq.prefilling]
        room = self.n_batch - len(generating)
        scored_rows = SCORED_ROWS
        chunks: list[tuple[ActiveSequence, list[int]]] = []
        for seq in running:
            if room <= 0:
                break
            if seq.prefilling:
                take = room
                if seq.prompt_logprobs is not None:  # every row keeps its logits: bounded per step
                    take = min(take, scored_rows)
                    if take <= 0:
                        continue
                    scored_rows -= take
                chunk = seq.prompt[seq.n_prefilled : seq.n_prefilled + take]
                chunks.append((seq, chunk))
                room -= len(chunk)
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
        if self.waiting and not self.running:
            self.cache.drop_off_grid()  # a lone request gets a fresh-like cell layout
        while self.waiting:
            lease = self.ids.slot()
            if lease is None:
                return
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
        others = (Holder(s.slot, s.kv_tokens(), s.runs(), s.on_grid) for s in self.running)
        if seq.prompt_logprobs is not None:  # its prompt's logits are wanted: every row is decoded
            return
        prompt = np.asarray(seq.prompt, dtype=np.int32)
        reuse = cache.lookup(prompt, others, lone=not self.running, count=not seq.request.pin)
        if reuse is not None:
            cache.share(reuse, seq.slot)
            seq.reuse(reuse.n_tokens, reuse.runs, reuse.on_grid)

    # -- after the step --------------------------------------------------------------
    def update(self, plan: StepPlan, output: StepOutput) -> None:
        """Turn the step's tokens into events; end what ended (prefixes to pin end once prefilled)."""
        speculator = self.speculator
        if speculator is not None and not plan.chunks:  # every row had logits: what the cost curve measures
            speculator.cost.observe(output.rows, output.seconds)
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
                    seq.pos = min(seq.pos, len(seq.prompt) + len(seq.generated))  # what the cache may keep
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
        finished = Finished("error", time.perf_counter(), len(seq.prompt), error, sequence=seq.request.sequence)
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
