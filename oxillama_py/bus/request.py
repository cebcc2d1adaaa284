"""A generation request: what the decode worker needs, and where its events go."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.lowlevel import EventLoopToken, current_token
from anyio.streams.memory import MemoryObjectSendStream

from ..cancel import CancellationToken
from ..config import SamplerConfig
from ..grammar import Grammar
from ..llama.guidance import Matcher
from .events import Event, Finished
from .post import post

__all__ = ["Request", "check_order", "take_order"]

_orders = itertools.count()


def take_order() -> int:
    """The next place in the engine's waiting line: taken when a call is made, on its loop, before any await.

    Requests wait for a slot in this order (first come, first served), however
    their tokenizing threads and their loops' schedulers interleave them later.
    """
    return next(_orders)


def check_order(order: object) -> int:
    """A place given by a caller: an int that :func:`take_order` returned."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise TypeError(f"order must be an int from take_order(), got {order!r}")
    return order


@dataclass(eq=False)
class Request:
    """Created on the caller's loop, handed to the worker thread, answered by events.

    The worker reads the fields and calls :meth:`publish` and :meth:`cancel_requested`;
    everything else runs on the caller's loop.
    """

    prompt_tokens: list[int]
    max_tokens: int
    sampler: SamplerConfig
    seed: int
    stop: tuple[str, ...] = ()
    cancel_token: CancellationToken | None = None
    sequence: int = 0
    grammar: Grammar | None = None
    """The constraint of this request's output, if any."""
    matcher: Matcher | None = None
    """The grammar's state for this request's one sequence (made with the request, off the event loop)."""
    pin: bool = False
    """Prefill the prompt into the prefix cache, pinned, and generate nothing (``cache_prefix``)."""
    speculative: bool = False
    """Draft and verify tokens inside the batch (the worker decides how many each step)."""
    logprobs: int | None = None
    """Give each generated token its log-probability and this many top alternatives (``None``: none)."""
    prompt_logprobs: bool = False
    """Also the prompt tokens' log-probabilities (every prompt row decoded with logits, no cached prefix)."""
    order: int = field(default_factory=take_order)
    """Its place in the waiting line (:func:`take_order`): a smaller one starts first."""
    _sinks: list[MemoryObjectSendStream[Event]] = field(default_factory=list, init=False, repr=False)
    _loop: EventLoopToken | None = field(default=None, init=False, repr=False)
    _done: anyio.Event | None = field(default=None, init=False, repr=False)
    _on_end: list[Callable[[], object]] = field(default_factory=list, init=False, repr=False)
    _end_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stop_flag: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    terminal: Finished | None = field(default=None, init=False, repr=False)

    # -- caller's loop -------------------------------------------------------------
    def bind(self, sinks: Sequence[MemoryObjectSendStream[Event]]) -> None:
        """Tie the request to the running loop and the subscribers' streams."""
        self._loop = current_token()
        self._done = anyio.Event()
        self._sinks = list(sinks)

    def cancel(self) -> None:
        """Ask the worker to drop this sequence at its next step (thread-safe)."""
        self._stop_flag.set()

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    async def wait_finished(self) -> None:
        assert self._done is not None, "request was never bound"
        await self._done.wait()

    def on_end(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the terminal event has been delivered (at once if it has).

        Safe from any thread: a dropped stream may be collected outside its loop.
        """
        with self._end_lock:
            if self.terminal is None:
                self._on_end.append(callback)
                return
        callback()

    def _deliver(self, events: tuple[Event, ...], loop_alive: bool = True) -> None:
        if self.terminal is not None:
            return
        if loop_alive:
            for sink in self._sinks:
                for event in events:
                    try:
                        sink.send_nowait(event)
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        break  # that subscriber has already left
        last = events[-1]
        if isinstance(last, Finished):
            with self._end_lock:
                self.terminal = last
                callbacks, self._on_end = self._on_end, []
            if loop_alive:
                assert self._done is not None
                self._done.set()
            for callback in callbacks:
                callback()

    # -- worker thread -------------------------------------------------------------
    def cancel_requested(self) -> bool:
        token = self.cancel_token
        return self._stop_flag.is_set() or (token is not None and token.is_cancelled())

    def publish(self, *events: Event) -> None:
        """Hand events to the caller's loop without waiting for it.

        If that loop has ended (a stream abandoned just before its loop closed),
        nobody can receive them any more: the end is recorded here instead, so
        what waits for it (an abandoned stream's finalisers) still runs once.
        """
        assert self._loop is not None, "request was never bound"
        if not post(self._loop, self._deliver, events):
            self._deliver(events, loop_alive=False)
