"""The throttle gate of progress displays: when a progress tick may fire.

Kept apart from :mod:`oxillama_py.progress` (which re-exports it) because it
is the one piece of the progress contract with state of its own: it decides
from time and token counts alone, and knows nothing of displays.
"""

from __future__ import annotations

from .checks import check_int, check_number

__all__ = ["DEFAULT_THROTTLE_MS", "DEFAULT_THROTTLE_TOKENS", "ThrottleGate", "check_throttle"]

DEFAULT_THROTTLE_MS = 50.0
DEFAULT_THROTTLE_TOKENS = 4


def check_throttle(throttle_ms: float | None, throttle_tokens: int | None) -> None:
    """Reject bad throttle settings before any work starts (``TypeError`` for a wrong type)."""
    if throttle_ms is not None:
        check_number("progress_throttle_ms", throttle_ms, low=0)
    if throttle_tokens is not None:
        check_int("progress_throttle_tokens", throttle_tokens, low=1)


class ThrottleGate:
    """Open for the first token, then when either ``ms`` or ``tokens`` have passed."""

    __slots__ = ("_last_count", "_last_time", "interval", "tokens")

    def __init__(self, throttle_ms: float | None = None, throttle_tokens: int | None = None) -> None:
        check_throttle(throttle_ms, throttle_tokens)
        self.interval = (DEFAULT_THROTTLE_MS if throttle_ms is None else float(throttle_ms)) / 1000.0
        self.tokens = DEFAULT_THROTTLE_TOKENS if throttle_tokens is None else throttle_tokens
        self._last_time: float | None = None
        self._last_count = 0

    def ready(self, now: float, count: int) -> bool:
        if count <= self._last_count:
            return False
        if self._last_time is None:
            return True
        return now - self._last_time >= self.interval or count - self._last_count >= self.tokens

    @property
    def unthrottled(self) -> bool:
        """With no time gate, every token opens the gate: coalescing would drop events."""
        return self.interval == 0.0

    def mark(self, now: float, count: int) -> None:
        self._last_time = now
        self._last_count = count
