"""The decode worker: one thread per loaded model, looping schedule → run → update.

The thread owns the model and its context from ``start`` to ``close``;
nothing else touches them. Other threads talk to it through a queue:
requests, read jobs (embeddings, logits) and tasks (functions to run between
two steps, some of them exclusive: adapter changes). Each turn of the loop
takes what was queued, asks the :class:`~.scheduler.Scheduler` for a plan,
advances the reads, runs the due exclusive tasks, has the
:class:`~.runner.Runner` decode the batch, and hands its output back to the
scheduler, which publishes each request's events to its loop without waiting.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ..bus import Request
from ..config import EngineConfig, PromptLookup
from ..errors import GenerateError, KvCacheFullError
from ..llama import Context, Model, Sampler
from ..lora import check_adapter
from ..stats import EngineStats, PrefixCacheStats
from .adapters import AdapterSet
from .draft_model import DraftModel
from .ids import Lease, SeqIdPool
from .kv_budget import KvBudget
from .pace import PrefillPace
from .persist import SavedPrefix, restore_prefixes, save_prefixes
from .plan import StepPlan, Task
from .prefix_cache import PrefixCache
from .reads import ReadJob
from .runner import Runner
from .scheduler import Scheduler, end_unstarted
from .sequence import ActiveSequence
from .speculation import SequenceSpeculation, Speculator

__all__ = ["DecodeWorker"]

_log = logging.getLogger("oxillama_py.decode")
_CLOSE = None
_T = TypeVar("_T")


class DecodeWorker:
    """Owns one model's llama.cpp state; serves requests from any thread and loop."""

    def __init__(
        self, config: EngineConfig, model_path: Path, name: str = "oxillama-decode", *, trace: bool = False
    ) -> None:
        self.config = config
        self.model_path = model_path
        self.name = name
        self.trace = trace
        self._model: Model | None = None
        self.context: Context | None = None
        self.cache: PrefixCache | None = None
        self.ids: SeqIdPool | None = None
        self.scheduler: Scheduler | None = None
        self.runner: Runner | None = None
        self.speculator: Speculator | None = None
        self.adapters = AdapterSet()
        self._queue: queue.SimpleQueue[Request | Task | ReadJob | None] = queue.SimpleQueue()
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

    @property
    def n_slots(self) -> int:
        """Sequences decoded together: each holds a ``seq_id`` of the context."""
        return self.config.max_concurrency

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
        if not self._put(request):
            end_unstarted(request, time.perf_counter(), "error", GenerateError("the engine is closed"))

    def run(self, func: Callable[[DecodeWorker], _T], *, exclusive: bool = False) -> Future[_T]:
        """Run ``func(worker)`` on the decode thread between two steps; its result comes in the future.

        It waits at most one step, and the step after it sees its effect. An
        ``exclusive`` function (changing the weights) runs once the generations
        decoding now have ended, each with the weights it started with; none
        starts in between. Cancelling the future before it runs withdraws it.
        """
        return self._task(partial(func, self), exclusive=exclusive)

    def read(self, token_lists: list[list[int]], *, logits: bool) -> Future[npt.NDArray[np.float32]]:
        """Embeddings (L2-normalised, pooled) or last-token logits of each token list, one ``float32`` row each.

        Decoded between generation steps, at most ``n_batch`` tokens a step.
        Cancelling the future withdraws the job; its ids go back at the next step.
        """
        job = ReadJob.of(token_lists, logits=logits)
        if not self._put(job) and job.future.set_running_or_notify_cancel():
            job.future.set_exception(GenerateError("the engine is closed"))
        return job.future

    def clear_cache(self) -> Future[None]:
        """Empty the prefix cache, pinned entries too (generations in flight keep their own cells)."""
        return self._task(self._clear_cache)

    def set_lora(self, path: Path, scale: float | None) -> Future[None]:
        """Apply the adapter of ``path`` at ``scale`` (load, or rescale), or remove it (``None``): exclusive.

        Applying empties the prefix cache (its cells were computed with the old
        weights). Removing one not applied raises ``ValueError``; a file whose
        tensors do not fit raises :class:`~oxillama_py.LoadError`; a future
        cancelled before it runs changes nothing.
        """
        return self._task(partial(self._change_lora, path, scale), exclusive=True)

    def lora_adapters(self) -> dict[Path, float]:
        """The applied adapters' files and scales (any thread)."""
        return self.adapters.applied()

    def save_state(self) -> Future[tuple[list[SavedPrefix], list[tuple[Path, float]]]]:
        """The cached prefixes worth saving and the adapters they were computed with, read in one task."""
        return self._task(self._save_state)

    def restore_prefixes(self, prefixes: list[SavedPrefix]) -> Future[int]:
        """Put saved prefixes back into the cache (a fresh, idle engine); how many fitted."""
        return self._task(partial(self._restore_prefixes, prefixes))

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
        scheduler, runner, cache = self.scheduler, self.runner, self.cache
        return EngineStats(
            loaded=not self._closed,
            slots=self.n_slots,
            active=len(scheduler.running) if scheduler is not None else 0,
            waiting=(len(scheduler.waiting) + len(scheduler.preempted) if scheduler is not None else 0)
            + self._queue.qsize(),
            decode_steps=runner.steps if runner is not None else 0,
            prefix_cache=cache.snapshot if cache is not None else PrefixCacheStats(),
            # a change withdrawn while it waits is not counted, though the loop drops it only at its next turn
            weight_changes=sum(not t.future.cancelled() for t in list(scheduler.exclusive)) if scheduler else 0,
            preemptions=scheduler.preemptions if scheduler is not None else 0,
        )

    def _put(self, item: Request | Task | ReadJob) -> bool:
        with self._lock:
            if not self._closed:
                self._queue.put(item)
                return True
        return False

    def _task(self, func: Callable[[], _T], *, exclusive: bool = False) -> Future[_T]:
        task = Task(func, exclusive=exclusive)
        if not self._put(task):
            task.fail(GenerateError("the engine is closed"))
        return task.future

    # -- tasks (the worker thread) -----------------------------------------------------
    def _clear_cache(self) -> None:
        assert self.cache is not None
        self.cache.clear()

    def _change_lora(self, path: Path, scale: float | None) -> None:
        assert self.context is not None and self.cache is not None
        self.adapters.change(self.model, self.context, path, scale)
        self.cache.clear()

    def _save_state(self) -> tuple[list[SavedPrefix], list[tuple[Path, float]]]:
        assert self.context is not None and self.cache is not None and self.ids is not None
        return save_prefixes(self.context, self.cache, self.ids), list(self.adapters.applied().items())

    def _restore_prefixes(self, prefixes: list[SavedPrefix]) -> int:
        assert self.context is not None and self.cache is not None
        return restore_prefixes(self.context, self.cache, prefixes)

    # -- the worker thread -------------------------------------------------------------
    def _open(self) -> None:
        config = self.config
        model = self._model = Model(self.model_path, shared=True)  # other engines on this file share its weights
        capacity = config.prefix_cache_capacity
        ids = self.ids = SeqIdPool.sized(self.n_slots, PrefixCache.ids_for(self.n_slots, capacity))
        context = self.context = Context(
            model,
            n_ctx=config.n_ctx,
            n_batch=config.n_batch,
            n_threads=config.n_threads,
            n_seq_max=ids.size,
            flash_attn=config.flash_attn,
        )
        cache = self.cache = PrefixCache(context.memory, model.n_swa, capacity, ids)
        budget = KvBudget(context.n_ctx, context.n_batch)
        pace = PrefillPace(config.step_target_ms)
        scheduler = self.scheduler = Scheduler(
            context.n_batch, ids, cache, self._start_sequence, budget, pace, exact_hits=config.prefix_cache_exact
        )
        self.runner = Runner(model, context, cache, ids, scheduler.running, self.adapters)
        for path, scale in config.lora:  # before any request: the whole life of the engine decodes with them
            self.adapters.change(model, context, check_adapter(path, model.architecture), scale)
        if config.speculative is not None:
            self._speculator()

    def _speculator(self) -> Speculator:
        """The engine's speculation, set up on first use: drafters, and the measured cost of a step."""
        if self.speculator is None:
            assert self.runner is not None and self.scheduler is not None
            spec = self.config.speculative
            draft = DraftModel(spec, self.model, self.n_slots) if isinstance(spec, EngineConfig) else None
            lookup = spec if isinstance(spec, PromptLookup) else None
            try:
                cost = self.runner.measure_steps()
            except BaseException:
                if draft is not None:
                    draft.close()
                raise
            speculator = Speculator(self.config.max_draft, cost, lookup=lookup, draft_model=draft)
            self.speculator = self.scheduler.speculator = speculator
        return self.speculator

    def _start_sequence(self, request: Request, lease: Lease, submitted: float) -> ActiveSequence:
        model = self.model
        if not request.speculative:
            sampler = Sampler(model, request.sampler, request.seed, request.matcher)
            return ActiveSequence(request, lease, model, submitted, sampler)
        speculator = self._speculator()
        seq = ActiveSequence(request, lease, model, submitted, None)
        drafter = speculator.drafter(request, lease.seq_id)
        seq.spec = SequenceSpeculation(request, model, drafter, speculator.shared, trace=self.trace)
        return seq

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
        if self.speculator is not None:
            self.speculator.close()
        if self.context is not None:
            self.context.close()
        self.adapters.close()
        if self._model is not None:
            self._model.close()

    def _serve(self) -> None:
        scheduler, runner = self.scheduler, self.runner
        assert scheduler is not None and runner is not None
        while True:
            if not self._intake(scheduler, block=scheduler.idle):
                self._fail_all(GenerateError("the engine was closed during the generation"))
                return
            plan = scheduler.schedule()
            for job in plan.reads:
                job.advance(runner)
            for task in plan.exclusive:
                task.run()
            if plan.decodes:
                self._step(scheduler, runner, plan)

    @staticmethod
    def _step(scheduler: Scheduler, runner: Runner, plan: StepPlan) -> None:
        try:
            scheduler.update(plan, runner.execute(plan))
        except KvCacheFullError as exc:  # no cells for the batch though the budget counted some: fragmentation
            if not scheduler.preempt_newest():  # the step changed nothing: it is planned again without the newest
                _log.exception("decode step failed")
                scheduler.retire_all(exc)
        except Exception as exc:
            _log.exception("decode step failed")
            scheduler.retire_all(exc)

    def _intake(self, scheduler: Scheduler, *, block: bool) -> bool:
        """Hand newly queued work to the scheduler (tasks that are not exclusive run now); ``False`` once closing."""
        get: Callable[..., Any] = self._queue.get
        try:
            item = get() if block else self._queue.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is _CLOSE:
                return False
            if isinstance(item, Task):
                if item.exclusive:
                    scheduler.add_exclusive(item)
                else:
                    item.run()
            elif isinstance(item, ReadJob):
                scheduler.add_read(item)
            else:
                scheduler.add(item, time.perf_counter())
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True

    def _fail_all(self, error: GenerateError) -> None:
        scheduler = self.scheduler
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Task):
                item.fail(error)
            elif isinstance(item, ReadJob):
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(error)
            elif item is not None:
                if scheduler is not None:
                    scheduler.add(item, time.perf_counter())
                else:
                    end_unstarted(item, time.perf_counter(), "error", error)
        if scheduler is not None:
            scheduler.fail_all(error)
