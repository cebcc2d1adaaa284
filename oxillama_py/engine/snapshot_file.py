"""The snapshot file format: an engine's model reference, config, adapters and prefix-cache cells, checksummed.

Upstream oxillama-py's module surface over it (``dump``, ``load``...) is
:mod:`oxillama_py.snapshot`.

Layout: ``MAGIC``, the format version (u32), the header's length (u64), the
header (UTF-8 JSON), its SHA-256, then each cached prefix's tokens (int32) and
llama.cpp sequence state, and the SHA-256 of everything before it. The header
alone answers :func:`snapshot_info`, so that needs no model and reads a few
kilobytes; a restore checks both digests before it trusts a byte.

Limitations: the saved cells are the prefix cache's (what the engine keeps
between calls), cut to a multiple of 64 tokens; generations in flight are not
saved. Only attention KV caches round-trip (llama.cpp's sequence state);
recurrent models (Mamba) have no prefix cache here. Adapters are saved by
path: a restore needs the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from ..config import EngineConfig, PromptLookup, SamplerConfig
from ..decode.persist import SavedPrefix
from ..errors import LoadError, SnapshotError
from ..paths import check_path

__all__ = [
    "MAGIC",
    "VERSION",
    "HubOrigin",
    "SavedPrefix",
    "SnapshotInfo",
    "model_fingerprint",
    "read_snapshot",
    "snapshot_info",
    "write_snapshot",
]

MAGIC = b"OXISNAP1"
VERSION = 1
_HEAD = struct.Struct("<8sIQ")
_DIGEST = 32
_MAX_HEADER = 64 << 20
_FINGERPRINT_SPAN = 1 << 20


class HubOrigin(TypedDict):
    """Where the model came from on the Hugging Face Hub (upstream's ``HubOrigin``)."""

    repo_id: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot's metadata, read without loading its model (upstream's fields first)."""

    arch_id: str
    model_path: str
    tokenizer_path: str | None
    max_context_length: int
    num_threads: int
    version: int
    magic: bytes
    tokens_count: int
    """Tokens of all the cached prefixes it holds."""
    prefixes: int
    pinned: int
    loras: tuple[tuple[str, float], ...]
    hub_origin: HubOrigin | None
    config: EngineConfig
    created: float


def model_fingerprint(path: Path) -> str:
    """A quick identity of a model file: its size and the SHA-256 of its first and last MiB."""
    try:
        size = path.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_FINGERPRINT_SPAN))
            handle.seek(max(0, size - _FINGERPRINT_SPAN))
            digest.update(handle.read(_FINGERPRINT_SPAN))
    except OSError as exc:
        raise LoadError(f"cannot read model file {path}: {exc}") from exc
    return digest.hexdigest()


def config_to_json(config: EngineConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    for fields in (data, data.get("speculative")):
        if isinstance(fields, dict) and fields.get("model_path") is not None:
            fields["model_path"] = os.fspath(fields["model_path"])
    if isinstance(config.speculative, PromptLookup):
        data["speculative"] = {"prompt_lookup": data["speculative"]}
    elif config.speculative is not None:
        data["speculative"] = {"draft_model": data["speculative"]}
    return data


def config_from_json(data: object) -> EngineConfig:
    if not isinstance(data, dict) or not isinstance(data.get("sampler"), dict):
        raise SnapshotError("corrupt snapshot: its config is not an object")
    fields = dict(data)
    try:
        sampler = SamplerConfig(**fields.pop("sampler"))
        spec = fields.pop("speculative", None)
        speculative: PromptLookup | EngineConfig | None = None
        if isinstance(spec, dict) and isinstance(spec.get("prompt_lookup"), dict):
            speculative = PromptLookup(**spec["prompt_lookup"])
        elif isinstance(spec, dict) and isinstance(spec.get("draft_model"), dict):
            speculative = config_from_json(spec["draft_model"])
        elif spec is not None:
            raise TypeError(f"speculative is {spec!r}")
        return EngineConfig(**fields, sampler=sampler, speculative=speculative)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot: its config does not build ({exc})") from exc


def write_snapshot(header: dict[str, Any], prefixes: list[SavedPrefix]) -> bytes:
    """The snapshot's bytes; ``header`` gets the prefixes' sizes and the format's fields."""
    header = {
        **header,
        "created": time.time(),
        "prefixes": [{"tokens": len(p.tokens), "pinned": p.pinned, "state": len(p.state)} for p in prefixes],
    }
    encoded = json.dumps(header, sort_keys=True).encode("utf-8")
    out = io.BytesIO()
    out.write(_HEAD.pack(MAGIC, VERSION, len(encoded)))
    out.write(encoded)
    out.write(hashlib.sha256(encoded).digest())
    for prefix in prefixes:
        out.write(np.ascontiguousarray(prefix.tokens, dtype="<i4").tobytes())
        out.write(prefix.state)
    out.write(hashlib.sha256(out.getbuffer()).digest())
    return out.getvalue()


def _parse_header(head: bytes, where: str) -> tuple[dict[str, Any], int]:
    """The header and where the body starts, from the file's first bytes (at least all of the header)."""
    if len(head) < _HEAD.size:
        raise SnapshotError(f"not an oxillama_py snapshot (too short): {where}")
    magic, version, length = _HEAD.unpack_from(head)
    if magic != MAGIC:
        raise SnapshotError(f"not an oxillama_py snapshot (bad magic {magic!r}): {where}")
    if version != VERSION:
        raise SnapshotError(
            f"snapshot format version {version} is not supported (this library reads {VERSION}): {where}"
        )
    if length > _MAX_HEADER:
        raise SnapshotError(f"corrupt snapshot (a header of {length} bytes): {where}")
    end = _HEAD.size + length
    if len(head) < end + _DIGEST:
        raise SnapshotError(f"corrupt snapshot (truncated header): {where}")
    encoded = head[_HEAD.size : end]
    if hashlib.sha256(encoded).digest() != head[end : end + _DIGEST]:
        raise SnapshotError(
            f"corrupt snapshot (the header's checksum does not match; or one of upstream oxillama-py's, "
            f"a format this library does not read): {where}"
        )
    try:
        header = json.loads(encoded.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot (unreadable header): {where}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("prefixes"), list):
        raise SnapshotError(f"corrupt snapshot (header without prefixes): {where}")
    return header, end + _DIGEST


def read_snapshot(source: bytes | Path) -> tuple[dict[str, Any], list[SavedPrefix]]:
    """Header and prefixes of a whole snapshot, checked (:class:`LoadError` for anything wrong)."""
    where = str(source) if isinstance(source, Path) else "<bytes>"
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise LoadError(f"cannot read snapshot {source}: {exc}") from exc
    else:
        data = bytes(source)
    header, offset = _parse_header(data, where)
    if len(data) < offset + _DIGEST or hashlib.sha256(memoryview(data)[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise SnapshotError(f"corrupt snapshot (the checksum does not match: truncated or altered): {where}")
    prefixes = []
    try:
        for item in header["prefixes"]:
            n_tokens, state_size, pinned = item["tokens"], item["state"], item["pinned"]
            if not (_count(n_tokens) and _count(state_size) and type(pinned) is bool):
                raise ValueError(f"bad prefix {item!r}")
            if offset + 4 * n_tokens + state_size > len(data) - _DIGEST:
                raise ValueError("a prefix runs past the end")
            tokens = np.frombuffer(data, dtype="<i4", count=n_tokens, offset=offset).astype(np.int32)
            offset += 4 * n_tokens
            state = data[offset : offset + state_size]
            offset += state_size
            prefixes.append(SavedPrefix(tokens, pinned, state))
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot (bad prefix table): {where}") from exc
    if offset != len(data) - _DIGEST:
        raise SnapshotError(f"corrupt snapshot (its sizes do not add up): {where}")
    return header, prefixes


def check_hub_origin(origin: object) -> HubOrigin | None:
    """``None``, or a ``HubOrigin`` of three strings (its digest lower-cased); ``TypeError`` otherwise."""
    if origin is None:
        return None
    if not isinstance(origin, dict) or not all(
        isinstance(origin.get(k), str) for k in ("repo_id", "filename", "sha256")
    ):
        raise TypeError("hub_origin must be a dict with str repo_id, filename and sha256")
    return HubOrigin(repo_id=origin["repo_id"], filename=origin["filename"], sha256=origin["sha256"].lower())


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def snapshot_info(path: str | os.PathLike[str]) -> SnapshotInfo:
    """:class:`SnapshotInfo` from the header alone (no model is loaded, the cells are not read)."""
    where = check_path(path)
    try:
        with where.open("rb") as handle:
            head = handle.read(_HEAD.size)
            if len(head) == _HEAD.size and head[:8] == MAGIC:
                length = min(_HEAD.unpack(head)[2], _MAX_HEADER + 1)
                head += handle.read(length + _DIGEST)
    except OSError as exc:
        raise LoadError(f"cannot read snapshot {where}: {exc}") from exc
    header, _ = _parse_header(head, str(where))
    return info_of(header)


def info_of(header: dict[str, Any]) -> SnapshotInfo:
    config = config_from_json(header.get("config"))
    try:
        model = header["model"]
        prefixes = header["prefixes"]
        if not isinstance(model["fingerprint"], str) or not isinstance(model["path"], str):
            raise TypeError("the model reference is not a path and a fingerprint")
        loras = tuple((str(item["path"]), float(item["scale"])) for item in header.get("loras", []))
        origin = check_hub_origin(header.get("hub_origin"))
        return SnapshotInfo(
            arch_id=str(model["architecture"]),
            model_path=str(model["path"]),
            tokenizer_path=None,
            max_context_length=config.n_ctx,
            num_threads=config.n_threads,
            version=VERSION,
            magic=MAGIC,
            tokens_count=sum(int(item["tokens"]) for item in prefixes),
            prefixes=len(prefixes),
            pinned=sum(bool(item["pinned"]) for item in prefixes),
            loras=loras,
            hub_origin=origin,
            config=config,
            created=float(header["created"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot (incomplete header: {exc})") from exc
