"""Logits and DLPack on the real model: against llama-cpp-python, greedy decoding, and beside a running batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from test_batching import PREDICTABLE

from oxillama_py import AsyncEngine, Engine, EngineConfig, KvCacheFullError


@pytest.fixture(scope="module")
def small(model_path: Path) -> Iterator[Engine]:
    with Engine(EngineConfig(model_path, n_ctx=4096, max_concurrency=4, seed=7)) as engine:
        yield engine


def test_logits_equal_llama_cpp_pythons(small: Engine, model_path: Path) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=512, verbose=False)
    try:
        for text in ("The capital of France is", "def fibonacci(n):"):
            llm.reset()
            llm.eval(llm.tokenize(text.encode()))
            pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            reference = np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()
            ours = small.logits(text)
            assert ours.dtype == np.float32 and ours.shape == (small.vocab_size(),)
            np.testing.assert_allclose(ours, reference, atol=1e-4)
    finally:
        llm.close()


def test_greedy_generation_takes_the_argmax(small: Engine) -> None:
    for prompt in ("The capital of France is", "1, 2, 3, 4,", "Once upon a time"):
        first = small.complete(prompt, 1, temperature=0)
        assert first.token_ids == (int(np.argmax(small.logits(prompt))),)


def test_dlpack_objects_are_shared_not_copied(small: Engine) -> None:
    logits = small.logits_dlpack("Hello")
    view = np.from_dlpack(logits)
    assert view.shape == (small.vocab_size(),) and np.shares_memory(view, logits)
    np.testing.assert_array_equal(view, small.logits("Hello"))
    embedding = small.embeddings_dlpack("Hello")
    view = np.from_dlpack(embedding)
    assert view.shape == (1, small.hidden_size()) and np.shares_memory(view, embedding)
    np.testing.assert_allclose(view[0], small.embed_numpy("Hello"), atol=1e-6)


def test_torch_variants(small: Engine) -> None:
    try:
        import torch
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            small.logits_torch("Hello")
        with pytest.raises(ImportError, match="pip install torch"):
            small.embeddings_torch("Hello")
        return
    tensor = small.logits_torch("Hello")
    assert tuple(tensor.shape) == (small.vocab_size(),) and tensor.dtype == torch.float32
    assert tuple(small.embeddings_torch("Hello").shape) == (1, small.hidden_size())


def test_logits_errors(small: Engine) -> None:
    with pytest.raises(TypeError, match="text must be a str"):
        small.logits(None)  # type: ignore[arg-type]
    with pytest.raises(KvCacheFullError, match="does not fit"):
        small.logits("word " * 5000)  # more than n_ctx = 4096 cells
    long = small.logits("word " * 700)  # more than one batch of 512 tokens
    assert np.isfinite(long).all()


@pytest.mark.anyio
async def test_logits_beside_a_running_batch(small: Engine) -> None:
    aengine: AsyncEngine = small.async_engine()
    prompts = ["1, 2, 3, 4,", "Monday, Tuesday, Wednesday,"]
    alone = await aengine.logits("The capital of France is")
    generated: dict[int, str] = {}
    read: list[np.ndarray] = []

    started = [anyio.Event() for _ in prompts]

    async def generate(i: int) -> None:
        generated[i] = await aengine.generate(prompts[i], 24, temperature=0, progress=lambda e: started[i].set())

    async def logits() -> None:
        for event in started:  # every generation has decoded its first token: they are decoding now
            await event.wait()
        for _ in range(3):
            read.append(await aengine.logits("The capital of France is"))

    async with anyio.create_task_group() as group:
        for i in range(len(prompts)):
            group.start_soon(generate, i)
        group.start_soon(logits)
    for i, prompt in enumerate(prompts):
        assert generated[i].startswith(PREDICTABLE[prompt]), (prompt, generated[i])
    for row in read:
        assert int(np.argmax(row)) == int(np.argmax(alone))
        np.testing.assert_allclose(row, alone, atol=1e-3)
