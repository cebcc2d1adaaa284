"""The one check of a path argument (model, adapter, snapshot, hash), made before any work starts."""

from __future__ import annotations

from pathlib import Path

from .checks import check_path_like

__all__ = ["check_path"]


def check_path(value: object, name: str = "path") -> Path:
    """``value`` as a ``Path``; a ``TypeError`` naming ``name`` if it is not a str or an ``os.PathLike``.

    Python's own error for ``Path(3)`` names neither the argument nor what it takes.
    """
    return Path(check_path_like(name, value))
