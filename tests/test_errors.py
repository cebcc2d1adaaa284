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
    SamplerConfig,
    SpeculativeConfig,
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
    budget = engine.config.slot_ctx
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
        ({"progress": 42}, TypeError, "^progress must be"),
        ({"progress": "bar"}, TypeError, "^progress must be"),
        ({"progress_throttle_ms": -5}, ValueError, "progress_throttle_ms"),
        ({"progress_throttle_tokens": 0}, ValueError, "progress_throttle_tokens"),
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
    assert not engine.is_loaded


def test_bad_arguments_sync(engine: Engine) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate("hello", -4)
    with pytest.raises(TypeError, match="^progress must be"):
        engine.generate("hello", 4, progress=3.5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        engine.generate("hello", 4, temprature=0.5)
    with pytest.raises(TypeError, match="prompts"):
        engine.generate_batch("not a list", 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1},
        {"top_k": 1.5},
        {"top_p": 0},
        {"min_p": -0.1},
        {"repeat_penalty": -1},
        {"repeat_last_n": -1},
        {"mirostat": 3},
        {"mirostat_tau": 0},
        {"mirostat_eta": -1},
        {"seed": 2**40},
    ],
)
def test_sampler_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplerConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_ctx": 0},
        {"n_threads": 0},
        {"n_batch": -1},
        {"max_concurrency": 0},
        {"seed": -2},
        {"flash_attn": "yes"},
        {"sampler": "greedy"},
        {"model_path": 42},
        {"model_path": ""},
    ],
)
def test_engine_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EngineConfig(**kwargs)


def test_other_configs_validate() -> None:
    with pytest.raises(ValueError, match="num_speculative"):
        SpeculativeConfig(EngineConfig("m.gguf"), num_speculative=0)
    with pytest.raises(ValueError, match="target"):
        SpeculativeConfig("m.gguf")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Engine("m.gguf")  # type: ignore[arg-type]
    assert SamplerConfig.greedy().is_greedy
    assert SamplerConfig.mirostat_v2(tau=4.0).mirostat == 2


def test_closed_engine_raises(config: EngineConfig) -> None:
    engine = Engine(config)
    engine.close()
    with pytest.raises(OxiLlamaError, match="closed"):
        engine.generate("hello", 4)
    engine.close()  # idempotent
    token = CancellationToken()
    assert not token.is_cancelled()
