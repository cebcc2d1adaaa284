"""Snapshots, pickling and the local Hugging Face cache, with the real model through the public API."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from oxillama_py import AsyncEngine, Engine, EngineConfig, LoadError, SnapshotError, SnapshotInfo
from oxillama_py.hub import sha256_of

SYSTEM = "You are a careful assistant who answers in one short sentence. " * 12
QUESTION = SYSTEM + "Question: what is the capital of France? Answer:"


def config(model_path: Path) -> EngineConfig:
    return EngineConfig(model_path, n_ctx=4096, max_concurrency=4, seed=3)


@pytest.fixture(scope="module")
def warm(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Path, str]]:
    """An engine that answered QUESTION (its prefix is cached), and its snapshot file."""
    with Engine(config(model_path)) as engine:
        answer = engine.generate(QUESTION, 24, temperature=0)
        path = tmp_path_factory.mktemp("snap") / "engine.snap"
        engine.snapshot(path)
        yield engine, path, answer


def test_snapshot_info_reads_the_metadata_without_a_model(warm: tuple[Engine, Path, str], model_path: Path) -> None:
    engine, path, _ = warm
    info = Engine.snapshot_info(path)
    assert isinstance(info, SnapshotInfo) and info == AsyncEngine.snapshot_info(str(path))
    assert info.arch_id == "gemma3" and Path(info.model_path) == model_path.resolve()
    assert info.magic == b"OXISNAP1" and info.version == 1 and info.tokenizer_path is None
    assert info.max_context_length == 4096 and info.num_threads == engine.config.n_threads
    assert info.config == replace(engine.config, model_path=str(model_path))
    assert info.prefixes == 1 and info.pinned == 0 and info.loras == () and info.hub_origin is None
    cached = engine.stats.prefix_cache.tokens
    assert 0 < info.tokens_count <= cached and info.tokens_count % 64 == 0 and cached - info.tokens_count < 64


def test_restore_brings_back_the_cached_prefix_and_the_same_answer(
    warm: tuple[Engine, Path, str], model_path: Path
) -> None:
    engine, path, answer = warm
    with Engine.restore(path) as restored:
        assert restored.config == replace(engine.config, model_path=str(model_path.resolve())) and restored.is_loaded()
        stats = restored.stats.prefix_cache
        assert stats.entries == 1 and stats.tokens == Engine.snapshot_info(path).tokens_count
        result = restored.complete(QUESTION, 24, temperature=0)
        assert result.text == answer
        assert result.cached_tokens >= stats.tokens - 64  # a hit on the restored cells
        assert restored.stats.prefix_cache.hits == 1
    with Engine(config(model_path)) as cold:
        assert cold.generate(QUESTION, 24, temperature=0) == answer


def test_restore_from_bytes_and_a_moved_model(warm: tuple[Engine, Path, str], model_path: Path, tmp_path: Path) -> None:
    engine, _, answer = warm
    data = engine.snapshot_bytes()
    moved = tmp_path / "moved.gguf"
    moved.symlink_to(model_path)
    with Engine.restore(data, model_path=moved) as restored:
        assert restored.config.model_path == str(moved)
        assert restored.generate(QUESTION, 24, temperature=0) == answer


def test_corrupted_snapshots_are_clear_errors(warm: tuple[Engine, Path, str], tmp_path: Path) -> None:
    _, path, _ = warm
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cases = {
        "flipped": (bytes(flipped), "checksum"),
        "truncated": (data[: len(data) - 100], "checksum"),
        "header cut": (data[:40], "truncated header"),
        "garbage": (b"not a snapshot at all, just text", "not an oxillama_py snapshot"),
        "empty": (b"", "too short"),
    }
    for name, (content, message) in cases.items():
        with pytest.raises(LoadError, match=message):
            Engine.restore(content)
        broken = tmp_path / f"{name}.snap"
        broken.write_bytes(content)
        with pytest.raises(LoadError, match=message):
            Engine.restore(broken)
    header_flipped = bytearray(data)
    header_flipped[30] ^= 0x01  # inside the JSON header
    (tmp_path / "header.snap").write_bytes(bytes(header_flipped))
    with pytest.raises(LoadError, match="header's checksum"):
        Engine.snapshot_info(tmp_path / "header.snap")
    with pytest.raises(LoadError, match="cannot read snapshot"):
        Engine.snapshot_info(tmp_path / "missing.snap")
    with pytest.raises(TypeError, match="path must be"):
        Engine.snapshot_info(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^model_path must be a str or an os.PathLike, got int"):
        Engine.restore(tmp_path / "missing.snap", model_path=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^snapshot_path must be"):
        Engine.from_snapshot_with_hub(42)  # type: ignore[arg-type]


def _forge(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The snapshot with its header changed and both digests made right again (a crafted file)."""
    length = struct.unpack_from("<Q", data, 12)[0]
    header = json.loads(data[20 : 20 + length])
    change(header)
    encoded = json.dumps(header).encode()
    body = data[20 + length + 32 : -32]
    out = data[:12] + struct.pack("<Q", len(encoded)) + encoded + hashlib.sha256(encoded).digest() + body
    return out + hashlib.sha256(out).digest()


def test_crafted_headers_are_snapshot_errors(warm: tuple[Engine, Path, str]) -> None:
    _, path, _ = warm
    data = path.read_bytes()

    def negative(h: dict[str, Any]) -> None:
        h["prefixes"][0]["tokens"] = -1

    def fractional(h: dict[str, Any]) -> None:
        h["prefixes"][0]["state"] = 2.5

    def stringly(h: dict[str, Any]) -> None:
        h["prefixes"][0]["pinned"] = "false"

    def no_fingerprint(h: dict[str, Any]) -> None:
        del h["model"]["fingerprint"]

    def bad_origin(h: dict[str, Any]) -> None:
        h["hub_origin"] = "somewhere"

    def bad_config(h: dict[str, Any]) -> None:
        h["config"]["n_ctx"] = -5

    for change in (negative, fractional, stringly, no_fingerprint, bad_origin, bad_config):
        with pytest.raises(SnapshotError):
            Engine.restore(_forge(data, change))
    assert Engine.restore(_forge(data, lambda h: None)).close() is None  # the forging itself is sound


def test_a_pinned_prefix_and_a_longer_entry_on_its_cells(model_path: Path, tmp_path: Path) -> None:
    with Engine(config(model_path)) as engine:
        engine.cache_prefix(SYSTEM)
        answer = engine.generate(QUESTION, 24, temperature=0)
        assert engine.stats.prefix_cache.entries == 2
        engine.snapshot(tmp_path / "both.snap")
    info = Engine.snapshot_info(tmp_path / "both.snap")
    assert (info.prefixes, info.pinned) == (1, 1)  # the longer entry serves both; it keeps the pin
    with Engine.restore(tmp_path / "both.snap") as restored:
        assert restored.stats.prefix_cache.pinned == 1
        assert restored.generate(QUESTION, 24, temperature=0) == answer


def test_another_model_file_is_refused(warm: tuple[Engine, Path, str], tmp_path: Path) -> None:
    _, path, _ = warm
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(4096))
    with pytest.raises(LoadError, match="not the model file the snapshot was taken with"):
        Engine.restore(path, model_path=other)
    with pytest.raises(LoadError, match="not found"):
        Engine.restore(path, model_path=tmp_path / "absent.gguf")


def test_upstreams_module_functions(warm: tuple[Engine, Path, str], tmp_path: Path) -> None:
    from oxillama_py import snapshot

    engine, _, answer = warm
    snapshot.dump(engine, tmp_path / "dumped.snap")
    assert snapshot.snapshot_info(tmp_path / "dumped.snap").prefixes == 1
    with snapshot.loads(snapshot.dumps(engine)) as restored:
        assert restored.generate(QUESTION, 24, temperature=0) == answer
    with snapshot.load(tmp_path / "dumped.snap", model_path=engine.config.model_path) as restored:
        assert restored.stats.prefix_cache.entries == 1
    with pytest.raises(SnapshotError, match="not an oxillama_py snapshot"):
        snapshot.loads(b"garbage data not a valid snapshot")
    assert issubclass(SnapshotError, LoadError)


def test_engines_refuse_pickling_with_a_hint(warm: tuple[Engine, Path, str]) -> None:
    engine, _, _ = warm
    for target in (engine, engine.async_engine()):
        with pytest.raises(TypeError, match="snapshot"):
            pickle.dumps(target)
        with pytest.raises(TypeError, match="snapshot"):
            copy.deepcopy(target)


@pytest.mark.anyio
async def test_async_snapshot_while_generating_and_restore(model_path: Path, tmp_path: Path) -> None:
    async with AsyncEngine(config(model_path)) as engine:
        answer = await engine.generate(QUESTION, 24, temperature=0)
        texts: list[str] = []

        decoding = anyio.Event()

        async def generate() -> None:
            texts.append(await engine.generate("1, 2, 3, 4,", 32, temperature=0, progress=lambda e: decoding.set()))

        async with anyio.create_task_group() as group:
            group.start_soon(generate)
            await decoding.wait()  # the snapshot is taken while it decodes
            await engine.snapshot(tmp_path / "live.snap")
        assert texts and texts[0].startswith(" 5, 6, 7")
    restored = await AsyncEngine.restore(tmp_path / "live.snap")
    async with restored:
        assert restored.stats.prefix_cache.entries >= 1
        assert await restored.generate(QUESTION, 24, temperature=0) == answer


def _hub_cache(root: Path, model_path: Path) -> str:
    """A Hugging Face cache, laid out as the hub writes it, holding the default model's file."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "models--google--gemma-3-270m-GGUF"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "gemma-3-270m-q4_k_m.gguf").symlink_to(model_path)
    return "google/gemma-3-270m-GGUF"


def test_from_hub_uses_the_local_cache_only(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warm: tuple[Engine, Path, str]
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo_id = _hub_cache(tmp_path, model_path)
    with Engine.from_hub(repo_id, config=config(model_path)) as engine:
        assert engine.generate(QUESTION, 24, temperature=0) == warm[2]
    engine = AsyncEngine.from_hub(repo_id, filename="gemma-3-270m-q4_k_m.gguf", token="unused")
    assert Path(str(engine.config.model_path)).name == "gemma-3-270m-q4_k_m.gguf" and not engine.is_loaded()
    with pytest.raises(LoadError, match="never downloads"):
        Engine.from_hub("google/not-cached-GGUF")
    with pytest.raises(LoadError, match="never downloads"):
        Engine.from_hub(repo_id, filename="absent.gguf")


def test_snapshot_with_hub_origin(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warm: tuple[Engine, Path, str]
) -> None:
    engine, _, answer = warm
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo_id = _hub_cache(tmp_path / "hub", model_path)
    origin = {"repo_id": repo_id, "filename": "gemma-3-270m-q4_k_m.gguf", "sha256": sha256_of(model_path)}
    engine.snapshot(tmp_path / "hub.snap", hub_origin=origin)  # type: ignore[arg-type]
    assert Engine.snapshot_info(tmp_path / "hub.snap").hub_origin == origin
    assert json.loads((tmp_path / "hub.snap.meta.json").read_text()) == {"hub_origin": origin}  # upstream's sidecar
    assert not Path(f"{warm[1]}.meta.json").exists()  # none without a hub_origin
    with Engine.from_snapshot_with_hub(tmp_path / "hub.snap") as restored:
        assert Path(str(restored.config.model_path)).parent.parent.name == "snapshots"
        assert restored.generate(QUESTION, 24, temperature=0) == answer
    engine.snapshot(tmp_path / "bad.snap", hub_origin={**origin, "sha256": "0" * 64})  # type: ignore[arg-type]
    with pytest.raises(LoadError, match="SHA-256"):
        Engine.from_snapshot_with_hub(tmp_path / "bad.snap")
    with pytest.raises(LoadError, match="records no hub_origin"):
        Engine.from_snapshot_with_hub(warm[1])
    with pytest.raises(TypeError, match="hub_origin"):
        engine.snapshot(tmp_path / "x.snap", hub_origin={"repo_id": 1})  # type: ignore[typeddict-item]
