"""Generation through the public API against the real model, on every backend."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from oxillama_py import AsyncEngine, CompletionResult, Engine, EngineConfig

pytestmark = pytest.mark.anyio

PARITY_PROMPTS = [
    ("The capital of France is", 24),
    ("def fibonacci(n):", 32),
    ("Traduisez en français : « Good morning, my friend » →", 24),
    ("日本の首都は", 24),  # multi-byte characters in the output
]


@pytest.mark.parametrize(("prompt", "n"), PARITY_PROMPTS)
def test_sync_greedy_equals_llama_cpp_python(engine: Engine, reference, prompt: str, n: int) -> None:
    expected = reference.complete(prompt, n)
    assert engine.generate(prompt, n, temperature=0) == expected


@pytest.mark.parametrize(("prompt", "n"), PARITY_PROMPTS)
async def test_async_greedy_equals_llama_cpp_python(aengine: AsyncEngine, reference, prompt: str, n: int) -> None:
    expected = reference.complete(prompt, n)
    assert await aengine.generate(prompt, n, temperature=0) == expected


def test_multibyte_output_is_whole_characters(engine: Engine, reference) -> None:
    text = engine.generate("日本の首都は", 24, temperature=0)
    assert any(ord(ch) > 0x3000 for ch in text), text
    assert "\ufffd" not in text


async def test_stream_joined_equals_generate(aengine: AsyncEngine) -> None:
    prompt = "日本の首都は"
    expected = await aengine.generate(prompt, 40, temperature=0)
    pieces = [piece async for piece in aengine.stream(prompt, 40, temperature=0)]
    assert "".join(pieces) == expected
    assert all(pieces)
    assert len(pieces) > 5


async def test_streaming_callback_sees_every_piece_in_order(aengine: AsyncEngine) -> None:
    prompt = "Count: 1, 2, 3,"
    pieces: list[str] = []
    text = await aengine.generate_streaming(prompt, 24, pieces.append, temperature=0)
    assert "".join(pieces) == text == await aengine.generate(prompt, 24, temperature=0)
    assert len(pieces) >= 12


async def test_async_streaming_callback_is_awaited(aengine: AsyncEngine) -> None:
    seen: list[str] = []

    async def callback(piece: str) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(piece)

    text = await aengine.generate_streaming("Count: 1, 2, 3,", 16, callback, temperature=0)
    assert "".join(seen) == text


async def test_token_callback_gets_ids_and_one_final(aengine: AsyncEngine) -> None:
    calls: list[tuple[str, int, bool]] = []
    result = await aengine.complete("Count: 1, 2, 3,", 12, temperature=0)
    text = await aengine.generate_streaming(
        "Count: 1, 2, 3,",
        12,
        lambda piece, token_id, is_final: calls.append((piece, token_id, is_final)),
        temperature=0,
    )
    assert text == result.text
    assert [c[1] for c in calls] == list(result.token_ids)
    assert [c[2] for c in calls] == [False] * (len(calls) - 1) + [True]
    assert "".join(c[0] for c in calls) == text


async def test_complete_result(aengine: AsyncEngine, reference) -> None:
    result = await aengine.complete("The capital of France is", 16, temperature=0)
    assert isinstance(result, CompletionResult)
    assert result.finish_reason == "length"
    assert result.completion_tokens == len(result.token_ids) == 16
    assert result.prompt_tokens == len(await aengine.tokenize("The capital of France is"))
    assert await aengine.detokenize(result.token_ids) == result.text
    t = result.timings
    assert 0 <= t.queued_secs <= t.total_secs and t.generation_secs > 0 and t.prompt_secs > 0
    assert result.tokens_per_sec > 0
    assert result.speculative is None


async def test_stop_strings_end_and_are_excluded(aengine: AsyncEngine) -> None:
    result = await aengine.complete("Count: 1, 2, 3,", 40, temperature=0, stop=", 7")
    assert result.finish_reason == "stop"
    assert result.text == " 4, 5, 6"
    several = await aengine.complete("Count: 1, 2, 3,", 40, temperature=0, stop=["never", " 5,"])
    assert (several.finish_reason, several.text) == ("stop", " 4,")
    pieces = [p async for p in aengine.stream("Count: 1, 2, 3,", 40, temperature=0, stop=", 7")]
    assert "".join(pieces) == " 4, 5, 6"


async def test_tokenize_matches_llama_cpp_python(aengine: AsyncEngine, reference) -> None:
    for text in ["Hello world", "日本の首都は", "<start_of_turn>user\nhi"]:
        expected = reference.llm.tokenize(text.encode(), add_bos=True, special=True)
        assert await aengine.tokenize(text) == expected
    assert await aengine.tokenize("Hello", add_special=False) == reference.llm.tokenize(b"Hello", add_bos=False)


async def test_seeded_sampling_is_reproducible(aengine: AsyncEngine) -> None:
    a = await aengine.generate("Once upon a time", 24, temperature=0.9, seed=7)
    b = await aengine.generate("Once upon a time", 24, temperature=0.9, seed=7)
    assert a == b
    others = {await aengine.generate("Once upon a time", 24, temperature=0.9, seed=s) for s in (8, 9, 10)}
    assert len(others | {a}) > 1


async def test_lazy_load_and_async_with(config: EngineConfig) -> None:
    engine = AsyncEngine(config)
    assert not engine.is_loaded()
    try:
        assert await engine.generate("1, 2, 3,", 4, temperature=0)
        assert engine.is_loaded()
    finally:
        await engine.aclose()
    async with AsyncEngine(config) as scoped:
        assert scoped.is_loaded()
        assert await scoped.generate("1, 2, 3,", 4, temperature=0)
    assert scoped.closed


def test_sync_engine_surface(engine: Engine) -> None:
    assert engine.async_engine().config is engine.config
    pieces = list(engine.stream("Count: 1, 2, 3,", 12, temperature=0))
    assert "".join(pieces) == engine.generate("Count: 1, 2, 3,", 12, temperature=0)
    seen: list[str] = []
    assert engine.generate_streaming("Count: 1, 2, 3,", 12, seen.append, temperature=0) == "".join(pieces)
    tokens = engine.tokenize("Hello")
    assert engine.detokenize(tokens[1:]) == "Hello"
    assert engine.complete("Count: 1, 2, 3,", 4, temperature=0).completion_tokens == 4


@pytest.mark.parametrize("backend", ["trio", "uvloop"])
def test_sync_engine_on_other_backends(config: EngineConfig, backend: str) -> None:
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    with Engine(config, backend="asyncio" if backend == "uvloop" else "trio", backend_options=options) as engine:
        assert engine.generate("Count: 1, 2, 3,", 8, temperature=0).startswith(" 4, 5")
