"""The event loop never blocks on llama.cpp: no llama.cpp call runs on the loop's thread.

Checked by what runs where, not by timing the loop (which depends on the
machine): every llama.cpp function the library calls is wrapped to record its
calling thread while a generation, a batch, a stream and token calls run.
The loop's lag is measured in ``benchmarks/batching.py``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import llama_cpp
import pytest

from oxillama_py import AsyncEngine

pytestmark = pytest.mark.anyio

WATCHED = [
    "llama_decode",
    "llama_tokenize",
    "llama_token_to_piece",
    "llama_vocab_is_eog",
    "llama_sampler_sample",
    "llama_sampler_chain_init",
    "llama_memory_seq_rm",
    "llama_get_logits_ith",
]


@pytest.fixture
def callers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, set[int]]]:
    seen: dict[str, set[int]] = {name: set() for name in WATCHED}
    for name in WATCHED:
        original = getattr(llama_cpp, name)

        @functools.wraps(original)
        def wrapper(*args: Any, _name: str = name, _original: Any = original) -> Any:
            seen[_name].add(threading.get_ident())
            return _original(*args)

        monkeypatch.setattr(llama_cpp, name, wrapper)
    yield seen


async def test_no_llama_cpp_call_on_the_loop_thread(aengine: AsyncEngine, callers: dict[str, set[int]]) -> None:
    loop_thread = threading.get_ident()
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        result = await aengine.complete("Once upon a time", 16, temperature=0.7, seed=3, progress=lambda e: None)
        await aengine.complete_batch(["One", "Two", "Three"], 8, temperature=0)
        async for _ in aengine.stream("Hello", 4, temperature=0):
            pass
        ids = await aengine.tokenize("Hello there")
        await aengine.detokenize(ids)
        done.set()
    assert result.completion_tokens == 16
    assert all(callers[name] for name in ("llama_decode", "llama_tokenize", "llama_token_to_piece"))
    on_loop = sorted(name for name, threads in callers.items() if loop_thread in threads)
    assert on_loop == [], f"llama.cpp called on the event loop's thread: {on_loop}"
    assert ticks > 10  # the loop kept running meanwhile
