"""Cooperative cancellation that any thread can trigger."""

from __future__ import annotations

import threading

__all__ = ["CancellationToken"]


class CancellationToken:
    """A thread-safe flag that the decode worker checks before every decode step.

    The sync :class:`~oxillama_py.Engine` blocks its caller, so cancellation has to
    come from elsewhere: another thread, a signal handler, a UI callback. Pass the
    token to any ``generate*`` call and call :meth:`cancel` from anywhere; the call
    raises :class:`~oxillama_py.GenerationCancelled` within one decode step.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_cancelled(self) -> bool:
        return self._event.is_set()

    def reset(self) -> None:
        """Make the token reusable for another generation."""
        self._event.clear()

    def __repr__(self) -> str:
        return f"CancellationToken(cancelled={self.is_cancelled()})"
