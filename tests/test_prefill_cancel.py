"""Cancellation is within one prefill chunk on every engine, however long the prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from oxillama_py import (
    CancellationToken,
    Engine,
    EngineConfig,
    GenerationCancelled,
    PromptLookup,
    SpeculativeConfig,
    SpeculativeEngine,
)

pytestmark = pytest.mark.anyio

# About 4,000 tokens: eight or more chunks of n_batch=512.
LONG_PROMPT = " ".join(f"Item {i}: the {i}th line of a long list." for i in range(360))


def _engines(model_path: Path) -> Iterator[tuple[str, Engine]]:
    target = EngineConfig(model_path, n_ctx=8192, max_concurrency=1, n_batch=512)
    yield "plain", Engine(target)
    yield "lookup", SpeculativeEngine(SpeculativeConfig(target, PromptLookup()))
    draft = EngineConfig(model_path, n_ctx=8192, n_batch=512)
    yield "draft-model", SpeculativeEngine(SpeculativeConfig(target, draft))


@pytest.fixture(scope="module")
def long_engines(model_path: Path) -> Iterator[dict[str, Engine]]:
    engines = dict(_engines(model_path))
    try:
        for engine in engines.values():
            engine.load_model()
        yield engines
    finally:
        for engine in engines.values():
            engine.close()


@pytest.mark.parametrize("kind", ["plain", "lookup", "draft-model"])
async def test_cancel_during_a_4000_token_prefill_ends_within_one_chunk(
    long_engines: dict[str, Engine], kind: str
) -> None:
    engine = long_engines[kind].async_engine()
    n_prompt = len(await engine.tokenize(LONG_PROMPT))
    assert n_prompt > 3500
    token = CancellationToken()
    steps: dict[str, int] = {}

    async def generate() -> None:
        with pytest.raises(GenerationCancelled):
            await engine.generate(LONG_PROMPT, 16, temperature=0, cancel_token=token)
        steps["end"] = engine.stats.decode_steps

    start = engine.stats.decode_steps
    async with anyio.create_task_group() as group:
        group.start_soon(generate)
        while engine.stats.decode_steps < start + 1:  # the first chunk is decoded
            await anyio.sleep(0.001)
        steps["cancel"] = engine.stats.decode_steps
        token.cancel()
    # The chunk in flight when cancel() was called may finish; no other one starts.
    assert steps["end"] - steps["cancel"] <= 1, steps
    assert steps["end"] - start < n_prompt // 512
    assert engine.stats.active == 0
    assert (await engine.generate("Count: 1, 2, 3,", 6, temperature=0)).startswith(" 4, 5")
