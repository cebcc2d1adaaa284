"""One generation: its requests, its subscribers, and the single way it ends.

A generation is driven in one of two ways. :meth:`Generation.run` gives each
subscriber a task of one task group and a stream of its own (``generate*``).
:meth:`Generation.start` and :meth:`Generation.pump` let a consumer drive it
from its own awaits, with no task at all (``stream()``: an async iterator must
not hold a task group, PEP 789). Both end the same way: every request still
decoding is cancelled, the worker acknowledges that it let go of each one, and
only then is each subscriber finalised, exactly once, with the :class:`Outcome`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import anyio
from anyio.lowlevel import EventLoopToken, current_token
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .events import Event, Finished, FinishReason
from .post import post
from .request import Request
from .subscriber import Outcome, Subscriber, receive_batch

__all__ = ["Generation"]

_log = logging.getLogger("oxillama_py")


def _ended(batch: Sequence[Event]) -> int:
    return sum(isinstance(event, Finished) for event in batch)


class Generation:
    def __init__(
        self,
        requests: Sequence[Request],
        subscribers: Sequence[Subscriber],
        submit: Callable[[Request], None],
    ) -> None:
        self.requests = list(requests)
        self.subscribers = list(subscribers)
        self._submit = submit
        self._failure: BaseException | None = None
        self._remaining = len(self.requests)
        self._streams = ExitStack()  # the pull mode's stream ends, closed when it is finalised
        self._receive: MemoryObjectReceiveStream[Event] | None = None
        self._loop: tuple[EventLoopToken, int] | None = None  # the pull mode's loop and its thread
        self._finalised = False

    # -- task mode ---------------------------------------------------------------------
    async def run(self) -> list[Finished]:
        """Decode to the end; return each request's terminal event or raise what broke it."""
        with ExitStack() as streams:
            receivers: list[MemoryObjectReceiveStream[Event]] = []
            sends: list[MemoryObjectSendStream[Event]] = []
            for _ in self.subscribers:
                send, receive = anyio.create_memory_object_stream[Event](math.inf)
                sends.append(streams.enter_context(send))
                receivers.append(streams.enter_context(receive))
            self._bind(sends)
            async with anyio.create_task_group() as group:
                for subscriber, receive in zip(self.subscribers, receivers, strict=True):
                    group.start_soon(self._serve, subscriber, receive, group.cancel_scope)
                self._submit_all()
        if self._failure is not None:
            raise self._failure
        return self.terminals()

    async def _serve(
        self, subscriber: Subscriber, events: MemoryObjectReceiveStream[Event], scope: anyio.CancelScope
    ) -> None:
        try:
            remaining = len(self.requests)
            while remaining:
                batch = await receive_batch(events)
                await subscriber.feed(batch)
                remaining -= _ended(batch)
        except Exception as exc:  # a subscriber broke: the generation fails with its error
            self._fail(exc)
            scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle()
            subscriber.finalise(self.outcome())

    # -- pull mode ---------------------------------------------------------------------
    def start(self) -> None:
        """Submit the requests; the consumer then calls :meth:`pump` until it returns ``False``."""
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._streams.enter_context(send)
        self._receive = self._streams.enter_context(receive)
        self._loop = (current_token(), threading.get_ident())
        self._bind([send])
        self._submit_all()

    async def pump(self) -> bool:
        """Feed every subscriber what was published since the last pump; ``False`` once all ended."""
        assert self._receive is not None, "start() first"
        if not self._remaining:
            return False
        batch = await receive_batch(self._receive)
        try:
            for subscriber in self.subscribers:
                await subscriber.feed(batch)
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            self._remaining -= _ended(batch)
        return True

    async def aclose(self) -> None:
        """End a pulled generation: cancel what still decodes, wait for the worker, finalise."""
        with anyio.CancelScope(shield=True):
            await self._settle()
        self._finalise()

    def abandon(self) -> None:
        """End a pulled generation nobody will await any more (its consumer was dropped).

        Cancels at once (the worker drops the sequences at its next step) and
        finalises once the worker has acknowledged the last of them, from the
        loop callback that delivers that acknowledgement (on the decode thread
        only if that loop has already ended).
        """
        if self._finalised:
            return
        pending = [request for request in self.requests if not request.finished]
        for request in pending:
            request.cancel()
        if not pending:  # all ended already: finalise on the loop's thread, not the collector's
            loop = self._loop
            if loop is None or loop[1] == threading.get_ident() or not post(loop[0], self._finalise_when_all_ended):
                self._finalise_when_all_ended()
        for request in pending:
            request.on_end(self._finalise_when_all_ended)

    def _finalise_when_all_ended(self) -> None:
        if all(request.finished for request in self.requests):
            try:
                self._finalise()
            except Exception:  # nobody is left to raise it to; never into the loop
                _log.exception("finalising an abandoned stream failed")

    def _finalise(self) -> None:
        if self._finalised:
            return
        self._finalised = True
        outcome = self.outcome()
        with ExitStack() as stack:  # every finaliser runs, even after one raised; the streams close last
            stack.enter_context(self._streams)
            for subscriber in reversed(self.subscribers):
                stack.callback(subscriber.finalise, outcome)

    # -- both ----------------------------------------------------------------------------
    def _bind(self, sinks: Sequence[MemoryObjectSendStream[Event]]) -> None:
        for request in self.requests:
            request.bind(sinks)

    def _submit_all(self) -> None:
        for request in self.requests:
            self._submit(request)

    def terminals(self) -> list[Finished]:
        return [request.terminal for request in self.requests if request.terminal is not None]

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        for request in self.requests:
            request.cancel()

    async def _settle(self) -> None:
        """Stop whatever still decodes and wait until the worker let go of it.

        No time limit: the worker checks for cancellation before every step and
        between prefill chunks, and a closed or crashed worker answers every
        request it holds, so this always ends, and a display is never finalised
        while the worker still holds its request.
        """
        pending = [request for request in self.requests if not request.finished]
        for request in pending:
            request.cancel()
        for request in pending:
            await request.wait_finished()

    def outcome(self) -> Outcome:
        finished = tuple(request.terminal for request in self.requests)
        if self._failure is not None:
            return Outcome("error", self._failure, finished)
        for item in finished:
            if item is not None and item.reason == "error":
                return Outcome("error", item.error, finished)
        if any(item is None or item.reason == "cancelled" for item in finished):
            return Outcome("cancelled", None, finished)
        reason: FinishReason = "length" if any(item and item.reason == "length" for item in finished) else "stop"
        return Outcome(reason, None, finished)
