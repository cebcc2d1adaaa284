"""Embeddings on the real model: against llama-cpp-python, batched, and beside running generations."""

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


def test_embed_equals_llama_cpp_pythons_mean_pooled_hidden_states(small: Engine, model_path: Path) -> None:
    from llama_cpp import Llama

    llm = Llama(str(model_path), embedding=True, n_ctx=512, verbose=False)
    try:
        for text in ("Hello world", "The quick brown fox jumps over the lazy dog."):
            per_token = np.array(llm.embed(text))  # Gemma declares no pooling: one row per token
            reference = per_token.mean(axis=0)
            reference /= np.linalg.norm(reference)
            ours = small.embed_numpy(text)
            assert ours.dtype == np.float32 and ours.shape == (small.hidden_size(),)
            np.testing.assert_allclose(ours, reference, atol=1e-5)
    finally:
        llm.close()


def test_embed_shapes_norms_and_meaning(small: Engine) -> None:
    vector = small.embed("Hello world")
    assert isinstance(vector, list) and len(vector) == 640 and all(isinstance(x, float) for x in vector)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    cat, kitten, philosophy = small.embed_batch_numpy(["cat", "kitten", "philosophy"])
    assert float(cat @ kitten) > float(cat @ philosophy)
    assert small.embed("cat") != small.embed("philosophy")
    assert small.embed_batch_numpy([]).shape == (0, 640)


def test_batch_rows_equal_single_embeddings_and_long_texts(small: Engine) -> None:
    texts = ["cat", "a sentence about the weather " * 10, "word " * 700, "philosophy"]  # 700 > n_batch tokens
    batch = small.embed_batch_numpy(texts)
    assert batch.shape == (4, 640) and batch.dtype == np.float32
    for row, text in zip(batch, texts, strict=True):
        # Batched, a text's rows go through llama.cpp's other matmul kernels (a few rows at a time
        # take another path than many): the same vector up to rounding, not bit for bit.
        assert float(row @ small.embed_numpy(text)) > 0.999, text[:20]
        assert abs(float(np.linalg.norm(row)) - 1.0) < 1e-5
    many = [f"item number {i}" for i in range(20)]  # more texts than embedding sequences at once
    rows = small.embed_batch_numpy(many)
    for i in (0, 7, 8, 13, 19):
        similarity = rows @ small.embed_numpy(many[i])
        assert int(np.argmax(similarity)) == i and similarity[i] > 0.999  # each row is its own text's


def test_embedding_errors(small: Engine) -> None:
    with pytest.raises(TypeError, match="text must be a str"):
        small.embed(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of str"):
        small.embed_batch_numpy("one string")  # type: ignore[arg-type]
    with pytest.raises(KvCacheFullError, match="does not fit"):
        small.embed("word " * 5000)  # a text may use the whole context: n_ctx = 4096 cells
    assert small.embed("still fine") == small.embed("still fine")


def test_generation_text_is_untouched_by_embeddings(small: Engine) -> None:
    before = small.generate("The capital of France is", 12, temperature=0)
    small.embed_batch_numpy(["cat", "dog " * 50])
    assert small.generate("The capital of France is", 12, temperature=0) == before


@pytest.mark.anyio
async def test_embeddings_mixed_into_a_running_batch(small: Engine) -> None:
    prompts = ["1, 2, 3, 4,", "Monday, Tuesday, Wednesday,", "a, b, c, d,"]
    aengine: AsyncEngine = small.async_engine()
    solo = [await aengine.generate(p, 24, temperature=0) for p in prompts]
    texts = ["cat", "kitten " * 30, "philosophy"]
    alone = await aengine.embed_batch_numpy(texts)
    generated: dict[int, str] = {}
    embedded: list[np.ndarray] = []

    started = [anyio.Event() for _ in prompts]

    async def generate(i: int) -> None:
        generated[i] = await aengine.generate(prompts[i], 24, temperature=0, progress=lambda e: started[i].set())

    async def embed() -> None:
        for event in started:  # every generation has decoded its first token: they are decoding now
            await event.wait()
        for _ in range(3):
            embedded.append(await aengine.embed_batch_numpy(texts))

    async with anyio.create_task_group() as group:
        for i in range(len(prompts)):
            group.start_soon(generate, i)
        group.start_soon(embed)
    for i, prompt in enumerate(prompts):
        assert generated[i].startswith(PREDICTABLE[prompt]), (prompt, generated[i], solo[i])
    for rows in embedded:
        assert all(float(a @ b) > 0.999 for a, b in zip(rows, alone, strict=True))


@pytest.mark.anyio
async def test_embed_tokens_equals_embedding_the_text(aengine: AsyncEngine) -> None:
    """Token ids are embedded as given: the text's own tokens give the text's embedding, on every backend."""
    texts = ["Hello world", "A longer sentence about the weather in spring."]
    token_lists = [await aengine.tokenize(text) for text in texts]
    rows = await aengine.embed_tokens_numpy(token_lists)
    assert rows.dtype == np.float32 and rows.shape == (2, aengine.hidden_size())
    np.testing.assert_allclose(rows, await aengine.embed_batch_numpy(texts), atol=1e-5)
    assert (await aengine.embed_tokens_numpy([])).shape == (0, aengine.hidden_size())
    with pytest.raises(ValueError, match="empty"):
        await aengine.embed_tokens_numpy([[]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        await aengine.embed_tokens_numpy([[1, 10**9]])
    with pytest.raises(TypeError, match="ints"):
        await aengine.embed_tokens_numpy([[1, "2"]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="token_lists"):
        await aengine.embed_tokens_numpy("text")  # type: ignore[arg-type]
    with pytest.raises(KvCacheFullError):
        await aengine.embed_tokens_numpy([[2] * (aengine.config.n_ctx + 1)])
