"""The prefill budget on the real model: running streams keep decoding while a long prompt prefills in bounded
chunks, and a prompt alone takes the whole batch (the steps are counted, never timed)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from oxillama_py import AsyncEngine, EngineConfig

pytestmark = pytest.mark.anyio

LONG = " ".join(f"Line {i}: the {i}th entry of a long inventory of parts." for i in range(110))
STREAM = "Count from one to five hundred: 1, 2, 3, 4, 5, 6,"
N_BATCH = 512
FLOOR = 16  # the prompt rows a step takes whatever its target (decode/pace.py's MIN_CHUNK)


@pytest.fixture
async def paced(model_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine whose steps aim at 1 microsecond: a prompt beside a stream moves by the floor alone."""
    config = EngineConfig(
        model_path, n_ctx=4096, n_batch=N_BATCH, max_concurrency=2, prefix_cache_tokens=0, step_target_ms=0.001
    )
    async with AsyncEngine(config) as engine:
        yield engine


async def test_a_long_prompt_prefills_in_small_chunks_while_a_stream_keeps_its_tokens_coming(
    paced: AsyncEngine,
) -> None:
    n_long = len(await paced.tokenize(LONG))
    assert n_long > 3 * N_BATCH // 2
    during: list[str] = []
    started = anyio.Event()
    state = {"long_submitted": False, "long_first": False}

    async def stream() -> None:
        async with paced.stream(STREAM, 400, temperature=0) as pieces:
            async for piece in pieces:
                if state["long_submitted"] and not state["long_first"]:
                    during.append(piece)
                if len(during) == 0 and not state["long_submitted"]:
                    started.set()
                if state["long_first"]:
                    return

    async def long_prompt() -> None:
        await started.wait()
        state["long_submitted"] = True
        async with paced.stream(LONG, 2, temperature=0) as pieces:
            async for _ in pieces:
                state["long_first"] = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(stream)
        tg.start_soon(long_prompt)
    # Whole 512-row chunks would have given the stream about n_long / 512 tokens meanwhile (3 or 4);
    # chunks of the floor give it one a chunk.
    assert len(during) >= math.ceil(n_long / FLOOR) - 8, (len(during), n_long)


async def test_a_prompt_alone_takes_the_whole_batch(paced: AsyncEngine) -> None:
    n_long = len(await paced.tokenize(LONG))
    before = paced.stats.decode_steps
    result = await paced.complete(LONG, 1, temperature=0)
    assert result.completion_tokens == 1
    assert paced.stats.decode_steps - before == math.ceil(n_long / N_BATCH)
