"""The subscriber protocol: fed what the worker published, finalised exactly once."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from .events import Event, Finished, FinishReason, Step

__all__ = ["Outcome", "Subscriber", "receive_batch"]


class Outcome:
    """How a whole generation ended, as every finaliser sees it."""

    __slots__ = ("error", "finished", "reason")

    def __init__(
        self, reason: FinishReason, error: BaseException | None, finished: tuple[Finished | None, ...]
    ) -> None:
        self.reason: FinishReason = reason
        self.error = error
        self.finished = finished

    @property
    def status(self) -> str:
        """``"success"``, ``"cancelled"`` or ``"error"``."""
        return {"cancelled": "cancelled", "error": "error"}.get(self.reason, "success")

    def __repr__(self) -> str:
        return f"Outcome(reason={self.reason!r}, error={self.error!r})"


class Subscriber:
    """Override :meth:`on_step`/:meth:`on_finished`, or :meth:`feed` to consume whole batches."""

    async def feed(self, events: Sequence[Event]) -> None:
        """Everything published since the previous feed, in order.

        A cancelled caller stops it between two events, as a stream read event
        by event would: nothing reaches a callback once its scope is cancelled.
        """
        for event in events:
            await anyio.lowlevel.checkpoint_if_cancelled()
            if isinstance(event, Step):
                await self.on_step(event)
            else:
                await self.on_finished(event)

    async def on_step(self, step: Step) -> None:
        """One decode step's tokens of one request."""

    async def on_finished(self, finished: Finished) -> None:
        """One request ended."""

    def finalise(self, outcome: Outcome) -> None:
        """Runs exactly once, after the generation ended, however it ended."""


async def receive_batch(events: MemoryObjectReceiveStream[Event]) -> list[Event]:
    """Wait for one event, then take whatever else is already queued (coalescing)."""
    batch = [await events.receive()]
    while True:
        try:
            batch.append(events.receive_nowait())
        except anyio.WouldBlock:
            return batch
