"""The one way across the thread boundary: calls from the decode thread into an event loop.

``anyio.from_thread.run_sync`` waits for the loop to run the call; a busy loop
(say, a slow progress widget) would then stall decoding. Decoding must never wait
on subscribers, so the worker only schedules the call and moves on. Requests'
events cross by :func:`post`, and so do the answers of work run on the decode
thread (:func:`wait_future`): no anyio worker thread is ever parked on a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import EventLoopToken, current_token

__all__ = ["post", "wait_future"]

_T = TypeVar("_T")


def post(token: EventLoopToken, func: Callable[..., object], *args: Any) -> bool:
    """Schedule ``func(*args)`` on the loop of ``token``; ``False`` if that loop is gone."""
    native: Any = token.native_token
    try:
        if isinstance(native, asyncio.AbstractEventLoop):
            native.call_soon_threadsafe(func, *args)
        else:  # trio.lowlevel.TrioToken
            native.run_sync_soon(func, *args)
    except RuntimeError:  # loop closed (asyncio) or run finished (trio.RunFinishedError)
        return False
    return True


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
