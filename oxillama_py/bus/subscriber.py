"""The subscriber protocol: a task that reads its own stream and is finalised once."""

from __future__ import annotations

from anyio.streams.memory import MemoryObjectReceiveStream

from .events import Event, Finished, FinishReason, Step

__all__ = ["Subscriber", "Outcome"]


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
    """Override :meth:`on_step`/:meth:`on_finished`, or :meth:`run` to consume differently."""

    async def run(self, events: MemoryObjectReceiveStream[Event], expected: int) -> None:
        """Consume until ``expected`` requests have finished."""
        remaining = expected
        async for event in events:
            if isinstance(event, Step):
                await self.on_step(event)
            else:
                await self.on_finished(event)
                remaining -= 1
                if remaining == 0:
                    return

    async def on_step(self, step: Step) -> None:
        """One decode step's tokens of one request."""

    async def on_finished(self, finished: Finished) -> None:
        """One request ended."""

    def finalise(self, outcome: Outcome) -> None:
        """Runs exactly once, after the generation ended, however it ended."""
