"""Bad input gets a clear, typed error before any work starts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

from oxillama_py import (
    AsyncEngine,
    CancellationToken,
    Engine,
    EngineConfig,
    KvCacheFullError,
    LoadError,
    OxiLlamaError,
)

pytestmark = pytest.mark.anyio


def _tiny_gguf(path: Path) -> Path:
    """A well-formed GGUF file that is not a usable model (no tensors, no vocabulary)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    truncated = root / "truncated.gguf"
    with model_path.open("rb") as src:
        truncated.write_bytes(src.read(4 * 1024 * 1024))
    not_gguf = root / "notes.gguf"
    not_gguf.write_bytes(b"this is not a model\n" * 100)
    empty = root / "empty.gguf"
    empty.write_bytes(b"")
    return {
        "missing": root / "does-not-exist.gguf",
        "directory": root,
        "truncated": truncated,
        "not_gguf": not_gguf,
        "empty": empty,
        "no_model": _tiny_gguf(root / "tiny.gguf"),
    }


KINDS = ["missing", "directory", "truncated", "not_gguf", "empty", "no_model"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_model_file_raises_load_error_naming_the_path(broken_models: dict[str, Path], kind: str) -> None:
    path = broken_models[kind]
    with Engine(EngineConfig(path)) as engine:
        with pytest.raises(LoadError) as info:
            engine.load_model()
        assert str(path) in str(info.value)
        with pytest.raises(LoadError):  # and again: a failed load leaves no half-built state
            engine.generate("hello", 4)


@pytest.mark.parametrize("kind", ["missing", "truncated"])
async def test_bad_model_file_async(broken_models: dict[str, Path], kind: str) -> None:
    engine = AsyncEngine(EngineConfig(broken_models[kind]))
    with pytest.raises(LoadError, match=str(broken_models[kind])):
        await engine.generate("hello", 4)
    await engine.aclose()


async def test_prompt_longer_than_context(aengine: AsyncEngine, engine: Engine) -> None:
    budget = engine.config.n_ctx
    prompt = "word " * (budget + 10)
    bar = tqdm(total=7, file=io.StringIO())
    calls: list[object] = []
    with pytest.raises(KvCacheFullError, match="does not fit"):
        await aengine.generate(prompt, 16, progress=bar)
    with pytest.raises(KvCacheFullError):
        await aengine.generate("hello", budget, progress=calls.append)
    assert bar.total == 7 and bar.n == 0, "the display was touched although no work started"
    assert calls == []
    bar.close()
    assert issubclass(KvCacheFullError, OxiLlamaError)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_tokens": -1}, ValueError, "max_tokens"),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"max_tokens": 2.5}, TypeError, "max_tokens"),
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": -3}, ValueError, "top_k"),
        ({"min_p": 2.0}, ValueError, "min_p"),
        ({"repeat_penalty": 0}, ValueError, "repeat_penalty"),
        ({"seed": -1}, ValueError, "seed"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "hot"}, TypeError, "^temperature must be a number"),
        ({"top_k": 1.5}, TypeError, "^top_k must be an int"),
        ({"seed": "7"}, TypeError, "^seed must be an int"),
        ({"seed": True}, TypeError, "^seed must be an int"),
        ({"max_tokens": True}, TypeError, "max_tokens"),
        ({"progress": 42}, TypeError, "^progress must be"),
        ({"progress": "bar"}, TypeError, "^progress must be"),
        ({"progress_throttle_ms": -5}, ValueError, "progress_throttle_ms"),
        ({"progress_throttle_tokens": 0}, ValueError, "progress_throttle_tokens"),
        ({"progress_throttle_ms": "5"}, TypeError, "^progress_throttle_ms must be a number"),
        ({"progress_throttle_ms": True}, TypeError, "^progress_throttle_ms must be a number"),
        ({"progress_throttle_tokens": 1.5}, TypeError, "^progress_throttle_tokens must be an int"),
        ({"progress_capture_text": "yes"}, TypeError, "^progress_capture_text must be a bool"),
        ({"strict_progress": 1}, TypeError, "^strict_progress must be a bool"),
        ({"stop": 5}, TypeError, "^stop must be"),
        ({"temprature": 0}, TypeError, "temprature"),
        ({"cancel_token": object()}, TypeError, "cancel_token"),
        ({"stop": [1, 2]}, TypeError, "stop"),
        ({"sampler": {"temperature": 0}}, TypeError, "sampler"),
        ({"prompt": b"bytes"}, TypeError, "prompt"),
    ],
)
async def test_bad_arguments_fail_before_loading(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    # The model path does not exist: a LoadError would mean work started before validation.
    kwargs = dict(kwargs)
    engine = AsyncEngine(EngineConfig(tmp_path / "missing.gguf"))
    prompt = kwargs.pop("prompt", "hello")
    max_tokens = kwargs.pop("max_tokens", 8)
    with pytest.raises(error, match=match):
        await engine.generate(prompt, max_tokens, **kwargs)
    with pytest.raises(error, match=match):
        await engine.complete_batch([prompt, prompt], max_tokens, **kwargs)
    assert not engine.is_loaded()


def test_bad_arguments_sync(engine: Engine) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate("hello", -4)
    with pytest.raises(TypeError, match="^progress must be"):
        engine.generate("hello", 4, progress=3.5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        engine.generate("hello", 4, temprature=0.5)
    with pytest.raises(TypeError, match="prompts"):
        engine.generate_batch("not a list", 4)


def test_engine_needs_an_engine_config() -> None:
    with pytest.raises(TypeError, match="^config must be an EngineConfig"):
        Engine("m.gguf")  # type: ignore[arg-type]


def test_closed_engine_raises(config: EngineConfig) -> None:
    engine = Engine(config)
    engine.close()
    with pytest.raises(OxiLlamaError, match="closed"):
        engine.generate("hello", 4)
    engine.close()  # idempotent
    token = CancellationToken()
    assert not token.is_cancelled()
