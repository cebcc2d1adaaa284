"""LoRA adapters on the real model: against llama-cpp-python, their errors, and beside a running batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from lora_gguf import write_lora
from test_batching import PREDICTABLE

from oxillama_py import AsyncEngine, CancellationToken, Engine, EngineConfig, GenerationCancelled, LoadError, Lora

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapters(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    return {
        "a": write_lora(root / "a.gguf", model_path),
        "b": write_lora(root / "b.gguf", model_path, rank=8, alpha=16.0, targets=("ffn_up",), seed=1),
        "shape": write_lora(root / "shape.gguf", model_path, shape_offset=1),
        "arch": write_lora(root / "arch.gguf", model_path, arch="llama"),
    }


@pytest.fixture(scope="module")
def small(model_path: Path) -> Iterator[Engine]:
    with Engine(EngineConfig(model_path, n_ctx=4096, max_concurrency=4, seed=7)) as engine:
        yield engine


@pytest.fixture(scope="module")
def base(small: Engine) -> str:
    return small.generate(PROMPT, 16, temperature=0)


def reference(model_path: Path, lora: Path, scale: float) -> str:
    from llama_cpp import Llama

    llm = Llama(str(model_path), n_ctx=512, verbose=False, lora_path=str(lora), lora_scale=scale)
    try:
        return str(llm.create_completion(PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"])  # type: ignore[index]
    finally:
        llm.close()


def test_lora_load_reads_the_file_without_a_model(adapters: dict[str, Path], model_path: Path) -> None:
    lora = Lora.load(adapters["a"])
    assert (lora.architecture, lora.rank, lora.alpha, lora.num_adapters()) == ("gemma3", 4, 8.0, 36)
    assert lora.weights[:2] == ("blk.0.attn_q.weight", "blk.0.attn_v.weight")
    other = Lora.load(str(adapters["b"]))
    assert (other.rank, other.alpha, other.num_adapters()) == (8, 16.0, 18)
    assert "rank=8" in repr(other)
    with pytest.raises(LoadError, match="not a LoRA adapter"):
        Lora.load(model_path)  # a model, not an adapter
    with pytest.raises(LoadError, match="not found|No such file|does not exist"):
        Lora.load(adapters["a"].with_name("absent.gguf"))
    with pytest.raises(TypeError, match="path must be"):
        Lora.load(3)  # type: ignore[arg-type]


def test_apply_and_remove_match_llama_cpp_python(
    small: Engine, base: str, adapters: dict[str, Path], model_path: Path
) -> None:
    try:
        small.apply_lora(adapters["a"])
        assert small.lora_adapters() == {str(adapters["a"]): 1.0}
        with_lora = small.generate(PROMPT, 16, temperature=0)
        assert with_lora != base
        assert with_lora == reference(model_path, adapters["a"], 1.0)
        small.apply_lora(str(adapters["a"]), scale=0.5)  # again: a new scale
        assert small.lora_adapters() == {str(adapters["a"]): 0.5}
        assert small.generate(PROMPT, 16, temperature=0) == reference(model_path, adapters["a"], 0.5)
        small.apply_lora(adapters["b"], 1.0)  # several adapters add up
        both = small.generate(PROMPT, 16, temperature=0)
        assert both not in (base, with_lora) and len(small.lora_adapters()) == 2
        small.remove_lora(adapters["b"])
        small.remove_lora(adapters["a"])
        assert small.lora_adapters() == {}
        assert small.generate(PROMPT, 16, temperature=0) == base
    finally:
        for path in small.lora_adapters():
            small.remove_lora(path)


def test_bad_adapters_are_load_errors_and_change_nothing(small: Engine, base: str, adapters: dict[str, Path]) -> None:
    with pytest.raises(LoadError, match="do not fit this model"):
        small.apply_lora(adapters["shape"])
    with pytest.raises(LoadError, match="'llama' models"):
        small.apply_lora(adapters["arch"])
    with pytest.raises(LoadError, match="not a LoRA adapter"):
        small.apply_lora(small.config.model_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no LoRA adapter"):
        small.remove_lora(adapters["a"])
    with pytest.raises(TypeError, match="scale must be a float"):
        small.apply_lora(adapters["a"], scale="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        small.apply_lora(adapters["a"], scale=float("nan"))
    with pytest.raises(TypeError, match="path must be"):
        small.apply_lora(None)  # type: ignore[arg-type]
    assert small.lora_adapters() == {}
    assert small.generate(PROMPT, 16, temperature=0) == base


def test_the_prefix_cache_is_emptied_when_the_weights_change(
    small: Engine, base: str, adapters: dict[str, Path], model_path: Path
) -> None:
    long = "A long shared system prompt about the geography of Europe. " * 10 + PROMPT
    small.generate(long, 8, temperature=0)
    assert small.stats.prefix_cache.entries >= 1
    try:
        small.apply_lora(adapters["a"])
        assert small.stats.prefix_cache.entries == 0
        cached = small.complete(long, 8, temperature=0)
        assert cached.cached_tokens == 0  # nothing computed with the old weights is reused
    finally:
        small.remove_lora(adapters["a"])
    with Engine(EngineConfig(model_path, n_ctx=4096, max_concurrency=4)) as cold:
        cold.apply_lora(adapters["a"])
        assert cold.generate(long, 8, temperature=0) == cached.text


def test_snapshot_keeps_the_adapters(small: Engine, adapters: dict[str, Path], tmp_path: Path) -> None:
    try:
        small.apply_lora(adapters["a"], 0.5)
        expected = small.generate(PROMPT, 16, temperature=0)
        small.snapshot(tmp_path / "lora.snap")
    finally:
        small.remove_lora(adapters["a"])
    assert Engine.snapshot_info(tmp_path / "lora.snap").loras == ((str(adapters["a"]), 0.5),)
    with Engine.restore(tmp_path / "lora.snap") as restored:
        assert restored.lora_adapters() == {str(adapters["a"]): 0.5}
        assert restored.generate(PROMPT, 16, temperature=0) == expected


@pytest.mark.anyio
async def test_lora_and_embeddings_mixed_into_a_running_batch(
    small: Engine, base: str, adapters: dict[str, Path]
) -> None:
    """Running greedy generations keep the weights they started with and stay batched."""
    aengine: AsyncEngine = small.async_engine()
    prompts = ["1, 2, 3, 4,", "Monday, Tuesday, Wednesday,", "a, b, c, d,"]
    await aengine.apply_lora(adapters["a"])
    lora_text = await aengine.generate(PROMPT, 16, temperature=0)
    await aengine.remove_lora(adapters["a"])
    embedded = await aengine.embed_numpy("cat")
    generated: dict[int, str] = {}
    late: list[str] = []
    embeddings: list[float] = []
    waited: list[bool] = []
    steps_before = small.stats.decode_steps

    started = [anyio.Event() for _ in prompts]

    async def generate(i: int) -> None:
        generated[i] = await aengine.generate(prompts[i], 32, temperature=0, progress=lambda e: started[i].set())

    async def mix() -> None:
        for event in started:  # every generation has decoded its first token: the batch is decoding now
            await event.wait()
        embeddings.append(float(await aengine.embed_numpy("cat") @ embedded))
        async with anyio.create_task_group() as group:
            group.start_soon(aengine.apply_lora, adapters["a"])
            while not (aengine.stats.weight_changes or aengine.lora_adapters()):
                await anyio.sleep(0.005)
            waited.append(aengine.stats.weight_changes == 1)
            late.append(await aengine.generate(PROMPT, 16, temperature=0))  # submitted while the adapter waits

    try:
        async with anyio.create_task_group() as group:
            for i in range(len(prompts)):
                group.start_soon(generate, i)
            group.start_soon(mix)
        for i, prompt in enumerate(prompts):
            assert generated[i].startswith(PREDICTABLE[prompt]), (prompt, generated[i])
        assert small.stats.decode_steps - steps_before < 3 * 32 + 16  # the three were decoded together
        assert embeddings[0] > 0.999
        assert late == [lora_text]  # the late request ran with the adapter
        assert waited == [True] and aengine.stats.weight_changes == 0
    finally:
        await aengine.remove_lora(adapters["a"])
    assert await aengine.generate(PROMPT, 16, temperature=0) == base


@pytest.mark.anyio
async def test_a_cancelled_apply_changes_nothing(small: Engine, base: str, adapters: dict[str, Path]) -> None:
    aengine: AsyncEngine = small.async_engine()
    ended: list[str] = []
    decoding = anyio.Event()
    token = CancellationToken()

    async def long() -> None:
        # Decodes until cancelled below (far fewer than its 1,000 tokens on any machine).
        with pytest.raises(GenerationCancelled):
            await aengine.generate_streaming(
                "1, 2, 3, 4,", 1000, lambda piece: decoding.set(), temperature=0, cancel_token=token
            )
        ended.append("long")

    async with anyio.create_task_group() as group:
        group.start_soon(long)
        await decoding.wait()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as applying:
                applying.start_soon(aengine.apply_lora, adapters["a"])  # waits for the generation...
                while aengine.stats.weight_changes == 0:
                    await anyio.sleep(0.005)
                scope.cancel()  # ...and is cancelled while it waits
        assert aengine.stats.weight_changes == 0
        short = await aengine.generate(PROMPT, 4, temperature=0)
        ended.append("short")
        assert base.startswith(short)  # the withdrawn change holds no request back
        token.cancel()
    assert ended == ["short", "long"]
    assert aengine.lora_adapters() == {}
    assert await aengine.generate(PROMPT, 16, temperature=0) == base
