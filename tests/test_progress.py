"""The progress-hook contract of spec/progress-hooks.rst, with real displays and the real model."""

from __future__ import annotations

import io
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import anyio
import ipywidgets
import pytest
from tqdm import tqdm

import oxillama_py
from oxillama_py import AsyncEngine, CancellationToken, Engine, GenerationCancelled
from oxillama_py.progress import ProgressEvent, make_progress_adapter

pytestmark = pytest.mark.anyio

PROMPT = "Count: 1, 2, 3,"


class CountingTqdm(tqdm):  # type: ignore[misc]
    """A real console bar writing to a string buffer that counts its ``close`` calls."""

    def __init__(self, **kwargs: Any) -> None:
        self.closes = 0
        super().__init__(file=io.StringIO(), **kwargs)

    def close(self) -> None:
        self.closes += 1
        super().close()


class Recorder:
    """A plain callable display that records every event."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

    @property
    def finals(self) -> list[ProgressEvent]:
        return [e for e in self.events if e.is_final]


def check_stream_of_events(events: list[ProgressEvent], generated: int, total: int) -> None:
    assert events, "no event fired"
    assert events[0].tokens_generated >= 1 and not events[0].is_final  # the first token fires
    assert [e.is_final for e in events].count(True) == 1 and events[-1].is_final
    counts = [e.tokens_generated for e in events]
    assert counts == sorted(counts)
    assert events[-1].tokens_generated == generated  # the final event adds no token of its own
    assert all(e.tokens_total == total for e in events)
    # Time only moves on, and the rate is the count over the time so far (a clock that stood
    # still, or a rate from another count, fails here).
    elapsed = [e.elapsed_secs for e in events]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0
    for e in events:
        assert e.tokens_per_sec == pytest.approx(e.tokens_generated / e.elapsed_secs if e.elapsed_secs else 0.0)
    assert events[-1].tokens_per_sec > 0
    for e in events:
        if e.tokens_generated < 2:
            assert e.eta_secs is None  # ETA needs two tokens
    assert events[-1].eta_secs == 0.0


# -- adapters ----------------------------------------------------------------------------
async def test_tqdm_counts_tokens_and_closes_once(aengine: AsyncEngine) -> None:
    bar = CountingTqdm(desc="gen", unit="tok")
    result = await aengine.complete(PROMPT, 32, temperature=0, progress=bar)
    assert bar.n == result.completion_tokens == 32
    assert bar.total == 32
    assert bar.closes == 1
    assert "tok/s" in bar.postfix
    assert "32/32" in bar.fp.getvalue()


def test_tqdm_notebook_bar(engine: Engine) -> None:
    from tqdm.notebook import tqdm as notebook_tqdm

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bar = notebook_tqdm(desc="gen", unit="tok", display=False)
    except Exception as exc:  # pragma: no cover - depends on the IPython install
        pytest.skip(f"tqdm.notebook cannot be built here: {exc}")
    result = engine.complete(PROMPT, 16, temperature=0, progress=bar)
    assert bar.n == result.completion_tokens == 16
    assert bar.total == 16
    assert bar.container.children[1].bar_style == "success"


@pytest.mark.parametrize("widget_type", [ipywidgets.IntProgress, ipywidgets.FloatProgress])
async def test_ipywidgets_success(aengine: AsyncEngine, widget_type: type) -> None:
    bar = widget_type(min=0, max=5, description="Generating")
    values: list[float] = []
    bar.observe(lambda change: values.append(change["new"]), names="value")
    result = await aengine.complete(PROMPT, 24, temperature=0, progress=bar)
    assert bar.max == 24
    assert bar.value == bar.max == result.completion_tokens
    assert bar.bar_style == "success"
    assert bar.description == "Generating"
    assert values == sorted(values) and len(values) >= 2


async def test_widget_snaps_to_full_when_stopped_early(aengine: AsyncEngine) -> None:
    bar = ipywidgets.IntProgress()
    result = await aengine.complete(PROMPT, 40, temperature=0, stop=", 6", progress=bar)
    assert result.finish_reason == "stop" and result.completion_tokens < 40
    assert bar.value == bar.max == 40
    assert bar.bar_style == "success"


async def test_callable_gets_the_contract(aengine: AsyncEngine) -> None:
    rec = Recorder()
    result = await aengine.complete(PROMPT, 48, temperature=0, progress=rec)
    check_stream_of_events(rec.events, result.completion_tokens, 48)
    assert all(e.text_so_far == "" for e in rec.events)  # capture is opt-in


async def test_unthrottled_fires_once_per_token_plus_final(aengine: AsyncEngine) -> None:
    rec = Recorder()
    result = await aengine.complete(
        PROMPT, 32, temperature=0, progress=rec, progress_throttle_ms=0, progress_throttle_tokens=1
    )
    assert [e.tokens_generated for e in rec.events] == [*range(1, 33), 32]
    check_stream_of_events(rec.events, result.completion_tokens, 32)


async def test_default_throttle_fires_far_fewer_events(aengine: AsyncEngine) -> None:
    rec = Recorder()
    result = await aengine.complete("Once upon a time", 128, temperature=0, progress=rec)
    fired = [e for e in rec.events if not e.is_final]
    assert fired[0].tokens_generated == 1
    for a, b in zip(fired, fired[1:]):  # each later fire needed 50 ms or 4 tokens since the last
        assert b.tokens_generated - a.tokens_generated >= 4 or b.elapsed_secs - a.elapsed_secs >= 0.045
    # Each fire after the first needed 4 tokens or 50 ms: that bounds the count whatever the speed.
    n, secs = result.completion_tokens, result.timings.generation_secs
    assert len(fired) <= 1 + n / 4 + secs / 0.045


async def test_token_gate(aengine: AsyncEngine) -> None:
    rec = Recorder()
    # A time gate of 11 days never opens, on any machine: only the token gate counts.
    await aengine.complete(
        PROMPT, 40, temperature=0, progress=rec, progress_throttle_ms=1e9, progress_throttle_tokens=10
    )
    fired = [e.tokens_generated for e in rec.events]
    assert fired[0] == 1 and fired[-1] == 40
    assert all(b - a >= 10 for a, b in zip(fired[:-2], fired[1:-1]))
    assert len(fired) <= 6


async def test_capture_text_grows_and_ends_equal_to_result(aengine: AsyncEngine) -> None:
    rec = Recorder()
    text = await aengine.generate(
        "日本の首都は", 40, temperature=0, progress=rec, progress_capture_text=True, progress_throttle_ms=0
    )
    texts = [e.text_so_far for e in rec.events]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == text
    assert len(set(texts)) > 5


async def test_capture_text_with_stop_string(aengine: AsyncEngine) -> None:
    rec = Recorder()
    text = await aengine.generate(PROMPT, 40, temperature=0, stop=", 7", progress=rec, progress_capture_text=True)
    assert text == " 4, 5, 6"
    assert rec.finals[0].text_so_far == text


# -- finalisation: exactly once, whatever ends the generation ------------------------------
class Displays:
    """One of each display, to check how each is finalised."""

    def __init__(self) -> None:
        self.bar = CountingTqdm()
        self.widget = ipywidgets.IntProgress(description="d")
        self.rec = Recorder()

    def all(self) -> list[Any]:
        return [self.bar, self.widget, self.rec]

    def check(self, style: str) -> None:
        assert self.bar.closes == 1
        assert self.widget.bar_style == style
        assert len(self.rec.finals) == 1 and self.rec.events[-1].is_final


def _on_nth_piece(n: int, then: Callable[[], object]) -> Callable[[str], None]:
    """A piece callback that calls ``then()`` when the ``n``-th piece arrives: cancel on progress, not on time."""
    count = 0

    def on_piece(piece: str) -> None:
        nonlocal count
        count += 1
        if count == n:
            then()

    return on_piece


def _wait_then(event: threading.Event, then: Callable[[], object]) -> None:
    event.wait()
    then()


async def _fail_once_set(event: anyio.Event) -> None:
    await event.wait()
    raise ValueError("sibling failed")


async def _each(aengine: AsyncEngine, displays: Displays, **kwargs: Any) -> None:
    for display in displays.all():
        await aengine.generate(PROMPT, kwargs.pop("max_tokens", 200), temperature=0, progress=display, **kwargs)


async def test_finalised_once_on_length(aengine: AsyncEngine) -> None:
    d = Displays()
    for display in d.all():
        await aengine.generate(PROMPT, 8, temperature=0, progress=display)
    d.check("success")
    assert d.widget.value == 8


async def test_finalised_once_on_stop_string(aengine: AsyncEngine) -> None:
    d = Displays()
    for display in d.all():
        await aengine.generate(PROMPT, 50, temperature=0, progress=display, stop=", 6")
    d.check("success")
    assert d.bar.n == d.rec.events[-1].tokens_generated < 50


async def test_finalised_once_on_cancellation_token(aengine: AsyncEngine) -> None:
    d = Displays()
    for display in d.all():
        token = CancellationToken()
        decoding = threading.Event()  # a piece is out: cancel from another thread, as a user would
        canceller = threading.Thread(target=_wait_then, args=(decoding, token.cancel), daemon=True)
        canceller.start()
        with pytest.raises(GenerationCancelled):
            on_piece = _on_nth_piece(1, decoding.set)
            await aengine.generate_streaming(
                PROMPT, 2000, on_piece, temperature=0, progress=display, cancel_token=token
            )
        canceller.join()
    d.check("warning")
    assert "cancelled" in d.bar.postfix
    assert 1 <= d.widget.value < 2000


async def test_finalised_once_on_cancel_scope(aengine: AsyncEngine) -> None:
    d = Displays()
    for display in d.all():
        with anyio.CancelScope() as scope:
            await aengine.generate_streaming(
                PROMPT, 2000, _on_nth_piece(3, scope.cancel), temperature=0, progress=display
            )
        assert scope.cancelled_caught
    d.check("warning")
    assert 3 <= d.widget.value < 2000


async def test_finalised_once_on_exception_inside_generation(aengine: AsyncEngine) -> None:
    d = Displays()

    def broken(piece: str) -> None:
        if "5" in piece:
            raise RuntimeError("callback exploded")

    for display in d.all():
        with pytest.raises(RuntimeError, match="exploded"):
            await aengine.generate_streaming(PROMPT, 200, broken, temperature=0, progress=display)
    d.check("danger")
    assert "RuntimeError" in d.bar.postfix and "exploded" in d.bar.postfix
    assert (await aengine.generate(PROMPT, 6, temperature=0)).startswith(" 4, 5")


async def test_finalised_once_on_task_group_error(aengine: AsyncEngine) -> None:
    d = Displays()

    for display in d.all():
        decoding = anyio.Event()  # the generation is under way, ~2,000 tokens to go
        with pytest.raises(Exception) as info:  # an exception group, named differently per backend
            async with anyio.create_task_group() as group:
                group.start_soon(_fail_once_set, decoding)
                await aengine.generate_streaming(
                    PROMPT, 2000, _on_nth_piece(1, decoding.set), temperature=0, progress=display
                )
        assert "sibling failed" in repr(info.value)
    d.check("warning")  # the generation itself was cancelled by its task group
    assert 1 <= d.widget.value < 2000


# -- callback errors --------------------------------------------------------------------
async def test_callback_errors_are_swallowed_by_default(aengine: AsyncEngine) -> None:
    calls: list[ProgressEvent] = []

    def bad(event: ProgressEvent) -> None:
        calls.append(event)
        raise ZeroDivisionError("display bug")

    expected = await aengine.generate(PROMPT, 24, temperature=0)
    assert await aengine.generate(PROMPT, 24, temperature=0, progress=bad) == expected
    assert calls[-1].is_final and calls[-1].tokens_generated == 24  # it kept being called


async def test_strict_progress_reraises_the_first_error_after_the_end(aengine: AsyncEngine) -> None:
    calls: list[ProgressEvent] = []

    def bad(event: ProgressEvent) -> None:
        calls.append(event)
        raise ZeroDivisionError(f"display bug {len(calls)}")

    with pytest.raises(ZeroDivisionError, match="display bug 1$"):
        await aengine.generate(PROMPT, 24, temperature=0, progress=bad, strict_progress=True)
    assert calls[-1].is_final and calls[-1].tokens_generated == 24  # the generation ran to its end


async def test_slow_callback_does_not_slow_decoding(aengine: AsyncEngine) -> None:
    """The worker never waits on the loop: while a display blocks it, decoding goes on.

    The first tick holds the loop until the worker has decoded 10 more steps
    (with a generous deadline, so any machine passes); a worker that waited on
    the loop would never get there. The next tick then coalesces them all.
    """
    prompt, n = "Once upon a time", 48
    seen: list[ProgressEvent] = []
    advanced: list[int] = []

    def slow(event: ProgressEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            start = aengine.stats.decode_steps
            deadline = time.monotonic() + 120
            while aengine.stats.decode_steps < start + 10 and time.monotonic() < deadline:
                time.sleep(0.002)
            advanced.append(aengine.stats.decode_steps - start)

    result = await aengine.complete(prompt, n, temperature=0, progress=slow)
    assert result.completion_tokens == n
    assert advanced[0] >= 10, "decoding stopped while the loop was blocked"
    # Coalesced into one tick: all but the last of those steps had published their token
    # (the step counter moves before the step's token is published).
    assert seen[1].tokens_generated - seen[0].tokens_generated >= 9


# -- the adapter factory and the deprecated shims --------------------------------------
def test_make_progress_adapter_dispatch() -> None:
    assert make_progress_adapter(None, 10) == (None, None)
    callback, finaliser = make_progress_adapter(lambda e: None, 10)
    assert callable(callback) and callable(finaliser)
    widget = ipywidgets.FloatProgress(max=3)
    callback, finaliser = make_progress_adapter(widget, 10)
    assert widget.max == 10
    with pytest.raises(TypeError, match="^progress must be"):
        make_progress_adapter(object(), 10)
    with pytest.raises(TypeError, match="^progress must be"):
        make_progress_adapter(ipywidgets.Button(), 10)


def test_deprecated_shims(engine: Engine) -> None:
    with pytest.warns(DeprecationWarning, match="progress="):
        tqdm_progress = oxillama_py.TqdmProgress
    with pytest.warns(DeprecationWarning, match="progress="):
        collect_tokens = oxillama_py.CollectTokens
    assert "TqdmProgress" in oxillama_py.__all__ and "CollectTokens" in oxillama_py.__all__
    bar = CountingTqdm()
    text = engine.generate_streaming(PROMPT, 12, callback=tqdm_progress(bar), temperature=0)
    assert bar.n == 12
    bar.close()
    collector = collect_tokens()
    assert engine.generate_streaming(PROMPT, 12, callback=collector, temperature=0) == text
    assert collector.text == text and collector.finished and len(collector.token_ids) == 12
    from oxillama_py.tqdm_helper import TqdmProgress  # the module path itself does not warn

    assert TqdmProgress is tqdm_progress


def test_sync_engine_progress(engine: Engine) -> None:
    with CountingTqdm(desc="Generating", unit="tok") as bar:
        text = engine.generate(PROMPT, 16, temperature=0, progress=bar)
    assert bar.n == 16 and text.startswith(" 4, 5")
