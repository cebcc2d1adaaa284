"""Cancellation by token and by cancel scope: prompt stop, clean state, correct next run."""

from __future__ import annotations

import contextlib
import threading

import anyio
import pytest

from oxillama_py import AsyncEngine, CancellationToken, Engine, GenerationCancelled, ProgressEvent

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
    assert aengine.stats.active == 0
    delivered, steps = len(pieces) + len(after_cancel), aengine.stats.decode_steps
    # The worker decodes 8 more steps for another request, and the loop delivers their pieces:
    # a piece of the cancelled generation published meanwhile would have reached its callback.
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")
    assert aengine.stats.decode_steps - steps >= 8
    assert len(pieces) + len(after_cancel) == delivered, "the callback outlived its generate call"


async def test_move_on_after_returns_once_the_worker_let_go(aengine: AsyncEngine) -> None:
    pieces: list[str] = []
    with anyio.move_on_after(3600) as scope:

        def on_piece(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) == 3:  # decoding, with ~2,000 tokens to go: the deadline is reached now
                scope.deadline = anyio.current_time()

        await aengine.generate_streaming(PROMPT, 2000, on_piece, temperature=0)
    assert scope.cancelled_caught
    # The call returned only after the worker dropped the sequence: no slot held, nothing decoding.
    assert aengine.stats.active == 0
    assert len(pieces) < 2000


async def test_fail_after_raises_timeout(aengine: AsyncEngine) -> None:
    events: list[ProgressEvent] = []
    with pytest.raises(TimeoutError):
        with anyio.fail_after(3600) as scope:

            def on_progress(event: ProgressEvent) -> None:
                events.append(event)
                if len(events) == 1:  # the first token is out, ~2,000 to go: the deadline is reached now
                    scope.deadline = anyio.current_time()

            await aengine.generate(PROMPT, 2000, temperature=0, progress=on_progress)
    assert aengine.stats.active == 0
    assert [e.is_final for e in events].count(True) == 1 and events[-1].is_final
    assert events[-1].tokens_generated < 2000
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")


async def test_task_group_cancel_and_closing_a_stream(aengine: AsyncEngine) -> None:
    pieces: list[str] = []
    returned: list[str] = []
    decoding = anyio.Event()

    def on_piece(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            decoding.set()

    async def generate() -> None:
        returned.append(await aengine.generate_streaming(PROMPT, 2000, on_piece, temperature=0))

    async with anyio.create_task_group() as group:
        group.start_soon(generate)
        await decoding.wait()
        group.cancel_scope.cancel()
    assert group.cancel_scope.cancelled_caught
    assert returned == []  # the generation was cancelled, not finished
    assert aengine.stats.active == 0  # its slot was freed before the task group exited
    delivered, steps = len(pieces), aengine.stats.decode_steps
    assert 3 <= delivered < 2000
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")
    assert aengine.stats.decode_steps - steps >= 8
    assert len(pieces) == delivered, "a piece arrived after the task group was cancelled"
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
    decoding = threading.Event()
    pieces: list[str] = []

    def on_piece(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            decoding.set()

    def cancel() -> None:
        decoding.wait()
        at_cancel.append(engine.stats.decode_steps)
        token.cancel()

    canceller = threading.Thread(target=cancel, daemon=True)
    canceller.start()
    with pytest.raises(GenerationCancelled):
        engine.generate_streaming(PROMPT, 2000, on_piece, temperature=0, cancel_token=token)
    canceller.join()
    assert 3 <= len(pieces) < 2000
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
        with anyio.move_on_after(3600) as scope:

            def expire(event: ProgressEvent) -> None:
                scope.deadline = anyio.current_time()  # on the first token, ~2,000 to go

            await aengine.generate(PROMPT, 2000, temperature=0, progress=expire)
        assert scope.cancelled_caught
        with anyio.CancelScope() as scope:
            async for _ in aengine.stream(PROMPT, 2000, temperature=0):
                scope.cancel()
        with pytest.raises(GenerationCancelled):
            token = CancellationToken()
            await aengine.generate_streaming(PROMPT, 2000, lambda piece: token.cancel(), cancel_token=token)
        while aengine.stats.active:
            await anyio.sleep(0.01)
        # The abandoned stream's acknowledgement was posted before its slot was freed: it has
        # arrived once the loop has delivered the pieces of a generation that started after.
        await aengine.generate(PROMPT, 2, temperature=0)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
