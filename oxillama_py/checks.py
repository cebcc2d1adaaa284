"""The argument checks every public entry point makes before any work, and their one message format.

One module so that the same mistake reads the same wherever it is made
(``EngineConfig(n_ctx="4k")``, ``generate(..., top_k="3")``, a Ray config):
a wrong type is a ``TypeError`` ``"{name} must be {what}, got {type} {value!r}"``,
a value out of range a ``ValueError`` ``"{name} must be {bound}, got {value!r}"``.
``bool`` is never accepted as a number. Pure Python, imports nothing from the
package, so any module may use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard, TypeVar, overload

__all__ = [
    "check_bool",
    "check_callable",
    "check_int",
    "check_number",
    "check_path_like",
    "check_sequence",
    "check_type",
    "describe",
    "is_number",
]

T = TypeVar("T")
U = TypeVar("U")


def describe(value: object) -> str:
    """``value``'s type and repr (``"str 'hot'"``): every message here names what it got."""
    return f"{type(value).__name__} {value!r}"


@overload
def check_type(name: str, value: object, expected: type[T], what: str) -> T: ...
@overload
def check_type(name: str, value: object, expected: tuple[type[T], type[U]], what: str) -> T | U: ...


def check_type(name: str, value: object, expected: type | tuple[type, ...], what: str) -> object:
    """``value`` if it is an instance of ``expected``; else ``TypeError``: ``{name} must be {what}, got ...``."""
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be {what}, got {describe(value)}")
    return value


def check_path_like(name: str, value: object, what: str = "a str or an os.PathLike") -> str | os.PathLike[str]:
    """A file system path as the caller gave it (``str`` or ``os.PathLike``)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be {what}, got {describe(value)}")
    return value


def check_bool(name: str, value: object) -> bool:
    """A flag: ``True`` or ``False`` only (``1`` and ``"yes"`` are type errors)."""
    return check_type(name, value, bool, "a bool")


def check_callable(name: str, value: object) -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {describe(value)}")
    return value


def check_sequence(name: str, value: object, what: str) -> Sequence[Any]:
    """A sequence that is not a ``str`` or ``bytes`` (a lone string is the common mistake)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be {what}, got {describe(value)}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[float]:
    """An ``int`` or a ``float``, not a ``bool`` (finite or not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """An ``int`` (not a ``bool``) within ``[low, high]``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    assert isinstance(value, int)
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            bound = f"between {low} and {high}"
        else:
            bound = f">= {low}" if low is not None else f"<= {high}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    what: str = "a number (int or float)",
) -> float:
    """A finite ``int`` or ``float`` (not a ``bool``) within ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if not is_number(value):
        raise TypeError(f"{name} must be {what}, got {describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    too_low = low is not None and (number <= low if low_open else number < low)
    if too_low or (high is not None and number > high):
        left = "(" if low_open else "["
        if low is not None and high is not None:
            bound = f"in {left}{low}, {high}]"
        elif low is not None:
            bound = f"> {low}" if low_open else f">= {low}"
        else:
            bound = f"<= {high}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return number
