"""One generation: its requests, its subscriber tasks, and the single way it ends."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from .events import Event, Finished, FinishReason
from .request import Request
from .subscriber import Outcome, Subscriber

__all__ = ["Generation"]

# How long a cancelled generation waits for the worker to drop its sequences.
SETTLE_TIMEOUT = 30.0


class Generation:
    """Runs the subscribers of one or more requests as tasks of one task group.

    Every ending (end of sequence, max tokens, an exception, a cancel scope, a
    cancellation token) reaches each subscriber the same way: its task leaves
    :meth:`_serve`, whose ``finally`` first makes sure the worker has let go of
    the requests and then finalises the subscriber with the :class:`Outcome`.
    """

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
        self._group: TaskGroup | None = None

    async def run(self) -> list[Finished]:
        """Decode to the end; return each request's terminal event or raise what broke it."""
        receivers: list[MemoryObjectReceiveStream[Event]] = []
        sends = []
        for _ in self.subscribers:
            send, receive = anyio.create_memory_object_stream[Event](math.inf)
            sends.append(send)
            receivers.append(receive)
        for request in self.requests:
            request.bind(sends)
        async with anyio.create_task_group() as group:
            self._group = group
            for subscriber, receive in zip(self.subscribers, receivers, strict=False):
                group.start_soon(self._serve, subscriber, receive)
            for request in self.requests:
                self._submit(request)
        for send in sends:
            send.close()
        if self._failure is not None:
            raise self._failure
        return [request.terminal for request in self.requests if request.terminal is not None]

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        for request in self.requests:
            if not request.finished and not request.cancel_requested():
                request.cancel()
        if self._group is not None:
            self._group.cancel_scope.cancel()

    async def _serve(self, subscriber: Subscriber, events: MemoryObjectReceiveStream[Event]) -> None:
        try:
            with events:
                await subscriber.run(events, len(self.requests))
        except Exception as exc:  # a subscriber broke: the generation fails with its error
            self._fail(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle()
            subscriber.finalise(self.outcome())

    async def _settle(self) -> None:
        """Stop whatever still decodes and wait (briefly) until the worker let go of it."""
        pending = [request for request in self.requests if not request.finished]
        for request in pending:
            request.cancel()
        with anyio.move_on_after(SETTLE_TIMEOUT):
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
