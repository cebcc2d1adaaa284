"""``stream()``: an async generator (upstream's) that any consumer may leave at any time.

It holds no task group across its yields (PEP 789): a plain ``async for ...
break`` without ``aclosing()`` must not raise into, or log on, the caller's
loop; the request is dropped once the loop finalises the generator and the
progress display is finalised as cancelled.
``async with aclosing(engine.stream(...))`` makes the end explicit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import sys
import warnings
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest

from oxillama_py import AsyncEngine, EngineConfig, GenerationCancelled, ProgressEvent

pytestmark = pytest.mark.anyio

PROMPT = "Count: 1, 2, 3,"


class DuckBar:
    """Only what the specification promises to use: update, set_postfix_str, close."""

    __slots__ = ("closed", "postfix", "updates")

    def __init__(self) -> None:
        self.updates = 0
        self.postfix: list[str] = []
        self.closed = 0

    def update(self, n: int = 1) -> None:
        self.updates += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix.append(s)

    def close(self) -> None:
        self.closed += 1


async def _until(predicate: Any, steps_budget: int, engine: AsyncEngine) -> int:
    """Wait until ``predicate()``; return how many decode steps the worker ran meanwhile."""
    start = engine.stats.decode_steps
    with anyio.fail_after(120):  # only a broken engine waits that long (an idle one that never gets there)
        while not predicate():
            assert engine.stats.decode_steps - start <= steps_budget, "the worker kept decoding"
            await anyio.sleep(0.005)
    return engine.stats.decode_steps - start


def _abandoned(anyio_backend: Any) -> Any:
    """Where a stream left without ``aclosing()`` is dropped: trio warns of every unclosed async generator."""
    if anyio_backend[0] == "trio":  # trio's policy (PEP 789's advice): still closed, in a system task
        return pytest.warns(ResourceWarning, match="aclosing")
    return contextlib.nullcontext()


async def test_break_without_aclosing_frees_the_slot_and_finalises_progress(
    aengine: AsyncEngine, anyio_backend: Any
) -> None:
    events: list[ProgressEvent] = []
    got: list[str] = []
    with _abandoned(anyio_backend):
        async for piece in aengine.stream(PROMPT, 400, temperature=0, progress=events.append):
            got.append(piece)
            if len(got) == 3:
                break
        gc.collect()
    # Dropped within one step of the loop closing it (the one in flight may finish), then finalised as cancelled.
    await _until(lambda: aengine.stats.active == 0 and events and events[-1].is_final, 2, aengine)
    assert "".join(got).startswith(" 4")
    assert [e.is_final for e in events].count(True) == 1
    assert events[-1].tokens_generated < 400
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")


async def test_break_closes_a_duck_typed_bar_once_as_cancelled(aengine: AsyncEngine, anyio_backend: Any) -> None:
    bar = DuckBar()
    stream = aengine.stream(PROMPT, 400, temperature=0, progress=bar)
    with _abandoned(anyio_backend):
        async for _ in stream:
            break
        del stream
    await _until(lambda: bar.closed == 1, 2, aengine)
    assert bar.postfix[-1] == "cancelled"
    # A second close would come from the same generation's events: let the worker decode 8 more
    # steps for another request and the loop deliver them, then look again.
    steps = aengine.stats.decode_steps
    assert (await aengine.generate(PROMPT, 8, temperature=0)).startswith(" 4, 5, 6")
    assert aengine.stats.decode_steps - steps >= 8
    assert bar.closed == 1 and bar.postfix.count("cancelled") == 1


async def test_aclosing_stream(aengine: AsyncEngine) -> None:
    expected = await aengine.generate(PROMPT, 24, temperature=0)
    async with aclosing(aengine.stream(PROMPT, 24, temperature=0)) as pieces:
        assert "".join([piece async for piece in pieces]) == expected
    bar = DuckBar()
    async with aclosing(aengine.stream(PROMPT, 400, temperature=0, progress=bar)) as pieces:
        async for _ in pieces:
            break
        assert aengine.stats.active == 1
    # Leaving the block waited for the worker to let go, and for the display's end.
    assert aengine.stats.active == 0
    assert bar.closed == 1 and bar.postfix[-1] == "cancelled"


async def test_cancel_scope_around_a_plain_loop(aengine: AsyncEngine) -> None:
    events: list[ProgressEvent] = []
    with anyio.CancelScope() as scope:
        async for _ in aengine.stream(PROMPT, 400, temperature=0, progress=events.append):
            scope.cancel()
    assert scope.cancelled_caught
    gc.collect()
    await _until(lambda: aengine.stats.active == 0 and events and events[-1].is_final, 2, aengine)


async def test_errors_and_cancellation_token_reach_the_consumer(aengine: AsyncEngine) -> None:
    from oxillama_py import CancellationToken

    token = CancellationToken()
    with pytest.raises(GenerationCancelled):
        async for _ in aengine.stream(PROMPT, 400, temperature=0, cancel_token=token):
            token.cancel()
    assert aengine.stats.active == 0


async def test_bad_arguments_raise_at_the_first_iteration_before_any_work(
    aengine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert inspect.isasyncgenfunction(AsyncEngine.stream) and inspect.isasyncgenfunction(AsyncEngine.stream_chat)

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a call was prepared (tokenized, queued) for bad arguments")

    monkeypatch.setattr(aengine, "prepare", no_work)
    monkeypatch.setattr(aengine, "prepare_chat", no_work)
    steps = aengine.stats.decode_steps
    with pytest.raises(ValueError, match="max_tokens"):
        await aengine.stream(PROMPT, -1).__anext__()
    with pytest.raises(TypeError, match="progress"):
        async for _ in aengine.stream(PROMPT, 8, progress=42):
            pass
    with pytest.raises(TypeError):
        async for _ in aengine.stream(PROMPT, 8, temprature=0):  # type: ignore[call-arg]
            pass
    with pytest.raises(ValueError, match="messages"):
        async for _ in aengine.stream_chat([], 8):
            pass
    assert (aengine.stats.decode_steps, aengine.stats.active, aengine.stats.waiting) == (steps, 0, 0)
    monkeypatch.undo()
    assert inspect.isasyncgen(aengine.stream(PROMPT, 8))  # never started: nothing to clean up
    gc.collect()


def _plain_break_program(
    model_path: Path, run: Any, closing: bool = False
) -> tuple[list[str], list[logging.LogRecord], list[Any], list[warnings.WarningMessage]]:
    """The issue's scenario in a loop of its own: break (inside ``aclosing()`` if ``closing``), collect, end."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    for name in ("asyncio", "trio", "oxillama_py"):
        logging.getLogger(name).addHandler(handler)
    got: list[str] = []
    bar = DuckBar()

    async def main() -> None:
        async with AsyncEngine(EngineConfig(model_path, n_ctx=1024, max_concurrency=1, n_threads=1)) as engine:
            if closing:
                async with contextlib.aclosing(engine.stream(PROMPT, 200, temperature=0, progress=bar)) as pieces:
                    async for piece in pieces:
                        got.append(piece)
                        break
            else:
                async for piece in engine.stream(PROMPT, 200, temperature=0, progress=bar):
                    got.append(piece)
                    break
            gc.collect()
            # The one slot is free again: a second request is served, not queued behind the first.
            got.append(await engine.generate(PROMPT, 6, temperature=0))

    unraisable: list[Any] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(main)
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
        for name in ("asyncio", "trio", "oxillama_py"):
            logging.getLogger(name).removeHandler(handler)
    assert bar.closed == 1 and bar.postfix[-1] == "cancelled"
    return got, [r for r in records if r.levelno >= logging.WARNING], unraisable, caught


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param(lambda main: asyncio.run(main()), id="asyncio.run"),
        pytest.param(
            lambda main: anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True}), id="uvloop"
        ),
        pytest.param(lambda main: anyio.run(main, backend="trio"), id="trio.run"),
    ],
)
def test_plain_break_in_a_program_of_its_own(model_path: Path, runner: Any, request: pytest.FixtureRequest) -> None:
    got, warnings_logged, unraisable, caught = _plain_break_program(model_path, runner)
    assert got[0] and got[1].startswith(" 4, 5")
    assert warnings_logged == []
    assert unraisable == []
    resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
    if "trio" in request.node.callspec.id:  # trio warns of any async generator dropped unclosed, and closes it
        assert len(resource) == 1 and "aclosing" in str(resource[0].message)
    else:
        assert resource == []


def test_aclosing_in_a_trio_program_of_its_own(model_path: Path) -> None:
    got, warnings_logged, unraisable, caught = _plain_break_program(
        model_path, lambda main: anyio.run(main, backend="trio"), closing=True
    )
    assert got[0] and got[1].startswith(" 4, 5")
    assert warnings_logged == [] and unraisable == []
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
