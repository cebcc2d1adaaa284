"""The one check of a path argument (model, adapter, snapshot, hash), made before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_path"]


def check_path(value: object, name: str = "path") -> Path:
    """``value`` as a ``Path``; a ``TypeError`` naming ``name`` if it is not a str or an ``os.PathLike``.

    Python's own error for ``Path(3)`` names neither the argument nor what it takes.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or an os.PathLike, got {type(value).__name__}")
    return Path(value)
