"""One model, many callers: vocabulary calls are right whoever makes them, whenever.

The decode worker detokenizes every token it samples; the same model's
``tokenize``/``detokenize`` may be called at the same time from the event loop
(async engine) and from other threads (sync engine). Each call must see only
its own bytes, and a call racing ``aclose()`` must fail cleanly.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from oxillama_py import AsyncEngine, Engine, EngineConfig, GenerateError, OxiLlamaError

pytestmark = pytest.mark.anyio

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "日本の首都は東京です。",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Traduisez en français : « Good morning, my friend »",
    "<start_of_turn>user\nHello<end_of_turn>",
]
PROMPTS = [f"Count: {i}, {i + 1}, {i + 2}," for i in range(8)]


def _expected(engine: Engine) -> dict[str, tuple[list[int], str]]:
    out = {}
    for text in TEXTS:
        ids = engine.tokenize(text)
        out[text] = (ids, engine.detokenize(ids))
    return out


async def test_vocabulary_calls_from_the_loop_while_8_sequences_decode(engine: Engine, aengine: AsyncEngine) -> None:
    expected = _expected(engine)
    wrong: list[str] = []
    streamed: list[list[tuple[str, int]]] = [[] for _ in PROMPTS]
    active_while_hammering: list[int] = []

    async def decode(index: int) -> None:
        def on_token(piece: str, token_id: int, is_final: bool) -> None:
            streamed[index].append((piece, token_id))

        await aengine.generate_streaming(PROMPTS[index], 1500, on_token, temperature=0)

    async def hammer() -> None:
        for _ in range(60):
            for text, (ids, detok) in expected.items():
                if await aengine.tokenize(text) != ids:
                    wrong.append(f"tokenize({text!r})")
                if await aengine.detokenize(ids) != detok:
                    wrong.append(f"detokenize({text!r})")
            active_while_hammering.append(aengine.stats.active)

    async with anyio.create_task_group() as decoding:
        for index in range(len(PROMPTS)):
            decoding.start_soon(decode, index)
        while aengine.stats.active < len(PROMPTS) or min(len(s) for s in streamed) < 2:
            await anyio.sleep(0.01)
        async with anyio.create_task_group() as hammering:
            for _ in range(3):
                hammering.start_soon(hammer)
        decoding.cancel_scope.cancel()
    assert wrong == []
    assert len(active_while_hammering) == 180
    assert set(active_while_hammering) == {len(PROMPTS)}, "the 8 sequences were not all decoding meanwhile"
    # What the worker detokenized meanwhile is right too: its pieces spell its token ids.
    for tokens in streamed:
        pieces = "".join(piece for piece, _ in tokens)
        whole = await aengine.detokenize([token_id for _, token_id in tokens])
        assert pieces == whole[: len(pieces)]


def test_vocabulary_calls_from_threads_on_the_sync_engine(engine: Engine) -> None:
    expected = _expected(engine)
    wrong: list[str] = []
    stop = threading.Event()
    counts = [0] * 4

    def hammer(index: int) -> None:
        while not stop.is_set():
            for text, (ids, detok) in expected.items():
                if engine.tokenize(text) != ids or engine.detokenize(ids) != detok:
                    wrong.append(text)
                counts[index] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        texts = engine.generate_batch(PROMPTS, 32, temperature=0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert all(texts)
    assert min(counts) > 5
    assert wrong == []


async def test_tokenize_racing_aclose_fails_cleanly(model_path: Path) -> None:
    engine = AsyncEngine(EngineConfig(model_path, n_ctx=512, max_concurrency=1))
    await engine.load_model()
    text = " ".join(TEXTS) * 20
    outcomes: list[object] = []

    async def tokenize_forever() -> None:
        while True:
            try:
                outcomes.append(len(await engine.tokenize(text)))
            except OxiLlamaError as exc:
                outcomes.append(exc)
                return

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(tokenize_forever)
        while not outcomes:
            await anyio.sleep(0.01)
        await engine.aclose()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 4
    assert all(isinstance(e, GenerateError) and "closed" in str(e) for e in errors)
    lengths = {o for o in outcomes if isinstance(o, int)}
    assert len(lengths) == 1  # every call that ran saw the same, whole result
    with pytest.raises(GenerateError, match="closed"):
        await engine.detokenize([1, 2, 3])


def test_a_model_is_freed_only_once_no_call_is_in_flight(model_path: Path) -> None:
    """The binding layer's guard itself: calls racing ``close()`` finish whole or fail cleanly."""
    from oxillama_py.llama import Model

    model = Model(model_path)
    text = " ".join(TEXTS) * 50
    expected = model.tokenize(text)
    started = threading.Barrier(5)
    outcomes: list[object] = []

    def call() -> None:
        started.wait()
        while True:
            try:
                ids = model.tokenize(text)
                outcomes.append(ids == expected and model.detokenize(ids[:50]) != "")
            except GenerateError as exc:
                outcomes.append(exc)
                return

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    while not outcomes:
        pass
    model.close()  # waits for the calls in flight, then frees
    for thread in threads:
        thread.join()
    assert model.ptr is None
    assert all(o is True or (isinstance(o, GenerateError) and "closed" in str(o)) for o in outcomes)
    assert sum(isinstance(o, GenerateError) for o in outcomes) == 4
    with pytest.raises(GenerateError, match="closed"):
        model.piece(1)
    model.close()  # idempotent
