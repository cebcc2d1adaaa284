"""The prefill budget on the real model: running streams keep decoding while a long prompt prefills in bounded
chunks, and a prompt alone takes the whole batch (the steps are counted, never timed)."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest
from server_process import running_server, serve_cli

from oxillama_py import AsyncEngine, Engine, EngineConfig

pytestmark = pytest.mark.anyio

LONG = " ".join(f"Line {i}: the {i}th entry of a long inventory of parts." for i in range(110))
STREAM = "Count from one to five hundred: 1, 2, 3, 4, 5, 6,"
N_BATCH = 512
MODEL = "gemma-3-270m-q4_k_m"  # the server's name for the default model
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
        async with aclosing(paced.stream(STREAM, 400, temperature=0)) as pieces:
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
        async with aclosing(paced.stream(LONG, 2, temperature=0)) as pieces:
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


def test_the_server_flag_sets_the_step_target(engine: Engine) -> None:
    """``serve --step-target-ms``: a target no step reaches gives the long prompt whole chunks beside the stream.

    (The default target would give it about the floor a step here, a hundred-odd chunks: the flag is what differs.)
    """
    openai = pytest.importorskip("openai", reason="the server test drives it with the openai client (test extra)")
    bad = serve_cli("--step-target-ms", "0")
    assert bad.returncode == 2 and "error: step_target_ms must be in (0, 3600000]" in bad.stderr
    n_long = len(engine.tokenize(LONG))
    args = ("--n-ctx", "4096", "--max-concurrency", "2", "--prefix-cache-tokens", "0", "--step-target-ms", "3600000")
    with (
        running_server(*args) as server,
        openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=300) as client,
    ):
        state = {"long_submitted": False, "long_done": False}
        during: list[str] = []

        def long_request() -> None:
            state["long_submitted"] = True
            client.completions.create(model=MODEL, prompt=LONG, max_tokens=1, temperature=0)
            state["long_done"] = True

        thread = threading.Thread(target=long_request)
        stream = client.completions.create(model=MODEL, prompt=STREAM, max_tokens=400, temperature=0, stream=True)
        for chunk in stream:
            if not state["long_submitted"]:
                thread.start()
            elif not state["long_done"]:
                during.append(chunk.choices[0].text if chunk.choices else "")
            else:
                break
        stream.close()
        thread.join(timeout=300)
    # One stream token a step: the long prompt's 512-row chunks, and a few more while its answer travels.
    assert state["long_done"] and len(during) <= math.ceil(n_long / N_BATCH) + 6 < n_long // FLOOR, (
        len(during),
        n_long,
    )
