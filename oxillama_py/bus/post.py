"""The one way across the thread boundary: calls from the decode thread into an event loop.

``anyio.from_thread.run_sync`` waits for the loop to run the call; a busy loop
(say, a slow progress widget) would then stall decoding. Decoding must never wait
on subscribers, so the worker only schedules the call and moves on. Requests'
events cross by :func:`post`, and so do the answers of work run on the decode
thread (:func:`wait_future`): no anyio worker thread is ever parked on a wait.

Posts to one loop share one wake-up: a step publishes to each of its
requests, and while the loop has not yet run the calls already posted, a new
one joins them (a :class:`_Mailbox` per loop) instead of waking the loop again:
one thread hop a step for all the requests of a loop, in the order posted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import EventLoopToken, current_token

__all__ = ["post", "wait_future"]

_T = TypeVar("_T")


_log = logging.getLogger("oxillama_py")


class _Mailbox:
    """The calls posted to one loop that it has not run yet, and whether a wake-up is on its way."""

    __slots__ = ("calls", "lock", "native", "scheduled")

    def __init__(self, native: Any) -> None:
        self.native = weakref.ref(native)  # not the loop itself: the mailbox goes with its loop
        self.calls: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def put(self, func: Callable[..., object], args: tuple[Any, ...]) -> bool:
        with self.lock:  # held while scheduling: a failed wake-up leaves only this call to take back
            self.calls.append((func, args))
            if self.scheduled:
                return True
            native = self.native()
            try:
                if native is None:
                    raise RuntimeError("the loop is gone")
                _schedule(native, self.drain)
            except RuntimeError:  # loop closed (asyncio) or run finished (trio.RunFinishedError)
                self.calls.pop()
                return False
            self.scheduled = True
            return True

    def drain(self) -> None:
        """On the loop: run every call posted so far, and those posted meanwhile, in order."""
        while True:
            with self.lock:
                if not self.calls:
                    self.scheduled = False
                    return
                batch, self.calls = self.calls, deque()
            for func, args in batch:
                try:
                    func(*args)
                except Exception:  # one call's failure must not lose the others (nor end a trio run)
                    _log.exception("a call posted to the event loop failed")


_mailboxes: weakref.WeakKeyDictionary[Any, _Mailbox] = weakref.WeakKeyDictionary()
_mailboxes_lock = threading.Lock()


def _schedule(native: Any, func: Callable[[], object]) -> None:
    if isinstance(native, asyncio.AbstractEventLoop):
        native.call_soon_threadsafe(func)
    else:  # trio.lowlevel.TrioToken
        native.run_sync_soon(func)


def post(token: EventLoopToken, func: Callable[..., object], *args: Any) -> bool:
    """Schedule ``func(*args)`` on the loop of ``token``; ``False`` if that loop is gone."""
    native: Any = token.native_token
    box = _mailboxes.get(native)
    if box is None:
        with _mailboxes_lock:
            box = _mailboxes.get(native)
            if box is None:
                try:
                    box = _mailboxes[native] = _Mailbox(native)
                except TypeError:  # a token that cannot be weakly referenced: one wake-up a call
                    try:
                        _schedule(native, lambda: func(*args))
                    except RuntimeError:
                        return False
                    return True
    return box.put(func, args)


async def wait_future(future: Future[_T]) -> _T:
    """The result of ``future``, completed by another thread, awaited on this loop.

    Cancelling the wait cancels ``future`` if it has not started; once it has,
    the wait goes on (shielded) until it ends, so its effect is never half known.
    """
    token = current_token()
    done = anyio.Event()
    future.add_done_callback(lambda _: post(token, done.set))
    try:
        await done.wait()
    except anyio.get_cancelled_exc_class():
        if not future.cancel():
            with anyio.CancelScope(shield=True):
                await done.wait()
        raise
    return future.result()
