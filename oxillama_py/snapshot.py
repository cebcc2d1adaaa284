"""Upstream oxillama-py's ``snapshot`` module: its spellings over :meth:`Engine.snapshot` and :meth:`Engine.restore`.

The file format itself is :mod:`oxillama_py.engine.snapshot_file`.

Limitations: a snapshot keeps the prefix cache's cells (what the engine holds
between calls), not generations in flight. Only attention KV caches
round-trip; recurrent models (Mamba) have no prefix cache here, so their
snapshots hold the config and adapters only. Adapters are saved by path.
"""

from __future__ import annotations

import os

from .engine import Engine
from .engine.snapshot_file import (
    MAGIC,
    VERSION,
    HubOrigin,
    SnapshotInfo,
    config_from_json,
    config_to_json,
    snapshot_info,
)
from .errors import SnapshotError

__all__ = [
    "MAGIC",
    "VERSION",
    "HubOrigin",
    "SnapshotError",
    "SnapshotInfo",
    "config_from_json",
    "config_to_json",
    "dump",
    "dumps",
    "load",
    "loads",
    "snapshot_info",
]


def dump(engine: Engine, path: str | os.PathLike[str]) -> None:
    """``engine.snapshot(path)`` (upstream's spelling)."""
    engine.snapshot(path)


def dumps(engine: Engine) -> bytes:
    """``engine.snapshot_bytes()`` (upstream's spelling)."""
    return engine.snapshot_bytes()


def load(path: str | os.PathLike[str], *, model_path: str | os.PathLike[str] | None = None) -> Engine:
    """``Engine.restore(path, model_path=model_path)`` (upstream's spelling)."""
    return Engine.restore(path, model_path=model_path)


def loads(blob: bytes, *, model_path: str | os.PathLike[str] | None = None) -> Engine:
    """:func:`load` from :func:`dumps`'s bytes."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"blob must be bytes, got {type(blob).__name__}")
    return Engine.restore(bytes(blob), model_path=model_path)
