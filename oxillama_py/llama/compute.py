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
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import llama_cpp

__all__ = ["SHARED_COMPUTE_ENV", "compute", "openmp_build", "shared_compute"]

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
    global _shared, _lock
    _shared = None
    _lock = threading.Lock()


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
