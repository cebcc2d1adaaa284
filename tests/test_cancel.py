"""Cancellation by token and by cancel scope: prompt stop, clean state, correct next run."""

from __future__ import annotations

import contextlib
import threading

import anyio
import pytest

from oxillama_py import AsyncEngine, CancellationToken, Engine, GenerationCancelled

pytestmark = pytest.mark.anyio

PROMPT = "Count: 1, 2, 3,"


async def test_token_from_another_thread_stops_within_a_step(aengine: AsyncEngine) -> None:
    token = CancellationToken()
    seen: list[int] = []
    steps_at_cancel: list[int] = []

    def on_token(piece: str, token_id: int, is_final: bool) -> None:
        seen.append(token_id)
        if len(seen) == 8:

            def cancel() -> None:
                steps_at_cancel.append(aengine.stats.decode_steps)
                token.cancel()

            threading.Thread(target=cancel).start()

    start = aengine.stats.decode_steps
    with pytest.raises(GenerationCancelled):
        await aengine.generate_streaming(PROMPT, 200, on_token, temperature=0, cancel_token=token)
    assert token.is_cancelled()
    # The worker checks the token before every step: the step in flight may end, no other starts.
    assert aengine.stats.decode_steps - steps_at_cancel[0] <= 1
    assert aengine.stats.active == 0
    assert len(seen) <= aengine.stats.decode_steps - start < 200
    # The engine is reusable and correct afterwards.
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")


async def test_already_cancelled_token_raises_before_decoding(aengine: AsyncEngine) -> None:
    token = CancellationToken()
    token.cancel()
    with pytest.raises(GenerationCancelled):
        await aengine.generate(PROMPT, 50, temperature=0, cancel_token=token)
    token.reset()
    assert not token.is_cancelled()
    assert (await aengine.generate(PROMPT, 6, temperature=0, cancel_token=token)).startswith(" 4, 5")


async def test_cancel_scope_stops_generation(aengine: AsyncEngine) -> None:
    pieces: list[str] = []
    after_cancel: list[str] = []

    with anyio.CancelScope() as scope:

        def on_piece(piece: str) -> None:
            (after_cancel if scope.cancel_called else pieces).append(piece)
            if len(pieces) == 5:
                scope.cancel()

        await aengine.generate_streaming(PROMPT, 400, on_piece, temperature=0)
    assert scope.cancelled_caught
    # Only what the step in flight had already published may still arrive.
    assert len(after_cancel) <= 1
    assert len(pieces) == 5
    await anyio.sleep(0.2)
    assert len(pieces) + len(after_cancel) <= 6, "the callback outlived its generate call"
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")


async def test_move_on_after_returns_once_the_worker_let_go(aengine: AsyncEngine) -> None:
    pieces: list[str] = []
    with anyio.move_on_after(0.5) as scope:
        await aengine.generate_streaming(PROMPT, 2000, pieces.append, temperature=0)
    assert scope.cancelled_caught
    # The call returned only after the worker dropped the sequence: no slot held, nothing decoding.
    assert aengine.stats.active == 0
    assert len(pieces) < 2000


async def test_fail_after_raises_timeout(aengine: AsyncEngine) -> None:
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.3):
            await aengine.generate(PROMPT, 400, temperature=0)
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")


async def test_task_group_cancel_and_closing_a_stream(aengine: AsyncEngine) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(aengine.generate, PROMPT, 400)
        await anyio.sleep(0.3)
        group.cancel_scope.cancel()
    got: list[str] = []
    async with contextlib.aclosing(aengine.stream(PROMPT, 400, temperature=0)) as pieces:
        async for piece in pieces:
            got.append(piece)
            if len(got) == 3:
                break
    assert len(got) == 3
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")


def test_sync_engine_cancelled_from_another_thread(engine: Engine) -> None:
    token = CancellationToken()
    at_cancel: list[int] = []

    def cancel() -> None:
        at_cancel.append(engine.stats.decode_steps)
        token.cancel()

    timer = threading.Timer(0.3, cancel)
    timer.start()
    with pytest.raises(GenerationCancelled):
        engine.generate(PROMPT, 400, temperature=0, cancel_token=token)
    timer.join()
    assert engine.stats.active == 0
    assert engine.stats.decode_steps - at_cancel[0] <= 1  # the step in flight, no more
    assert engine.generate(PROMPT, 8, temperature=0).startswith(" 4, 5, 6")


def test_sync_stream_closed_early(engine: Engine) -> None:
    stream = engine.stream(PROMPT, 400, temperature=0)
    first = [next(stream) for _ in range(3)]
    stream.close()
    assert "".join(first).startswith(" 4")
    assert engine.generate(PROMPT, 8, temperature=0).startswith(" 4, 5, 6")


async def test_a_cancelled_generation_leaves_no_stream_open(aengine: AsyncEngine) -> None:
    """Every stream end is closed whatever ends the generation (anyio warns about a leaked one)."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with anyio.move_on_after(0.3):
            await aengine.generate(PROMPT, 2000, temperature=0, progress=lambda e: None)
        with anyio.CancelScope() as scope:
            async for _ in aengine.stream(PROMPT, 2000, temperature=0):
                scope.cancel()
        with pytest.raises(GenerationCancelled):
            token = CancellationToken()
            await aengine.generate_streaming(PROMPT, 2000, lambda piece: token.cancel(), cancel_token=token)
        while aengine.stats.active:
            await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # let an abandoned stream's acknowledgement arrive
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
