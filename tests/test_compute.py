"""The shared compute thread: what an OpenMP build (pip's default) runs on, tested on any build.

``OXILLAMA_PY_SHARED_COMPUTE=1`` forces it, so a build without OpenMP (CI's)
exercises the same path as the README's install: every ``llama_decode`` of
every engine runs on the one ``oxillama-compute`` thread, and the output is
unchanged.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from oxillama_py import Engine, EngineConfig
from oxillama_py.llama import compute


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.setenv(compute.SHARED_COMPUTE_ENV, "1")
    compute.shared_compute.cache_clear()
    threads: list[str] = []
    original = llama_cpp.llama_decode

    @functools.wraps(original)
    def decode(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    try:
        yield threads
    finally:
        monkeypatch.undo()
        compute.shared_compute.cache_clear()


def test_two_engines_decode_on_the_one_compute_thread(shared: list[str], model_path: Path, reference: Any) -> None:
    assert compute.shared_compute()
    prompt = "1, 2, 3, 4,"  # no near-tie in 12 tokens: a batch of two may compare with a solo run
    with (
        Engine(EngineConfig(model_path, n_ctx=512, max_concurrency=1)) as a,
        Engine(EngineConfig(model_path, n_ctx=512, max_concurrency=2)) as b,
    ):
        texts = b.generate_batch([prompt, prompt], 12, temperature=0)
        text = a.generate(prompt, 12, temperature=0)
    assert text == reference.complete(prompt, 12)  # the same floating-point path, the same text
    assert texts == [text, text]
    assert shared and set(shared) == {"oxillama-compute"}


def test_errors_cross_back_and_the_thread_calls_itself_directly(shared: list[str]) -> None:
    assert compute.compute(lambda x: x + 1, 41) == 42
    with pytest.raises(ZeroDivisionError):
        compute.compute(lambda: 1 / 0)
    # A job that computes again (a nested call) runs in place instead of deadlocking.
    assert compute.compute(lambda: compute.compute(threading.current_thread)).name == "oxillama-compute"


def test_the_build_decides_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compute.SHARED_COMPUTE_ENV, raising=False)
    compute.shared_compute.cache_clear()
    try:
        assert compute.shared_compute() == compute.openmp_build()
    finally:
        compute.shared_compute.cache_clear()
    assert compute.openmp_build("CPU : SSE3 = 1 | OPENMP = 1 | REPACK = 1")
    assert not compute.openmp_build("CPU : SSE3 = 1 | REPACK = 1")


# -- the core budget (builds without OpenMP) ------------------------------------------------


def test_the_core_budget_lets_fitting_decodes_run_side_by_side_and_queues_the_rest() -> None:
    budget = compute.CoreBudget(2)
    order: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def decode(name: str, threads: int, hold: threading.Event | None = None) -> None:
        with budget.hold(threads):
            order.append(name)
            if hold is not None:
                first_in.set()
                assert hold.wait(10)

    first = threading.Thread(target=decode, args=("a", 1, release_first))
    first.start()
    assert first_in.wait(10)
    with budget.hold(1):  # one core is free: a one-thread decode fits beside it at once
        assert budget.in_use == 2
    waiting = [threading.Thread(target=decode, args=(name, 2)) for name in ("b", "c")]
    for thread in waiting:
        thread.start()
        while not budget._line or (thread is waiting[1] and len(budget._line) < 2):
            threading.Event().wait(0.001)
    assert order == ["a"]  # two threads do not fit beside "a": both wait, in line
    release_first.set()
    for thread in (first, *waiting):
        thread.join(10)
    assert order == ["a", "b", "c"] and budget.in_use == 0


def test_a_decode_asking_for_more_threads_than_cores_takes_them_all() -> None:
    budget = compute.CoreBudget(2)
    with budget.hold(8):
        assert budget.in_use == 2


def test_engines_with_all_threads_each_decode_in_turn_and_answer_right(
    monkeypatch: pytest.MonkeyPatch, model_path: Path, reference: Any
) -> None:
    """Without OpenMP, two engines with every core's thread never decode at once, and answer as alone."""
    monkeypatch.setenv(compute.SHARED_COMPUTE_ENV, "0")
    compute.shared_compute.cache_clear()
    inside, peak, lock = 0, 0, threading.Lock()
    original = llama_cpp.llama_decode

    @functools.wraps(original)
    def decode(*args: Any) -> Any:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        try:
            return original(*args)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    prompt = "1, 2, 3, 4,"
    config = EngineConfig(model_path, n_ctx=512, max_concurrency=1, n_threads=max(2, compute._cores()))
    results: dict[str, str] = {}
    try:
        with Engine(config) as one, Engine(config) as two:
            workers = [
                threading.Thread(target=lambda e=e, k=k: results.__setitem__(k, e.generate(prompt, 24, temperature=0)))
                for k, e in (("one", one), ("two", two))
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(120)
    finally:
        compute.shared_compute.cache_clear()
    assert results["one"] == results["two"] == reference.complete(prompt, 24)
    assert peak == 1  # each asked for every core: they took turns
