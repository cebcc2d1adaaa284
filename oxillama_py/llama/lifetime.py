"""A guard that frees a llama.cpp object only once no call on it is in flight.

llama.cpp objects are freed by the thread that owns them, while other threads
(the event loop's helpers, other ``Engine`` callers) may still be reading them.
Each call holds the guard for its duration; ``close`` marks the object closed,
waits for the calls in flight, and only then lets the owner free it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import GenerateError

__all__ = ["Lifetime"]


class Lifetime:
    __slots__ = ("_closed", "_cond", "_users", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._users = 0
        self._closed = False

    @contextmanager
    def use(self) -> Iterator[None]:
        """Hold the object alive for one call; a closed object raises :class:`GenerateError`."""
        with self._cond:
            if self._closed:
                raise GenerateError(f"the engine is closed ({self.name} was freed)")
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                if not self._users:
                    self._cond.notify_all()

    def close(self) -> bool:
        """Refuse new calls and wait for those in flight; ``True`` only for the first close."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._cond.wait_for(lambda: not self._users)
            return True
