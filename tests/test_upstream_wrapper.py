"""Upstream's ``AsyncEngine(any engine)``, ``utils.decode_from_logits``, ``progress._build_bridge`` and class fields.

Upstream's own test files (``crates/oxillama-py/python/tests``) are the
reference; these pin the behaviour they rely on, plus what they leave
unsaid (cancellation, streams left early, bad input), on every backend.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from contextlib import aclosing
from typing import Any

import anyio
import numpy as np
import pytest

from oxillama_py import AsyncEngine, Engine, SpeculativeConfig, StreamingCallback, TokenCallback
from oxillama_py.engine import WrappedEngine
from oxillama_py.progress import ProgressEvent, _build_bridge
from oxillama_py.utils import decode_from_logits

pytestmark = pytest.mark.anyio


class Foreign:
    """Upstream's engine protocol, blocking, with a gate a test can hold shut."""

    def __init__(self, pieces: list[str] | None = None) -> None:
        self.pieces = ["he", "llo", " world"] if pieces is None else pieces
        self.calls: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.threads: set[str] = set()

    def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        self.threads.add(threading.current_thread().name)
        self.calls.append({"prompt": prompt, "max_tokens": max_tokens, **options})
        self.entered.set()
        self.gate.wait(30)
        return "".join(self.pieces)

    def generate_streaming(self, prompt: str, max_tokens: int = 128, callback: Any = None, **options: Any) -> str:
        self.calls.append({"prompt": prompt, "max_tokens": max_tokens, **options})
        for piece in self.pieces:
            if piece == "boom":
                raise RuntimeError("the foreign engine failed")
            callback(piece)
        return "".join(self.pieces)


async def test_a_foreign_engine_is_wrapped_and_driven_off_the_loop(anyio_backend: Any) -> None:
    foreign = Foreign()
    engine = AsyncEngine(foreign)
    assert isinstance(engine, WrappedEngine) and isinstance(engine, AsyncEngine)
    async with engine:
        assert await engine.generate("hi", temperature=None, top_k=40, seed=7) == "hello world"
        assert await engine.generate("again", max_tokens=3) == "hello world"
    assert foreign.calls == [
        {"prompt": "hi", "max_tokens": 512, "top_k": 40, "seed": 7},  # upstream's default; None left out
        {"prompt": "again", "max_tokens": 3},
    ]
    assert all(name.startswith("oxillama-wrapped") for name in foreign.threads)


async def test_a_wrapped_stream_yields_the_callback_pieces_in_order(anyio_backend: Any) -> None:
    engine = AsyncEngine(Foreign())
    assert [piece async for piece in engine.stream("x")] == ["he", "llo", " world"]
    async with aclosing(engine.stream("x", max_tokens=2)) as pieces:
        assert [piece async for piece in pieces] == ["he", "llo", " world"]
    assert [piece async for piece in AsyncEngine(Foreign([])).stream("x")] == []


async def test_a_wrapped_stream_raises_what_the_engine_raised(anyio_backend: Any) -> None:
    engine = AsyncEngine(Foreign(["a", "boom"]))
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="the foreign engine failed"):
        async for piece in engine.stream("x"):
            seen.append(piece)
    assert seen == ["a"]


async def test_a_stream_left_early_ends_cleanly(anyio_backend: Any) -> None:
    engine = AsyncEngine(Foreign(["p"] * 200))
    async with aclosing(engine.stream("x")) as pieces:
        async for piece in pieces:
            assert piece == "p"
            break
    # the pool is free again: the foreign call ran to its end, its later pieces dropped
    assert await engine.generate("next") == "p" * 200


async def test_cancelling_a_queued_generate_withdraws_it(anyio_backend: Any) -> None:
    """The pool runs one call at a time: a call still queued behind it is withdrawn by a cancel, never run."""
    foreign = Foreign()
    foreign.gate.clear()
    engine = AsyncEngine(foreign)
    async with anyio.create_task_group() as group:
        group.start_soon(engine.generate, "first")
        await anyio.to_thread.run_sync(foreign.entered.wait, 30)  # observed: the first call holds the pool
        with anyio.CancelScope() as scope:
            scope.cancel()
            await engine.generate("second")
        foreign.gate.set()
    assert [call["prompt"] for call in foreign.calls] == ["first"]
    await engine.aclose()


async def test_a_wrapped_engine_refuses_native_methods_clearly(anyio_backend: Any) -> None:
    engine = AsyncEngine(Foreign())
    with pytest.raises(TypeError, match="wraps a Foreign"):
        await engine.complete("x")
    with pytest.raises(TypeError, match="wraps a Foreign"):
        await engine.tokenize("x")


def test_what_is_not_engine_like_is_still_refused() -> None:
    with pytest.raises(TypeError, match="config must be"):
        AsyncEngine(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AsyncEngine(object())  # type: ignore[arg-type]


def test_our_engine_is_shared_not_wrapped(engine: Engine) -> None:
    shared = AsyncEngine(engine)
    assert type(shared) is AsyncEngine and shared.config is engine.config


# -- decode_from_logits -----------------------------------------------------------------


def test_decode_from_logits_takes_the_argmax_of_what_the_filters_keep() -> None:
    row = np.array([0.1, 0.9, 0.5, 0.3], dtype=np.float32)
    assert decode_from_logits(row) == 1
    assert decode_from_logits(row, temperature=0) == 1
    assert decode_from_logits([1.0, 100.0, 2.0], temperature=0.01) == 1
    assert decode_from_logits(row, top_k=1, seed=5) == 1
    assert decode_from_logits(row, top_p=0.01, seed=5) == 1


def test_decode_from_logits_with_a_seed_samples_the_softmax() -> None:
    row = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
    draws = Counter(decode_from_logits(row, seed=seed) for seed in range(4000))
    assert [decode_from_logits(row, seed=s) for s in range(20)] == [decode_from_logits(row, seed=s) for s in range(20)]
    for token, p in enumerate([0.1, 0.2, 0.3, 0.4]):
        assert abs(draws[token] / 4000 - p) < 0.03  # 4 sigma of a binomial at n=4000
    top2 = Counter(decode_from_logits(row, top_k=2, seed=seed) for seed in range(2000))
    assert set(top2) == {2, 3}


@pytest.mark.parametrize(
    ("logits", "options", "error"),
    [
        (np.zeros((2, 3)), {}, ValueError),
        (np.array([]), {}, ValueError),
        (np.array([1.0, np.nan]), {}, ValueError),
        (np.array([1.0, 2.0]), {"temperature": -1.0}, ValueError),
        (np.array([1.0, 2.0]), {"top_p": 0.0}, ValueError),
        (np.array([1.0, 2.0]), {"top_k": -1}, ValueError),
        (np.array([1.0, 2.0]), {"top_k": 1.5}, TypeError),
        (np.array([1.0, 2.0]), {"seed": "7"}, TypeError),
    ],
)
def test_decode_from_logits_refuses_bad_input(logits: Any, options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_from_logits(logits, **options)


def test_decode_from_logits_on_the_models_logits_is_its_greedy_token(engine: Engine) -> None:
    prompt = "The capital of France is"
    first = engine.complete(prompt, 1, temperature=0).token_ids[0]
    assert decode_from_logits(engine.logits(prompt)) == first


# -- _build_bridge, class fields, top-level names ----------------------------------------------


def test_build_bridge_feeds_the_progress_object_upstreams_ticks() -> None:
    seen: list[ProgressEvent] = []
    tick, finalise = _build_bridge(seen.append, 10)
    tick((1, 0.5, False, "a"))
    tick((5, 1.0, True, "abcde"))
    finalise(None)
    assert [(e.tokens_generated, e.tokens_total, e.is_final, e.text_so_far) for e in seen] == [
        (1, 10, False, "a"),
        (5, 10, True, "abcde"),
    ]
    assert seen[0].eta_secs is None and seen[1].eta_secs == pytest.approx(1.0)
    noop_tick, noop_finalise = _build_bridge(None, 4)
    noop_tick((1, 0.1, False, ""))
    noop_finalise(RuntimeError("ignored"))
    with pytest.raises(TypeError, match="progress must be"):
        _build_bridge(42, 4)


def test_speculative_config_names_its_fields_on_the_class() -> None:
    target = SpeculativeConfig.target  # type: ignore[misc]
    assert isinstance(target, dataclasses.Field) and target.name == "target"
    assert isinstance(SpeculativeConfig.draft, dataclasses.Field)  # type: ignore[misc]
    assert SpeculativeConfig.num_speculative is None and SpeculativeConfig.seed is None
    with pytest.raises(AttributeError):
        SpeculativeConfig.no_such_field  # type: ignore[attr-defined]  # noqa: B018


def test_callback_names_are_at_the_top_level() -> None:
    import oxillama_py
    import oxillama_py.callback

    assert oxillama_py.StreamingCallback is StreamingCallback is oxillama_py.callback.StreamingCallback
    assert oxillama_py.TokenCallback is TokenCallback
    assert {"StreamingCallback", "TokenCallback"} <= set(oxillama_py.__all__)


def test_the_blocking_facade_streams_a_wrapped_engine() -> None:
    """``Engine(AsyncEngine(foreign)).stream()`` iterates the foreign engine's callback pieces."""
    with Engine(AsyncEngine(Foreign())) as engine:
        assert list(engine.stream("x", 3)) == ["he", "llo", " world"]
        assert engine.generate("x") == "hello world"
