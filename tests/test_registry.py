"""ModelRegistry and shared weights: names, lazy loads, LRU unloading, waiters, failures, adapters as models.

The real-model tests serve two copies of the default model (hard links: other
paths, so other weights) and a LoRA adapter over one of them; the logic tests
(FIFO waiters, one load for many users) use a fake engine factory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from lora_gguf import write_lora
from test_batching import CONFIDENT

from oxillama_py import (
    AsyncEngine,
    Engine,
    EngineConfig,
    GenerateError,
    LoadError,
    ModelRegistry,
    OxiLlamaError,
    UnknownModelError,
    loaded_weights,
)

PROMPTS = list(CONFIDENT)[:2]
TOKENS = 12
LORA_PROMPT = "The capital of France is"
LORA_TOKENS = 16


def _copy(source: Path, target: Path) -> Path:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def _config(path: Path, **overrides: Any) -> EngineConfig:
    return EngineConfig(path, n_ctx=1024, max_concurrency=2, n_threads=2, seed=7, **overrides)


def _holders(path: Path) -> int:
    """Engines holding the weights of ``path`` (0: not loaded)."""
    where = path.resolve()
    return sum(w.holders for w in loaded_weights() if w.path == where)


@pytest.fixture(scope="module")
def files(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry")
    corrupt = root / "corrupt.gguf"
    corrupt.write_bytes(model_path.read_bytes()[: 2 << 20])  # a valid header, tensors cut off
    return {
        "one": _copy(model_path, root / "one.gguf"),
        "two": _copy(model_path, root / "two.gguf"),
        "corrupt": corrupt,
        "adapter": write_lora(root / "adapter.gguf", model_path),
    }


@pytest.fixture(scope="module")
def expected(files: dict[str, Path]) -> dict[str, Any]:
    """Each model's own ``Engine.generate`` (and the adapter's through ``apply_lora``), greedy."""
    texts: dict[str, Any] = {}
    for name in ("one", "two"):
        with Engine(_config(files[name])) as engine:
            texts[name] = {p: engine.generate(p, TOKENS, temperature=0) for p in PROMPTS}
    with Engine(_config(files["one"])) as engine:
        texts["base"] = engine.generate(LORA_PROMPT, LORA_TOKENS, temperature=0)
        engine.apply_lora(files["adapter"])
        texts["adapter"] = engine.generate(LORA_PROMPT, LORA_TOKENS, temperature=0)
    assert texts["adapter"] != texts["base"]
    return texts


def _registry(files: dict[str, Path], max_loaded: int | None = None) -> ModelRegistry:
    registry = ModelRegistry(max_loaded=max_loaded)
    registry.add("one", _config(files["one"]))
    registry.add("two", _config(files["two"]))
    return registry


@pytest.mark.anyio
async def test_two_names_answer_with_their_own_model_concurrently(
    files: dict[str, Path], expected: dict[str, Any]
) -> None:
    answers: list[tuple[str, str, str]] = []

    async def ask(registry: ModelRegistry, name: str, prompt: str) -> None:
        async with registry.use(name) as engine:
            assert engine.config.model_path == files[name]
            answers.append((name, prompt, await engine.generate(prompt, TOKENS, temperature=0)))

    async with _registry(files) as registry:
        assert registry.names == ("one", "two") and "one" in registry and "three" not in registry
        assert registry.loaded == ()  # nothing loads before a use
        async with anyio.create_task_group() as tg:
            for name in ("one", "two"):
                for prompt in PROMPTS:
                    tg.start_soon(ask, registry, name, prompt)
        assert sorted(registry.loaded) == ["one", "two"]
        assert _holders(files["one"]) == _holders(files["two"]) == 1  # one load each, however many users
    assert len(answers) == 4
    for name, prompt, text in answers:
        assert text == expected[name][prompt], (name, prompt)
    assert _holders(files["one"]) == _holders(files["two"]) == 0  # aclose freed them


@pytest.mark.anyio
async def test_max_loaded_one_unloads_the_least_recently_used(files: dict[str, Path], expected: dict[str, Any]) -> None:
    prompt = PROMPTS[0]
    async with _registry(files, max_loaded=1) as registry:
        async with registry.use("one") as first:
            assert await first.generate(prompt, TOKENS, temperature=0) == expected["one"][prompt]
        assert registry.loaded == ("one",)
        async with registry.use("two") as second:
            assert registry.loaded == ("two",)
            assert first.closed and _holders(files["one"]) == 0  # unloaded for room
            assert await second.generate(prompt, TOKENS, temperature=0) == expected["two"][prompt]
        seen: list[tuple[str, ...]] = []

        async def ask(name: str) -> None:
            async with registry.use(name) as engine:
                seen.append(registry.loaded)
                assert await engine.generate(prompt, TOKENS, temperature=0) == expected[name][prompt]

        async with anyio.create_task_group() as tg:  # both at once: one waits until the other is released
            for name in ("one", "two", "one"):
                tg.start_soon(ask, name)
        assert len(seen) == 3 and all(len(loaded) == 1 for loaded in seen)
        assert second.closed and len(registry.loaded) == 1


def test_unknown_name_raises_before_any_work(files: dict[str, Path]) -> None:
    registry = _registry(files)
    with pytest.raises(UnknownModelError, match=r"'three'.*'one', 'two'") as info:
        registry.use("three")
    assert isinstance(info.value, LookupError) and isinstance(info.value, OxiLlamaError)
    assert registry.loaded == () and _holders(files["one"]) == 0
    with pytest.raises(UnknownModelError):
        registry.add_lora("x", base="three", path=files["adapter"])
    with pytest.raises(ValueError, match="taken"):
        registry.add("one", _config(files["one"]))
    with pytest.raises(ValueError, match="empty"):
        registry.add("", _config(files["one"]))
    with pytest.raises(TypeError, match="EngineConfig"):
        registry.add("three", str(files["one"]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_loaded"):
        ModelRegistry(max_loaded=0)
    with pytest.raises(ValueError, match="no LoRA adapter file"):
        registry.add_lora("x", base="one", path=files["adapter"].with_name("absent.gguf"))
    assert registry.names == ("one", "two")


@pytest.mark.anyio
async def test_a_failed_load_raises_in_every_waiter_and_is_retried(files: dict[str, Path]) -> None:
    built: list[EngineConfig] = []

    def factory(config: EngineConfig) -> AsyncEngine:
        built.append(config)
        return AsyncEngine(config)

    registry = ModelRegistry(engine_factory=factory)
    registry.add("bad", _config(files["corrupt"]))
    errors: list[BaseException] = []

    async def use() -> None:
        try:
            async with registry.use("bad"):
                pass
        except LoadError as exc:
            errors.append(exc)

    async with registry:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(use)
        assert len(errors) == 3 and len(built) == 1  # one load, its failure in every waiter
        assert registry.loaded == ()
        with pytest.raises(LoadError):
            async with registry.use("bad"):
                pass
        assert len(built) == 2  # the next use tried again


@pytest.mark.anyio
async def test_an_adapter_served_as_a_model_beside_its_base(files: dict[str, Path], expected: dict[str, Any]) -> None:
    times: dict[str, tuple[float, float]] = {}

    async def ask(registry: ModelRegistry, name: str) -> None:
        async with registry.use(name) as engine:
            pieces: list[str] = []
            first = 0.0
            async for piece in engine.stream(LORA_PROMPT, LORA_TOKENS, temperature=0):
                first = first or time.perf_counter()
                pieces.append(piece)
            times[name] = (first, time.perf_counter())
            assert "".join(pieces) == expected["base" if name == "base" else "adapter"], name

    async with ModelRegistry() as registry:
        registry.add("base", _config(files["one"]))
        registry.add_lora("tuned", base="base", path=files["adapter"])
        assert registry.parent("tuned") == "base" and registry.parent("base") is None
        assert registry.config("tuned").lora == ((str(files["adapter"].resolve()), 1.0),)
        async with registry.use("base"), registry.use("tuned") as tuned:  # both loaded before the race
            assert _holders(files["one"]) == 2  # one load of the weights for both engines
            assert tuned.lora_adapters() == {str(files["adapter"].resolve()): 1.0}
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, registry, "base")
            tg.start_soon(ask, registry, "tuned")
        (base_first, base_end), (tuned_first, tuned_end) = times["base"], times["tuned"]
        assert base_first < tuned_end and tuned_first < base_end  # decoding in the same seconds
    assert _holders(files["one"]) == 0


def test_engines_on_shared_weights_keep_their_own_adapters(files: dict[str, Path], expected: dict[str, Any]) -> None:
    with Engine(_config(files["one"])) as plain:
        assert plain.generate(LORA_PROMPT, LORA_TOKENS, temperature=0) == expected["base"]
        with Engine(_config(files["one"], lora=((files["adapter"], 1.0),))) as tuned:
            assert tuned.generate(LORA_PROMPT, LORA_TOKENS, temperature=0) == expected["adapter"]
            assert _holders(files["one"]) == 2
            plain.apply_lora(files["adapter"])  # an adapter of its own over the same weights
            plain.remove_lora(files["adapter"])  # ... freed: the other engine's copy stays
            assert tuned.generate(LORA_PROMPT, LORA_TOKENS, temperature=0) == expected["adapter"]
        assert _holders(files["one"]) == 1  # the weights stay while one engine holds them
        assert plain.generate(LORA_PROMPT, LORA_TOKENS, temperature=0) == expected["base"]
        with pytest.raises(GenerateError, match="closed"):
            tuned.generate(LORA_PROMPT, 2)
    assert _holders(files["one"]) == 0


def test_a_snapshot_of_an_engine_with_config_adapters_restores_them(
    files: dict[str, Path], expected: dict[str, Any]
) -> None:
    with Engine(_config(files["one"], lora=((files["adapter"], 1.0),))) as tuned:
        tuned.generate(LORA_PROMPT, 2, temperature=0)
        data = tuned.snapshot_bytes()
    with Engine.restore(data) as restored:  # the snapshot's adapters, applied once
        assert restored.lora_adapters() == {str(files["adapter"].resolve()): 1.0}
        assert restored.generate(LORA_PROMPT, LORA_TOKENS, temperature=0) == expected["adapter"]


def test_engine_config_lora_is_checked_when_built(files: dict[str, Path]) -> None:
    adapter = files["adapter"]
    assert EngineConfig(lora=[(adapter, 1)]).lora == ((str(adapter), 1.0),)
    with pytest.raises(TypeError, match="pairs"):
        EngineConfig(lora=str(adapter))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"lora\[0\] must be a \(path, scale\) pair"):
        EngineConfig(lora=(adapter,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no LoRA adapter file"):
        EngineConfig(lora=((adapter.with_name("absent.gguf"), 1.0),))
    with pytest.raises(ValueError, match="finite"):
        EngineConfig(lora=((adapter, float("nan")),))
    with pytest.raises(TypeError, match="scale"):
        EngineConfig(lora=((adapter, "1"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        EngineConfig(lora=((adapter, 1.0), (str(adapter), 0.5)))


# -- the registry's logic, with a fake engine ------------------------------------------------


class FakeEngine:
    """Loads when its gate opens (or fails with ``error``); records its life."""

    def __init__(self, config: EngineConfig, log: list[str], gate: anyio.Event | None, error: bool) -> None:
        self.name = Path(str(config.model_path)).stem
        self.log, self.gate, self.error = log, gate, error
        self.closed = False

    async def load_model(self) -> None:
        self.log.append(f"load {self.name}")
        if self.gate is not None:
            await self.gate.wait()
        if self.error:
            raise LoadError(f"cannot load {self.name}")

    async def aclose(self) -> None:
        self.log.append(f"close {self.name}")
        self.closed = True


def _fake_registry(names: str, max_loaded: int | None, **kwargs: Any) -> tuple[ModelRegistry, list[str]]:
    log: list[str] = []

    def factory(config: EngineConfig) -> AsyncEngine:
        return cast(AsyncEngine, FakeEngine(config, log, kwargs.get("gate"), kwargs.get("error", False)))

    registry = ModelRegistry(max_loaded, engine_factory=factory)
    for name in names:
        registry.add(name, EngineConfig(f"/models/{name}.gguf"))
    return registry, log


@pytest.mark.anyio
async def test_concurrent_uses_of_a_loading_model_share_one_load() -> None:
    gate = anyio.Event()
    registry, log = _fake_registry("a", None, gate=gate)
    got: list[object] = []

    async def use() -> None:
        async with registry.use("a") as engine:
            got.append(engine)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(use)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert log == ["load a"] and len(got) == 3 and len(set(map(id, got))) == 1
    await registry.aclose()
    assert log == ["load a", "close a"]
    with pytest.raises(GenerateError, match="closed"):
        async with registry.use("a"):
            pass


@pytest.mark.anyio
async def test_waiters_for_room_are_served_first_come_first_served() -> None:
    registry, log = _fake_registry("abc", 1)
    order: list[str] = []
    release = anyio.Event()

    async def use(name: str) -> None:
        async with registry.use(name):
            order.append(name)
            if name == "a":
                await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(use, "a")
        await anyio.wait_all_tasks_blocked()
        for name in ("b", "c", "a"):  # "a" is loaded: it needs no room and does not queue
            tg.start_soon(use, name)
            await anyio.wait_all_tasks_blocked()
        assert order == ["a", "a"] and registry.loaded == ("a",)
        release.set()
    assert order == ["a", "a", "b", "c"]
    assert log == ["load a", "close a", "load b", "close b", "load c"]
    assert registry.loaded == ("c",)


@pytest.mark.anyio
async def test_a_failed_fake_load_fails_every_waiter_and_frees_its_room() -> None:
    gate = anyio.Event()
    registry, log = _fake_registry("ab", 1, gate=gate, error=True)
    failures: list[str] = []

    async def use(name: str) -> None:
        try:
            async with registry.use(name):
                pass
        except LoadError as exc:
            failures.append(str(exc))

    async with anyio.create_task_group() as tg:
        for name in ("a", "a", "b"):  # one by one: trio starts a batch of tasks in any order
            tg.start_soon(use, name)
            await anyio.wait_all_tasks_blocked()
        gate.set()
    assert len(failures) == 3 and log == ["load a", "close a", "load b", "close b"]
    assert registry.loaded == ()


def test_registry_views_need_no_load() -> None:
    registry, _ = _fake_registry("a", None)
    assert registry.engine("a") is None and "a" in repr(registry)
    assert len(registry) == 1


@pytest.fixture(autouse=True)
def _no_leaked_weights(files: dict[str, Path]) -> Iterator[None]:
    yield
    for name in ("one", "two"):
        assert _holders(files[name]) == 0, name
