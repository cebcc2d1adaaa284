"""Fire-and-forget calls from the decode thread into an event loop.

``anyio.from_thread.run_sync`` waits for the loop to run the call; a busy loop
(say, a slow progress widget) would then stall decoding. Decoding must never wait
on subscribers, so the worker only schedules the call and moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from anyio.lowlevel import EventLoopToken

__all__ = ["post"]


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
