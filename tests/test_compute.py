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
