"""The decode worker thread: continuous batching of every active request.

One thread per loaded model owns the model and its context from ``start`` to
``close``; nothing else touches them. Each step decodes one token of every
generating sequence plus chunks of waiting prompts in a single ``llama_decode``,
samples each sequence with its own sampler, and publishes each request's
events to its loop without waiting for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..bus import Finished, FinishReason, Request, Step, TokenEvent
from ..config import EngineConfig
from ..errors import GenerateError, KvCacheFullError, OxiLlamaError
from ..llama import Context, Model, Sampler
from ..llama.adapter import LoraAdapter
from ..llama.context import BatchEntry
from ..stats import EngineStats, PrefixCacheStats
from .cost import POINTS, StepCost, plan
from .drafters import Draft
from .prefix_cache import LLAMA_MAX_SEQ, Holder, PrefixCache
from .sequence import Sequence
from .speculation import NO_DRAFT, Drafting, Laid, Speculation

__all__ = ["DecodeWorker"]

_log = logging.getLogger("oxillama_py.decode")
_CLOSE = None
EMBED_IDS = 8
"""Sequence ids kept for texts being embedded (that many texts are decoded together)."""
_T = TypeVar("_T")


class _Task:
    """A function to run on the decode thread between two steps (it owns the context)."""

    __slots__ = ("exclusive", "func", "future")

    def __init__(self, func: Callable[[DecodeWorker], Any], *, exclusive: bool = False) -> None:
        self.func = func
        self.exclusive = exclusive
        self.future: Future[Any] = Future()

    def run(self, worker: DecodeWorker) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.func(worker))
            except BaseException as exc:
                self.future.set_exception(exc)

    def fail(self, error: BaseException) -> None:
        """Answer without running (the worker is closing)."""
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(error)


class DecodeWorker:
    """Owns one model's llama.cpp state; serves requests from any thread and loop."""

    def __init__(
        self, config: EngineConfig, model_path: Path, name: str = "oxillama-decode", *, trace: bool = False
    ) -> None:
        self.config = config
        self.model_path = model_path
        self.name = name
        self.trace = trace
        self.speculation: Drafting | None = None
        self.cost: StepCost | None = None
        self._model: Model | None = None
        self.context: Context | None = None
        self.cache: PrefixCache | None = None
        self.embed_ids: list[int] = []
        self.loras: dict[Path, tuple[LoraAdapter, float]] = {}
        self.weights_version = 0
        """Bumped whenever the adapters change: KV cells computed before then are not reused."""
        self.decode_calls = 0
        self._queue: queue.SimpleQueue[Request | _Task | None] = queue.SimpleQueue()
        self._waiting: deque[tuple[Request, float]] = deque()
        self._exclusive: deque[_Task] = deque()  # waiting for the running generations to end
        self._active: list[Sequence] = []
        self._free = list(range(self.n_slots))
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def model(self) -> Model:
        """The loaded model (its calls are safe from any thread, and fail cleanly once it is freed)."""
        assert self._model is not None, "the worker has not loaded its model"
        return self._model

    # -- any thread ------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread and wait until the model is loaded (blocking)."""
        thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread = thread
        thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            thread.join()
            raise self._startup_error

    def submit(self, request: Request) -> None:
        """Queue a request; a closed worker answers it at once with an error."""
        with self._lock:
            if not self._closed:
                self._queue.put(request)
                return
        _end_unstarted(request, time.perf_counter(), "error", GenerateError("the engine is closed"))

    def run(self, func: Callable[[DecodeWorker], _T], *, exclusive: bool = False) -> Future[_T]:
        """Run ``func(worker)`` on the decode thread between two steps; its result comes in the future.

        For work on the context that is not a generation (clearing the cache,
        embeddings): it waits at most one step, and the step after it sees its
        effect. An ``exclusive`` function (changing the weights) runs once the
        generations decoding now have ended, each with the weights it started
        with; none starts in between.
        """
        task = _Task(func, exclusive=exclusive)
        with self._lock:
            if not self._closed:
                self._queue.put(task)
                return task.future
        task.fail(GenerateError("the engine is closed"))
        return task.future

    def close(self) -> None:
        """Fail what is still queued or decoding, stop the thread, free llama.cpp (blocking)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_CLOSE)
        if self._thread is not None:
            self._thread.join()

    def stats(self) -> EngineStats:
        """A snapshot for any thread: list lengths and counters read under the GIL."""
        return EngineStats(
            loaded=not self._closed,
            slots=self.n_slots,
            active=len(self._active),
            waiting=len(self._waiting) + self._queue.qsize(),
            decode_steps=self.decode_calls,
            prefix_cache=self.cache.snapshot if self.cache is not None else PrefixCacheStats(),
            weight_changes=len(self._exclusive),
        )

    # -- the worker thread -------------------------------------------------------------
    def _open(self) -> None:
        config = self.config
        self._model = Model(self.model_path)
        capacity = config.prefix_cache_capacity
        n_embed = min(EMBED_IDS, LLAMA_MAX_SEQ - self.n_slots)
        n_ids = min(PrefixCache.ids_for(self.n_slots, capacity), LLAMA_MAX_SEQ - self.n_slots - n_embed)
        self.context = Context(
            self._model,
            n_ctx=config.n_ctx,
            n_batch=config.n_batch,
            n_threads=config.n_threads,
            n_seq_max=self.n_slots + n_ids + n_embed,
            flash_attn=config.flash_attn,
        )
        self.cache = PrefixCache(self.context.memory, self._model.n_swa, capacity, self.n_slots, n_ids)
        first = self.n_slots + n_ids
        self.embed_ids = list(range(first + n_embed - 1, first - 1, -1))  # popped from the end: lowest first
        if config.speculative is not None:
            self._drafting()

    def _drafting(self) -> Drafting:
        """The engine's speculation, set up on first use: drafters, and the measured cost of a step."""
        if self.speculation is None:
            self.speculation = Drafting(self.config, self.model, self.n_slots)
            self.cost = self._measure_steps()
        return self.speculation

    def _measure_steps(self) -> StepCost:
        """Time decodes of 1 to 64 tokens (every row with logits, as a verified draft has) on a spare ``seq_id``."""
        context = self.context
        assert context is not None
        if not self.embed_ids:
            return StepCost.guess()
        spare = self.embed_ids[-1]
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

    def _main(self) -> None:
        try:
            self._open()
        except BaseException as exc:
            self._startup_error = exc
            self._release()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._serve()
        except BaseException:  # a bug here must not leave callers waiting forever
            _log.exception("decode worker crashed")
            with self._lock:
                self._closed = True
            self._fail_all(GenerateError("the decode worker crashed"))
        finally:
            self._release()

    def _release(self) -> None:
        if self.speculation is not None:
            self.speculation.close()
        if self.context is not None:
            self.context.close()
        for adapter, _ in self.loras.values():
            adapter.free()
        self.loras = {}
        if self._model is not None:
            self._model.close()

    def _serve(self) -> None:
        while True:
            if not self._intake(block=not (self._active or self._waiting or self._exclusive)):
                self._fail_all(GenerateError("the engine was closed during the generation"))
                return
            self._drop_cancelled()
            if self._exclusive:  # one withdrawn while it waited holds nothing back
                self._exclusive = deque(task for task in self._exclusive if not task.future.cancelled())
            while self._exclusive and not self._active:
                self._exclusive.popleft().run(self)
            if not self._exclusive:
                self._admit()
            if self._active:
                self._guarded_step()

    def _intake(self, *, block: bool) -> bool:
        """Move newly submitted requests to the waiting line; ``False`` once closing."""
        get: Callable[..., Request | _Task | None] = self._queue.get
        try:
            item = get() if block else self._queue.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is _CLOSE:
                return False
            if isinstance(item, _Task):
                if item.exclusive:
                    self._exclusive.append(item)
                else:
                    item.run(self)
            else:
                assert item is not None
                self._waiting.append((item, time.perf_counter()))
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.request.cancel_requested()]:
            self._retire(seq, "cancelled")
        if any(request.cancel_requested() for request, _ in self._waiting):
            keep: deque[tuple[Request, float]] = deque()
            for request, submitted in self._waiting:
                if request.cancel_requested():
                    _end_unstarted(request, submitted, "cancelled")
                else:
                    keep.append((request, submitted))
            self._waiting = keep

    def _admit(self) -> None:
        if self._waiting and not self._active:
            assert self.cache is not None
            self.cache.drop_off_grid()  # a lone request gets a fresh-like cell layout
        while self._waiting and self._free:
            request, submitted = self._waiting.popleft()
            slot = self._free.pop(0)
            try:
                seq = self._new_sequence(request, slot, submitted)
            except Exception as exc:
                self._free.insert(0, slot)
                _end_unstarted(request, submitted, "error", exc)
                continue
            self._lend(seq)
            self._active.append(seq)

    def _lend(self, seq: Sequence) -> None:
        """Give a new sequence the longest cached prefix of its prompt that is still correct."""
        cache = self.cache
        assert cache is not None
        seq.block = cache.new_block()
        others = (Holder(s.slot, s.kv_tokens(), s.runs(), s.solo) for s in self._active)
        prompt = np.asarray(seq.prompt, dtype=np.int32)
        reuse = cache.lookup(prompt, others, lone=not self._active, count=not seq.request.pin)
        if reuse is not None:
            cache.share(reuse, seq.slot)
            seq.reuse(reuse.n_tokens, reuse.runs, reuse.on_grid)

    @property
    def n_slots(self) -> int:
        """Sequences decoded together: each holds a ``seq_id`` of the context."""
        return self.config.max_concurrency

    def set_loras(self, loras: dict[Path, tuple[LoraAdapter, float]]) -> None:
        """Decode with these adapters from now on (an exclusive task: no generation is running).

        Cached cells were computed with the old weights, so the prefix cache is
        emptied; adapters left out are freed.
        """
        assert self.context is not None and self.cache is not None
        self.context.set_adapters(list(loras.values()))
        old, self.loras = self.loras, dict(loras)
        self.weights_version += 1
        self.cache.clear()
        for path, (adapter, _) in old.items():
            if path not in loras or loras[path][0] is not adapter:
                adapter.free()

    def _new_sequence(self, request: Request, slot: int, submitted: float) -> Sequence:
        model = self.model
        if not request.speculative:
            return Sequence(
                request, slot, model, submitted, Sampler(model, request.sampler, request.seed, request.grammar)
            )
        drafting = self._drafting()
        seq = Sequence(request, slot, model, submitted, None)
        seq.spec = Speculation(request, model, drafting.drafter(request, slot), drafting.shared, trace=self.trace)
        return seq

    def _guarded_step(self) -> None:
        try:
            self.step()
        except Exception as exc:
            _log.exception("decode step failed")
            self._retire_all(exc)

    def step(self) -> None:
        """One ``llama_decode`` over every active sequence (and the drafts that pay), then sample each.

        The prompts waiting to prefill get the rows the generating sequences
        leave; speculating sequences (generating, or ending their prompt now)
        share what is still left, as :meth:`_drafts` plans.
        """
        assert self.context is not None
        ctx = self.context
        if len(self._active) > 1:  # their cells interleave: off the prefix cache's grid
            for seq in self._active:
                seq.solo = False
        generating = [seq for seq in self._active if not seq.prefilling]
        room = ctx.n_batch - len(generating)
        chunks: list[tuple[Sequence, list[int]]] = []
        for seq in self._active:
            if room <= 0:
                break
            if seq.prefilling:
                chunk = seq.prompt[seq.n_prefilled : seq.n_prefilled + room]
                chunks.append((seq, chunk))
                room -= len(chunk)
        ending = [seq for seq, chunk in chunks if seq.n_prefilled + len(chunk) == len(seq.prompt)]
        speculating = [seq for seq in (*generating, *ending) if seq.spec is not None]
        drafts = self._drafts(speculating, ctx.n_batch - room, room) if speculating else {}
        entries: list[BatchEntry] = []
        sampled: list[tuple[Sequence, Laid]] = []
        pinned: list[Sequence] = []  # prefixes to cache: prefilled, never sampled
        for seq in generating:
            sampled.append((seq, _lay(entries, seq, [seq.last_token], True, drafts.get(seq))))
        for seq, chunk in chunks:
            last = seq.n_prefilled + len(chunk) == len(seq.prompt)
            pin = seq.request.pin
            laid = _lay(entries, seq, chunk, last and not pin, drafts.get(seq))
            seq.n_prefilled += len(chunk)
            if last and pin:
                pinned.append(seq)
            elif last:
                sampled.append((seq, laid))
            elif seq.spec is not None:
                seq.spec.prefilled(laid, seq.prompt, seq.n_prefilled)
        began = time.perf_counter()
        self._decode(entries)
        if self.cost is not None and not chunks:  # every row has logits: what the curve measures
            self.cost.observe(len(entries), time.perf_counter() - began)
        self.decode_calls += 1
        for seq in pinned:
            self._retire(seq, "stop")
        now = time.perf_counter()
        for seq, laid in sampled:
            try:
                tokens = seq.choose(ctx, laid)
            except Exception as exc:
                self._retire(seq, "error", exc)
                continue
            rejected = len(laid.draft) - (len(tokens) - 1)
            if rejected > 0:  # the drafts the target did not take: this sequence's cells only
                ctx.remove(seq.slot, seq.pos - rejected, -1)
                seq.pos -= rejected
            events: list[TokenEvent] = []
            for token in tokens:
                event = seq.advance(token, now)
                if event is not None:
                    events.append(event)
                if seq.reason is not None:
                    seq.pos = min(seq.pos, len(seq.prompt) + len(seq.generated))  # what the cache may keep
                    break
            if seq.reason is not None or events:
                self._emit(seq, tuple(events))

    def _drafts(self, candidates: list[Sequence], fixed: int, room: int) -> dict[Sequence, Draft]:
        """The drafts of this step: as many per sequence as :func:`~.cost.plan` finds worth their rows."""
        cost, setup = self.cost, self.speculation
        if cost is None or setup is None or room <= 0:
            return {}
        offers = [(seq.spec.acceptance.rate, min(setup.max_draft, seq.remaining - 1)) for seq in candidates if seq.spec]
        # A batch lasts as long as its longest sequence: tokens of one that is ahead are worth less.
        horizon = max(seq.remaining for seq in self._active)
        weights = [seq.remaining / horizon for seq in candidates]
        counts = plan(cost, fixed, offers, setup.draft_cost, limit=room, weights=weights)
        if not any(counts):  # not even full drafts would pay: plain batching, no drafting at all
            return {}
        drafts: dict[Sequence, Draft] = {}
        if setup.model_drafts:  # a draft model's drafts cost decodes: draft exactly what was planned
            for seq, count in zip(candidates, counts, strict=True):
                if count:
                    drafts[seq] = seq.draft(count)
            setup.observe_drafters(seq.spec.drafter for seq in candidates if seq.spec is not None)
            return drafts
        offered = {seq: seq.draft(most) for seq, (_, most) in zip(candidates, offers, strict=True) if most > 0}
        offers = [
            (rate, len(offered[seq]) if seq in offered else 0)
            for seq, (rate, _) in zip(candidates, offers, strict=True)
        ]
        counts = plan(cost, fixed, offers, 0.0, limit=room, weights=weights)
        for seq, count in zip(candidates, counts, strict=True):
            if count:
                drafts[seq] = Draft(offered[seq].tokens[:count])
        return drafts

    def _decode(self, entries: Seq[BatchEntry]) -> None:
        """Decode, evicting cached prefixes (least recently used first) while the KV cache is full.

        llama.cpp changes nothing when it finds no room for a batch, so the
        same batch is simply tried again; a cached prefix never stops a request.
        """
        self.decode_extra(entries, 0)

    def decode_extra(self, entries: Seq[BatchEntry], held: int) -> None:
        """:meth:`_decode` for work beside the sequences (embeddings), which holds ``held`` cells already."""
        assert self.context is not None and self.cache is not None
        if self.cache.enabled:  # (a sequence's new cells may be counted twice here: room to spare)
            active = (r for s in self._active for r in s.runs())
            self.cache.make_room(len(entries) + held, self.context.n_ctx, active)
        while True:
            try:
                self.context.decode(entries)
                return
            except KvCacheFullError:
                if not self.cache.evict_one():
                    raise

    def _emit(self, seq: Sequence, tokens: tuple[TokenEvent, ...]) -> None:
        """Publish one step's tokens of ``seq`` (with its end, if it ended)."""
        if seq.reason is None:
            if tokens:
                seq.request.publish(Step(tokens))
            return
        self._retire(seq, seq.reason, step=Step(tokens) if tokens else None)

    def _retire(
        self,
        seq: Sequence,
        reason: FinishReason,
        error: BaseException | None = None,
        step: Step | None = None,
    ) -> None:
        """Free the slot and its KV cells, then tell the request it ended.

        The request is told in a ``finally``: whatever fails while freeing, its
        caller (which waits, shielded, for this answer) is answered.
        """
        assert self.context is not None
        finished = Finished("error", time.perf_counter(), len(seq.prompt), error, sequence=seq.request.sequence)
        try:
            finished = seq.finished(reason, time.perf_counter(), error)
            self._active.remove(seq)
            if reason != "error":
                self._keep(seq, pinned=seq.request.pin and reason == "stop")
            elif self.cache is not None:
                self.cache.forget(on_grid=seq.solo)
            self.context.remove(seq.slot)
            self._free.append(seq.slot)
            seq.close()
        finally:
            seq.request.publish(*((step, finished) if step is not None else (finished,)))

    def _keep(self, seq: Sequence, *, pinned: bool) -> None:
        """Hand the cells of an ended sequence to the prefix cache (its state is whole between steps).

        Never cells of a failed sequence: a step that raised may have left them half written.
        """
        assert self.cache is not None
        try:
            self.cache.store(seq.slot, seq.kv_tokens(), seq.runs(), pinned=pinned, on_grid=seq.solo)
        except Exception:  # the cache is an optimisation: a failure here only loses the entry
            _log.exception("caching a prefix failed")

    def _retire_all(self, error: BaseException) -> None:
        """End every active sequence with ``error``; one that fails to retire does not stop the rest."""
        for seq in list(self._active):
            try:
                self._retire(seq, "error", error)
            except Exception:
                _log.exception("retiring a sequence failed")

    def _fail_all(self, error: GenerateError) -> None:
        self._retire_all(error)
        pending = list(self._waiting)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Task):
                item.fail(error)
            elif item is not None:
                pending.append((item, time.perf_counter()))
        while self._exclusive:
            self._exclusive.popleft().fail(error)
        for request, submitted in pending:
            _end_unstarted(request, submitted, "error", error)
        self._waiting = deque()


def _end_unstarted(
    request: Request, submitted: float, reason: FinishReason, error: BaseException | None = None
) -> None:
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


def _lay(entries: list[BatchEntry], seq: Sequence, tokens: list[int], sample: bool, draft: Draft | None) -> Laid:
    """Append ``seq``'s tokens of this step (logits on the last if ``sample``) and its draft (logits on all)."""
    draft = draft or NO_DRAFT
    start = seq.pos
    slot = seq.slot
    last = len(tokens) - 1
    entries.extend(BatchEntry(token, start + i, slot, sample and i == last) for i, token in enumerate(tokens))
    index = len(entries) - 1
    entries.extend(BatchEntry(token, start + len(tokens) + j, slot, True) for j, token in enumerate(draft.tokens))
    seq.pos += len(tokens) + len(draft.tokens)
    return Laid(index, draft, start, [*tokens, *draft.tokens] if seq.spec is not None else [])
