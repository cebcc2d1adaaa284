"""Progress hooks: :class:`ProgressEvent`, the adapters, the throttle gate, the subscriber.

All duck-typing of progress objects lives here, in pure Python, in
:func:`make_progress_adapter`. The progress subscriber is fed everything the
decode worker published since it last ran (by its own task, or by a stream's
consumer), fires the adapter at most once per feed when the throttle gate is
open, and fires the synthetic final event from its finaliser, so a slow display
never slows decoding and is finalised exactly once however the generation ends.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from .bus.events import Event, Finished, Step, TokenEvent
from .bus.subscriber import Outcome, Subscriber
from .checks import check_int, check_type, describe, is_number
from .throttle import DEFAULT_THROTTLE_MS, DEFAULT_THROTTLE_TOKENS, ThrottleGate, check_throttle

__all__ = [
    "check_progress",
    "ProgressEvent",
    "ProgressCallback",
    "ProgressFinaliser",
    "make_progress_adapter",
    "ThrottleGate",
    "ProgressSubscriber",
    "DEFAULT_THROTTLE_MS",
    "DEFAULT_THROTTLE_TOKENS",
    "check_throttle",
]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A snapshot of one generation's progress, handed to progress callbacks."""

    tokens_generated: int
    """Tokens decoded so far (across all prompts for a batch). The final event
    repeats the last count; it never adds a token."""

    tokens_total: int
    """The budget: ``max_tokens`` (for a batch, the sum over its prompts). A
    generation that stops early ends below it."""

    elapsed_secs: float
    """Seconds since the generation was submitted (prompt processing included)."""

    tokens_per_sec: float
    """``tokens_generated / elapsed_secs`` (0.0 before the first token)."""

    eta_secs: float | None
    """Estimated seconds until ``tokens_total`` is reached, from the decode rate
    between the first and the latest token; ``None`` until two tokens have been
    seen. ``0.0`` on the final event."""

    is_final: bool
    """``True`` only on the synthetic last event, fired once after the
    generation ended (end of sequence, max tokens, stop string, cancellation,
    or error)."""

    text_so_far: str = ""
    """The text decoded so far, or ``""`` unless ``progress_capture_text=True``.
    On the final event it equals the returned text."""


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressFinaliser(Protocol):
    """Ends a display once: ``finaliser(status, error)``, or upstream oxillama-py's ``finaliser(error)``.

    ``status`` is ``"success"``, ``"cancelled"`` or ``"error"``. Called with the
    error alone, ``None`` means success and an error whose type name says
    ``Cancel`` (``asyncio.CancelledError``, ``trio.Cancelled``,
    :class:`~oxillama_py.GenerationCancelled`) a cancellation.
    """

    def __call__(self, *args: Any) -> None: ...


class _TqdmLike(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...
    def close(self) -> Any: ...


def _is_tqdm(obj: object) -> bool:
    return all(callable(getattr(obj, name, None)) for name in ("update", "set_postfix_str", "close"))


def _is_progress_widget(obj: object) -> bool:
    return hasattr(obj, "value") and hasattr(obj, "max") and "Progress" in type(obj).__name__


def _each(*steps: Callable[[], object]) -> None:
    """Run every step whatever the others raise, then raise the first failure.

    A display is user code: one broken method must not keep the others, and
    above all ``close()``, from running.
    """
    failure: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:
            if failure is None:
                failure = exc
    if failure is not None:
        raise failure


def _set_optional(obj: object, name: str, value: object) -> None:
    """Set an attribute the duck type does not promise; an object that cannot take it goes without."""
    with contextlib.suppress(AttributeError):
        setattr(obj, name, value)


def _takes_keyword(method: Callable[..., object], name: str) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except Exception:  # no signature to read: call it the plain way
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


class _Adapter:
    """Set-up never raises: the engine calls it once it is committed to finalising the display,
    so a failure waits for the next call or the finaliser to be reported."""

    def __init__(self, *setup: Callable[[], object]) -> None:
        self._failure: BaseException | None = None
        try:
            _each(*setup)
        except Exception as exc:
            self._failure = exc

    def _report(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure


class _TqdmAdapter(_Adapter):
    """Drives a ``tqdm`` bar (console or notebook), or anything with its three methods: count = tokens,
    rate in the postfix."""

    def __init__(self, bar: _TqdmLike, total: int) -> None:
        self._bar: Any = bar
        self._shown = 0
        self._quiet_postfix = _takes_keyword(bar.set_postfix_str, "refresh")
        super().__init__(lambda: self._start(total))

    def _start(self, total: int) -> None:
        bar = self._bar
        if getattr(bar, "total", None) == total and getattr(bar, "n", 0) == 0:
            return  # already drawn empty with this total: a reset would draw it again
        reset = getattr(bar, "reset", None)
        if callable(reset):
            reset(total=total)  # also tells a notebook bar its new length
        else:
            _set_optional(bar, "total", total)

    def _postfix(self, text: str) -> None:
        if self._quiet_postfix:
            self._bar.set_postfix_str(text, refresh=False)  # the update or close that follows draws it
        else:
            self._bar.set_postfix_str(text)

    def _advance(self, count: int) -> None:
        delta = count - self._shown
        if delta > 0:
            self._shown = count
            self._bar.update(delta)

    def _fill(self) -> None:
        """Ended early but well (stop string, end of text): a full bar, not a failed one."""
        n, total = getattr(self._bar, "n", None), getattr(self._bar, "total", None)
        if is_number(n) and is_number(total) and n < total:
            _set_optional(self._bar, "total", n)

    def _refresh(self) -> None:
        refresh = getattr(self._bar, "refresh", None)
        if callable(refresh):
            refresh()

    def __call__(self, event: ProgressEvent) -> None:
        _each(
            self._report,
            lambda: self._postfix(f"{event.tokens_per_sec:.1f} tok/s"),
            lambda: self._advance(event.tokens_generated),
        )

    def finalise(self, status: str, error: BaseException | None) -> None:
        steps: tuple[Callable[[], object], ...] = (self._fill,)
        if status != "success":
            text = "cancelled" if status == "cancelled" else "error"
            if status == "error" and error is not None:
                text = f"error: {type(error).__name__}: {error}"
            steps = (lambda: self._postfix(text), self._refresh)
        _each(self._report, *steps, self._bar.close)


class _WidgetAdapter(_Adapter):
    """Drives an ipywidgets ``IntProgress``/``FloatProgress``; keeps the user's description."""

    _STYLES: ClassVar[dict[str, str]] = {"success": "success", "cancelled": "warning", "error": "danger"}

    def __init__(self, widget: Any, total: int) -> None:
        self._widget = widget
        super().__init__(
            lambda: setattr(widget, "max", total),
            lambda: setattr(widget, "value", getattr(widget, "min", 0)),
            lambda: self._style(""),
        )

    def _style(self, style: str) -> None:
        if hasattr(self._widget, "bar_style"):
            self._widget.bar_style = style

    def _full(self) -> None:
        self._widget.value = self._widget.max

    def __call__(self, event: ProgressEvent) -> None:
        _each(self._report, lambda: setattr(self._widget, "value", min(event.tokens_generated, self._widget.max)))

    def finalise(self, status: str, error: BaseException | None) -> None:
        steps: tuple[Callable[[], object], ...] = (self._full,) if status == "success" else ()
        _each(self._report, *steps, lambda: self._style(self._STYLES[status]))


def _no_finaliser(status: str, error: BaseException | None) -> None:
    """Plain callables need no finalising: the final event already told them."""


def status_of(error: BaseException | None) -> str:
    """The status an upstream-style ``finaliser(error)`` call stands for."""
    if error is None:
        return "success"
    return "cancelled" if "Cancel" in type(error).__name__ else "error"


class _Finaliser:
    """Takes both spellings of the call (see :class:`ProgressFinaliser`)."""

    __slots__ = ("_finalise",)

    def __init__(self, finalise: Callable[[str, BaseException | None], None]) -> None:
        self._finalise = finalise

    def __call__(self, *args: Any) -> None:
        if len(args) == 2:
            status, error = args
        elif len(args) == 1:
            error = args[0]
            status = status_of(error)
        else:
            raise TypeError(f"a finaliser takes (error) or (status, error), got {len(args)} arguments")
        if status not in ("success", "cancelled", "error"):
            raise ValueError(f"status must be 'success', 'cancelled' or 'error', got {status!r}")
        if error is not None:
            check_type("error", error, BaseException, "an exception or None")
        self._finalise(status, error)


def make_progress_adapter(
    obj: object, max_tokens: int
) -> tuple[ProgressCallback, ProgressFinaliser] | tuple[None, None]:
    """Turn a ``progress=`` argument into ``(callback, finaliser)``, or ``(None, None)``.

    Accepted: ``None``; a ``tqdm`` or ``tqdm.notebook.tqdm`` bar (anything with
    ``update``, ``set_postfix_str`` and ``close``); an ipywidgets ``IntProgress``
    or ``FloatProgress`` (``value`` and ``max`` and "Progress" in the class name);
    any ``Callable[[ProgressEvent], None]``. Anything else raises ``TypeError``
    before generation starts.
    """
    if obj is None:
        return None, None
    check_int("max_tokens", max_tokens, low=0)
    kind = check_progress(obj)
    if kind == "tqdm":
        tqdm_adapter = _TqdmAdapter(obj, max_tokens)  # type: ignore[arg-type]
        return tqdm_adapter, _Finaliser(tqdm_adapter.finalise)
    if kind == "widget":
        widget_adapter = _WidgetAdapter(obj, max_tokens)
        return widget_adapter, _Finaliser(widget_adapter.finalise)
    return obj, _Finaliser(_no_finaliser)  # type: ignore[return-value]


def _build_bridge(
    obj: object, max_tokens: int
) -> tuple[Callable[[tuple[int, float, bool, str]], None], ProgressFinaliser]:
    """Upstream's entry for its Rust decoder: ``(callback, finaliser)`` fed ``(tokens, elapsed, is_final, text)``.

    Kept for code written against upstream that drives a display from its
    own loop (upstream's tests call it); this library's engines publish
    :class:`ProgressEvent` objects through :func:`make_progress_adapter`
    instead. ``None`` gives no-op callables. The ETA is upstream's: the
    remaining budget at the average rate, once two tokens are in.
    """
    callback, finaliser = make_progress_adapter(obj, max_tokens)
    if callback is None or finaliser is None:
        return (lambda tick: None), _Finaliser(_no_finaliser)
    target = callback

    def tick(values: tuple[int, float, bool, str]) -> None:
        tokens, elapsed, is_final, text = values
        rate = tokens / elapsed if elapsed > 0 else 0.0
        eta = (max_tokens - tokens) / rate if tokens >= 2 and rate > 0 else None
        target(ProgressEvent(tokens, max_tokens, elapsed, rate, eta, bool(is_final), text))

    return tick, finaliser


def check_progress(obj: object) -> str:
    """Which adapter ``obj`` needs (``"none"``, ``"tqdm"``, ``"widget"``, ``"callable"``), touching nothing.

    Engines call this before loading or tokenizing, so a wrong type fails
    before any work, and the display is only touched once the generation is
    certain to finalise it.
    """
    if obj is None:
        return "none"
    if _is_tqdm(obj):
        return "tqdm"
    if _is_progress_widget(obj):
        return "widget"
    if callable(obj):
        return "callable"
    raise TypeError(
        "progress must be None, a tqdm bar, an ipywidgets IntProgress/FloatProgress, "
        f"or a callable taking a ProgressEvent, got {describe(obj)}"
    )


class ProgressSubscriber(Subscriber):
    """Coalesces the bus into throttled :class:`ProgressEvent` ticks for one adapter."""

    def __init__(
        self,
        callback: ProgressCallback,
        finaliser: ProgressFinaliser,
        total: int,
        *,
        throttle_ms: float | None = None,
        throttle_tokens: int | None = None,
        capture_text: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._callback = callback
        self._finaliser = finaliser
        self._total = total
        self._gate = ThrottleGate(throttle_ms, throttle_tokens)
        self._capture = capture_text
        self._clock = clock
        self._start = clock()
        self._count = 0
        self._first: float | None = None
        self._latest: float | None = None
        self._pieces: dict[int, list[str]] = defaultdict(list)
        self.error: BaseException | None = None
        """The first exception a callback or the finaliser raised (stashed, not raised)."""

    async def feed(self, events: Sequence[Event]) -> None:
        """Absorb everything queued since the last drain, then fire at most once (coalescing)."""
        for event in events:
            if isinstance(event, Step):
                if self._gate.unthrottled:  # every token asked for: one event each
                    for token in event.tokens:
                        self._absorb((token,))
                        self._gate.mark(token.time, self._count)
                        self._fire(self._clock(), final=False)
                else:
                    self._absorb(event.tokens)
            else:
                self._absorb_end(event)
        now = self._clock()
        if self._gate.ready(now, self._count):
            self._gate.mark(now, self._count)
            self._fire(now, final=False)

    def _absorb(self, tokens: tuple[TokenEvent, ...]) -> None:
        self._count += len(tokens)
        if self._first is None:
            self._first = tokens[0].time
        self._latest = tokens[-1].time
        if self._capture:
            self._pieces[tokens[0].sequence].extend(token.piece for token in tokens)

    def _absorb_end(self, finished: Finished) -> None:
        if self._capture and finished.tail:
            self._pieces[finished.sequence].append(finished.tail)

    def _event(self, now: float, *, final: bool) -> ProgressEvent:
        count = self._count
        elapsed = max(0.0, now - self._start)
        eta: float | None = None
        if count >= 2 and self._first is not None and self._latest is not None:
            if final:
                eta = 0.0
            elif self._latest > self._first:  # tokens of one decode step share a time: no rate yet
                rate = (count - 1) / (self._latest - self._first)
                eta = max(0.0, (self._total - count) / rate)
        text = "".join("".join(self._pieces[i]) for i in sorted(self._pieces)) if self._capture else ""
        return ProgressEvent(
            tokens_generated=count,
            tokens_total=self._total,
            elapsed_secs=elapsed,
            tokens_per_sec=count / elapsed if elapsed > 0 else 0.0,
            eta_secs=eta,
            is_final=final,
            text_so_far=text,
        )

    def _fire(self, now: float, *, final: bool) -> None:
        try:
            self._callback(self._event(now, final=final))
        except Exception as exc:  # a misbehaving display must not abort generation
            if self.error is None:
                self.error = exc

    def finalise(self, outcome: Outcome) -> None:
        try:
            self._fire(self._clock(), final=True)
        finally:
            try:
                self._finaliser(outcome.status, outcome.error)
            except Exception as exc:
                if self.error is None:
                    self.error = exc
