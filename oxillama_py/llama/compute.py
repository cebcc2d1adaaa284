"""Where llama.cpp computes: with an OpenMP build, on one thread for the whole process.

libgomp keeps a team of threads for every thread that has run a parallel
region, and once the teams of a process add up to more threads than cores, it
stops spinning at its barriers and sleeps instead: on 2 cores, two engines in
one process (or one idle beside another) decode ~20-40% slower, for as long as
both threads live. pip's default llama-cpp-python build uses OpenMP. So in such
a build every computing llama.cpp call (model load, context creation, decode)
of every engine runs on one process-wide compute thread, and there is only one
team. Builds without OpenMP (ggml's own threadpool) compute on the caller's
thread. ``OXILLAMA_PY_SHARED_COMPUTE=1`` or ``0`` overrides the choice.

On the caller's threads, engines that decode at once would each spin their
own ggml threads at barriers on the same cores: three engines of two threads
on two cores fell to 2.9 tok/s together (``benchmarks/adapters.py``). So
decodes draw their threads from one budget of the process's cores
(:class:`CoreBudget`): engines whose threads fit decode side by side, the
others take turns, first come first served.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import llama_cpp

__all__ = ["SHARED_COMPUTE_ENV", "CoreBudget", "compute", "compute_decode", "openmp_build", "shared_compute"]

SHARED_COMPUTE_ENV = "OXILLAMA_PY_SHARED_COMPUTE"
_T = TypeVar("_T")


def openmp_build(system_info: str | None = None) -> bool:
    if system_info is None:
        system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    return "OPENMP = 1" in system_info


@functools.cache
def shared_compute() -> bool:
    """Whether llama.cpp computes on the one shared thread (an OpenMP build, unless overridden)."""
    forced = os.environ.get(SHARED_COMPUTE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return openmp_build()


class _Job:
    __slots__ = ("args", "done", "error", "func", "result")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.func = func
        self.args = args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _ComputeThread:
    """A daemon thread that runs submitted calls one at a time, for the life of the process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="oxillama-compute", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.result = job.func(*job.args)
            except BaseException as exc:  # handed back to the caller, whatever it is
                job.error = exc
            job.done.set()

    def run(self, func: Callable[..., _T], *args: Any) -> _T:
        if threading.current_thread() is self._thread:
            return func(*args)
        job = _Job(func, args)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        result: _T = job.result
        return result


_lock = threading.Lock()
_shared: _ComputeThread | None = None


def _forget_after_fork() -> None:
    # A forked child has no compute thread, only a stale handle to its parent's (and maybe a held lock).
    global _shared, _lock, _budget
    _shared = None
    _lock = threading.Lock()
    _budget = CoreBudget(_cores())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def compute(func: Callable[..., _T], *args: Any) -> _T:
    """``func(*args)``, on the shared compute thread when the build needs one (blocking)."""
    if not shared_compute():
        return func(*args)
    global _shared
    if _shared is None:
        with _lock:
            if _shared is None:
                _shared = _ComputeThread()
    return _shared.run(func, *args)


class CoreBudget:
    """The process's cores, lent to decodes by their thread count; waiters are served in arrival order.

    A decode asking for more threads than there are cores takes them all.
    Waiting costs nothing when one engine decodes alone: the budget is free.
    """

    def __init__(self, cores: int) -> None:
        self.cores = max(1, cores)
        self.in_use = 0
        self._cond = threading.Condition(threading.Lock())
        self._line: deque[object] = deque()

    @contextmanager
    def hold(self, threads: int) -> Iterator[None]:
        need = min(max(1, threads), self.cores)
        with self._cond:
            if self._line or self.in_use + need > self.cores:
                ticket = object()
                self._line.append(ticket)
                self._cond.wait_for(lambda: self._line[0] is ticket and self.in_use + need <= self.cores)
                self._line.popleft()
                self._cond.notify_all()  # the next in line may fit beside this one
            self.in_use += need
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= need
                self._cond.notify_all()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_budget = CoreBudget(_cores())


def compute_decode(threads: int, func: Callable[..., _T], *args: Any) -> _T:
    """A decode of ``threads`` threads: on the shared thread (OpenMP), else within the core budget."""
    if shared_compute():
        return compute(func, *args)
    with _budget.hold(threads):
        return func(*args)
