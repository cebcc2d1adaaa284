"""Streaming callbacks: the protocol and the subscriber that drives them.

Two shapes are accepted: ``callback(piece)``, called with every non-empty text
piece in order, and ``callback(piece, token_id, is_final)``, called once per
generated token (``is_final`` is ``True`` on the last one). Either may be a
coroutine function; its result is awaited. Upstream oxillama-py's names of the
second shape (``StreamingCallback``, ``TokenCallback``) live in
:mod:`oxillama_py.compat` and are importable from here, upstream's path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TypeAlias

from .bus.events import Finished, Step, TokenEvent
from .bus.subscriber import Outcome, Subscriber
from .checks import check_callable
from .compat import StreamingCallback, TokenCallback

__all__ = [
    "StreamingCallback",
    "TokenCallback",
    "PieceCallback",
    "CallbackSubscriber",
    "takes_token_details",
    "check_callback",
]


PieceCallback: TypeAlias = Callable[[str], "Awaitable[object] | object"]
"""The per-piece shape: called with each non-empty text piece."""

_log = logging.getLogger("oxillama_py.callback")


def takes_token_details(callback: Callable[..., object]) -> bool:
    """Whether ``callback`` takes ``(piece, token_id, is_final)`` rather than ``(piece)``."""
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        return False
    positional = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


def check_callback(callback: object) -> None:
    if callback is not None:
        check_callable("callback", callback)


class CallbackSubscriber(Subscriber):
    """Calls the user's streaming callback in order.

    ``strict``: its exceptions fail the generation; otherwise each is logged
    and that call skipped (upstream oxillama-py's ``strict_callback=False``).
    """

    def __init__(self, callback: Callable[..., object], *, strict: bool = True) -> None:
        self._callback = callback
        self._strict = strict
        self._details = takes_token_details(callback)
        self._held: TokenEvent | None = None  # the latest token, until we know whether it is the last

    async def _call(self, *args: object) -> None:
        try:
            result = self._callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            if self._strict:
                raise
            _log.warning("the streaming callback raised; skipped (strict_callback=False)", exc_info=True)

    async def on_step(self, step: Step) -> None:
        if not self._details:
            for token in step.tokens:
                if token.piece:
                    await self._call(token.piece)
            return
        for token in step.tokens:
            held, self._held = self._held, token
            if held is not None:
                await self._call(held.piece, held.token_id, False)

    async def on_finished(self, finished: Finished) -> None:
        if not self._details:
            if finished.tail:
                await self._call(finished.tail)
            return
        held, self._held = self._held, None
        if held is not None:
            await self._call(held.piece + finished.tail, held.token_id, True)

    def finalise(self, outcome: Outcome) -> None:
        held, self._held = self._held, None
        if held is not None and not inspect.iscoroutinefunction(self._callback):
            with suppress(Exception):  # cut short: close the callback's stream anyway
                self._callback(held.piece, held.token_id, True)
