"""Model state on disk: reading and checking a snapshot for a restore, the hub cache, atomic writes (blocking).

These run in worker threads (or in :class:`~oxillama_py.Engine`'s calling
thread), never on the event loop and never on the decode thread.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from ..checks import check_type
from ..config import EngineConfig
from ..decode.persist import SavedPrefix
from ..errors import LoadError, SnapshotError
from ..hub import resolve_cached, sha256_of
from ..llama.model import check_gguf_file
from ..lora import Lora
from ..paths import check_path
from .snapshot_file import info_of, model_fingerprint, read_snapshot, snapshot_info

__all__ = [
    "NO_PICKLE",
    "Restore",
    "hub_config",
    "model_from_hub_origin",
    "plan_restore",
    "plan_speculative_restore",
    "write_file",
]

NO_PICKLE = (
    "a {} cannot be pickled: it owns a loaded model and threads. Save its state with snapshot() or "
    "snapshot_bytes() and bring it back with Engine.restore()"
)


@dataclass(frozen=True)
class Restore:
    """A checked snapshot, ready to be put into a new engine."""

    config: EngineConfig
    loras: list[tuple[str, float]]
    prefixes: list[SavedPrefix]


def write_file(path: Path, data: bytes) -> None:
    """Write whole or not at all: a temporary file of our own beside ``path``, synced, then renamed."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no directory to write {path} into")
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(name)
        raise


def plan_restore(source: object, model_path: object) -> Restore:
    """Read and check a snapshot and the model file it names."""
    given = None if model_path is None else check_path(model_path, "model_path")  # before any file is read
    if isinstance(source, (bytes, bytearray, memoryview)):
        header, prefixes = read_snapshot(bytes(source))
    else:
        header, prefixes = read_snapshot(check_path(source))
    info = info_of(header)
    model = Path(info.model_path) if given is None else given
    check_gguf_file(model)
    if model_fingerprint(model) != header["model"]["fingerprint"]:
        raise LoadError(f"{model} is not the model file the snapshot was taken with ({info.model_path})")
    for item in header.get("loras", []):  # before the model loads: the adapters are still the same files
        lora = Lora.load(str(item["path"]))
        if lora.architecture != info.arch_id or model_fingerprint(lora.path) != item.get("fingerprint"):
            raise LoadError(f"the LoRA adapter {lora.path} is not the file the snapshot was taken with")
    # the adapters applied when it was taken (the header's) are the truth, config.lora's or not
    return Restore(replace(info.config, model_path=str(model), lora=()), list(info.loras), prefixes)


def plan_speculative_restore(source: object, target_model: object, draft_model: object) -> Restore:
    """:func:`plan_restore` for a speculating engine's snapshot, its draft model file replaced by ``draft_model``.

    Upstream's ``SpeculativeEngine.restore(path, target_model, draft_model)``:
    the snapshot records both configs; the files given (either may be left
    out) stand for the recorded ones.
    """
    draft_path = None if draft_model is None else check_path(draft_model, "draft_model")
    plan = plan_restore(source, target_model)
    draft = plan.config.speculative
    if draft is None:
        raise LoadError("the snapshot was taken from an engine that does not speculate: restore it with Engine.restore")
    if draft_path is not None:
        if not isinstance(draft, EngineConfig):
            raise LoadError("the snapshot's drafter is prompt lookup, not a draft model: give no draft_model")
        check_gguf_file(draft_path)
        draft = replace(draft, model_path=str(draft_path))
    return replace(plan, config=replace(plan.config, speculative=draft))


def model_from_hub_origin(snapshot_path: object) -> Path:
    """The cached model file a snapshot's ``hub_origin`` names, checked against its SHA-256."""
    where = check_path(snapshot_path, "snapshot_path")
    origin = snapshot_info(where).hub_origin
    if origin is None:
        raise LoadError(f"snapshot {where} records no hub_origin (take it with snapshot(..., hub_origin=...))")
    try:
        path = resolve_cached(origin["repo_id"], filename=origin["filename"])
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot: its hub_origin does not name a file ({exc})") from exc
    if sha256_of(path) != origin["sha256"]:
        raise LoadError(
            f"the cached {origin['repo_id']}/{origin['filename']} ({path}) "
            "does not have the SHA-256 the snapshot records"
        )
    return path


def hub_config(
    repo_id: str, filename: str | None, revision: str | None, token: str | None, config: EngineConfig | None
) -> EngineConfig:
    """``config`` (or the default) with the cached hub file as its model; nothing is downloaded."""
    if token is not None:
        check_type("token", token, str, "a str or None")
    if config is not None:
        check_type("config", config, EngineConfig, "an EngineConfig or None")
    path = resolve_cached(repo_id, filename=filename, revision=revision)
    return replace(config or EngineConfig(), model_path=str(path))
