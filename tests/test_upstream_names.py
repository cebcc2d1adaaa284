"""Upstream oxillama-py's names and call shapes, on the real model (issue 14, first part).

Upstream's own test files are the reference; these tests pin the behaviour
they rely on through this package's public API.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from oxillama_py import (
    AsyncEngine,
    Engine,
    EngineConfig,
    GenerationCancelled,
    LoadError,
    SamplerConfig,
    Tokenizer,
    TokenizerError,
)
from oxillama_py.callback import StreamingCallback, TokenCallback
from oxillama_py.progress import ProgressEvent, make_progress_adapter
from oxillama_py.tqdm_helper import CollectTokens, TqdmProgress

PROMPT = "The capital of France is"


# -- callbacks and progress ------------------------------------------------------------


def test_streaming_callback_is_a_runtime_checkable_protocol() -> None:
    def per_token(token: str, token_id: int, is_final: bool) -> None:
        pass

    assert isinstance(per_token, StreamingCallback)
    assert isinstance(lambda token, token_id, is_final: None, StreamingCallback)
    assert not isinstance(42, StreamingCallback) and not isinstance(None, StreamingCallback)
    assert TokenCallback is not None


class FakeBar:
    def __init__(self) -> None:
        self.n = 0
        self.total: int | None = None
        self.postfix = ""
        self.closed = False
        self.refreshes = 0
        self.resets = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def refresh(self) -> None:
        self.refreshes += 1

    def reset(self, total: int | None = None) -> None:
        self.n = 0
        self.resets += 1
        if total is not None:
            self.total = total

    def close(self) -> None:
        self.closed = True


class FakeIntProgress:
    def __init__(self) -> None:
        self.min, self.max, self.value, self.bar_style = 0, 100, 0, ""


def event(tokens: int, final: bool = False) -> ProgressEvent:
    return ProgressEvent(
        tokens_generated=tokens,
        tokens_total=8,
        elapsed_secs=0.1 * tokens,
        tokens_per_sec=10.0,
        eta_secs=None,
        is_final=final,
        text_so_far="",
    )


@pytest.mark.parametrize(
    ("error", "style"),
    [(None, "success"), (RuntimeError("boom"), "danger"), (GenerationCancelled("stop"), "warning")],
)
def test_finaliser_takes_upstreams_single_error_argument(error: BaseException | None, style: str) -> None:
    widget = FakeIntProgress()
    callback, finaliser = make_progress_adapter(widget, 8)
    assert callback is not None and finaliser is not None
    callback(event(3))
    finaliser(error)  # upstream's finaliser(error)
    assert widget.bar_style == style
    assert widget.value == (8 if error is None else 3)


def test_finaliser_takes_status_and_error_too_and_rejects_other_shapes() -> None:
    bar = FakeBar()
    callback, finaliser = make_progress_adapter(bar, 8)
    assert callback is not None and finaliser is not None
    callback(event(2))
    finaliser("cancelled", None)
    assert bar.closed and bar.postfix == "cancelled"
    _, other = make_progress_adapter(FakeBar(), 8)
    assert other is not None
    with pytest.raises(TypeError, match=r"\(error\) or \(status, error\)"):
        other()
    with pytest.raises(ValueError, match="status must be"):
        other("done", None)


def test_v011_shims_called_by_hand_with_pieces() -> None:
    bar = FakeBar()
    shim = TqdmProgress(bar, flush_on_newline=True)
    shim("Hello")
    shim(" world\n")
    assert shim.text == "Hello world\n" and bar.n == 2 and bar.refreshes == 1
    shim.reset()
    assert shim.text == "" and bar.n == 0 and bar.resets == 1
    quiet = TqdmProgress(FakeBar(), flush_on_newline=False)
    quiet("a\n")
    assert quiet.bar.refreshes == 0
    collect = CollectTokens()
    collect("a")
    collect("b")
    assert collect.text == "ab"


def test_v011_shims_as_streaming_callbacks(engine: Engine) -> None:
    bar, collect = FakeBar(), CollectTokens()
    shim = TqdmProgress(bar)
    text = engine.generate_streaming(PROMPT, 8, shim, temperature=0)
    assert shim.text == text and bar.n == 8
    assert engine.generate_streaming(PROMPT, 8, collect, temperature=0) == collect.text == text
    assert collect.finished and len(collect.token_ids) == 8


def test_strict_callback(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    expected = engine.generate(PROMPT, 8, temperature=0)
    calls: list[str] = []

    def flaky(piece: str) -> None:
        calls.append(piece)
        if len(calls) == 2:
            raise ValueError("callback broke")

    with caplog.at_level(logging.WARNING, logger="oxillama_py.callback"):
        assert engine.generate_streaming(PROMPT, 8, flaky, strict_callback=False, temperature=0) == expected
    assert "".join(calls) == expected  # skipped once, called for every piece
    assert any("strict_callback=False" in r.getMessage() for r in caplog.records)
    calls.clear()
    with pytest.raises(ValueError, match="callback broke"):
        engine.generate_streaming(PROMPT, 8, flaky, temperature=0)  # strict by default
    with pytest.raises(TypeError, match="strict_callback must be a bool"):
        engine.generate_streaming(PROMPT, 8, flaky, strict_callback="no")  # type: ignore[arg-type]


# -- names ---------------------------------------------------------------------------------


def test_config_aliases(model_path: Path) -> None:
    config = EngineConfig(model_path, context_size=4096, num_threads=2)
    assert (config.n_ctx, config.n_threads) == (4096, 2)
    assert (config.context_size, config.num_threads) == (4096, 2)
    assert config == EngineConfig(model_path, n_ctx=4096, n_threads=2)
    with pytest.raises(TypeError, match="both n_ctx and its alias context_size"):
        EngineConfig(model_path, n_ctx=2048, context_size=4096)
    with pytest.raises(ValueError, match="n_ctx must be >= 16"):
        EngineConfig(model_path, context_size=0)
    sampler = SamplerConfig(repetition_penalty=1.1, repetition_penalty_window=32)
    assert (sampler.repeat_penalty, sampler.repeat_last_n) == (1.1, 32)
    assert (sampler.repetition_penalty, sampler.repetition_penalty_window) == (1.1, 32)
    with pytest.raises(ValueError, match="repeat_penalty"):
        SamplerConfig(repetition_penalty=0)


def test_is_loaded_is_a_method_and_token_queries(model_path: Path) -> None:
    with Engine(EngineConfig(model_path, n_ctx=1024, max_concurrency=2)) as engine:
        assert engine.is_loaded() is False
        assert engine.hidden_size() is None and engine.vocab_size() is None
        hello = engine.tokenize("Hello")
        assert engine.is_loaded() is True  # tokenizing loaded it
        assert engine.hidden_size() == 640 and engine.vocab_size() == 262144
        assert engine.decode_token(hello[0]) == "<bos>"  # a control token shows its own text
        assert engine.decode_token(hello[1]) == "Hello"
        tokenizer_eos = engine.tokenize("<eos>", add_special=False)
        assert engine.is_eos(tokenizer_eos[0]) is True
        assert engine.is_eos(hello[1]) is False
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            engine.decode_token(262144)
        with pytest.raises(TokenizerError):
            engine.is_eos(-1)


@pytest.mark.anyio
async def test_async_token_queries(engine: Engine) -> None:
    aengine = engine.async_engine()
    hello = await aengine.tokenize("Hello")
    assert aengine.is_loaded() and aengine.hidden_size() == 640 and aengine.vocab_size() == 262144
    assert await aengine.decode_token(hello[1]) == "Hello"
    assert await aengine.is_eos(hello[1]) is False


@pytest.mark.anyio
async def test_async_engine_of_an_engine_shares_its_worker(model_path: Path) -> None:
    with Engine(EngineConfig(model_path, n_ctx=1024, max_concurrency=2, seed=1)) as engine:
        twin = AsyncEngine(engine)
        assert twin.config is engine.config and not twin.is_loaded()
        text = await twin.generate(PROMPT, 6, temperature=0)
        assert engine.is_loaded()  # the twin loaded the one worker
        steps = engine.stats.decode_steps
        assert text == engine.generate(PROMPT, 6, temperature=0)
        assert twin.stats.decode_steps > steps  # the Engine's decode counted by the twin: one worker
    assert twin.closed  # closing the Engine closed what they share
    with pytest.raises(TypeError, match="an EngineConfig, an Engine or None"):
        AsyncEngine("model.gguf")  # type: ignore[arg-type]


def test_reset_clears_the_prefix_cache(model_path: Path) -> None:
    config = EngineConfig(model_path, n_ctx=2048, max_concurrency=2, prefix_cache_tokens=1024)
    long_prompt = "Rule: answer in plain words. " * 30
    with Engine(config) as engine:
        expected = engine.generate(long_prompt, 6, temperature=0)
        engine.cache_prefix("A pinned system prompt. " * 20)
        before = engine.stats.prefix_cache
        assert before.entries >= 2 and before.pinned == 1
        engine.reset()
        after = engine.stats.prefix_cache
        assert after.entries == 0 and after.tokens == 0 and after.pinned == 0
        result = engine.complete(long_prompt, 6, temperature=0)
        assert result.text == expected and result.cached_tokens == 0  # nothing left to reuse


# -- the tokenizer ---------------------------------------------------------------------------


def test_tokenizer_matches_the_engine(engine: Engine, model_path: Path) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    with Tokenizer.from_file(model_path) as tokenizer:
        assert "vocab_size=262144" in repr(tokenizer)
        assert tokenizer.vocab_size == engine.vocab_size() == 262144
        for text in ("Hello world", "Ünïcödé and <start_of_turn> markers", ""):
            assert tokenizer.encode(text) == engine.tokenize(text)
        ids = tokenizer.encode("Hello world")
        assert tokenizer.decode(ids) == "Hello world" == engine.detokenize(ids)
        assert tokenizer.encode_batch(["a", "b c"]) == [engine.tokenize("a"), engine.tokenize("b c")]
        assert tokenizer.id_to_token(ids[0]) == "<bos>" and tokenizer.id_to_token(ids[1]) == "Hello"
        assert tokenizer.id_to_token(-1) is None and tokenizer.id_to_token(262144) is None
        assert tokenizer.apply_chat_template(messages) == engine.apply_chat_template(messages)
        closed = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
        assert not closed.endswith("<start_of_turn>model\n")
        assert tokenizer.apply_chat_template(messages, "chatml").startswith("<|im_start|>system")
        with pytest.raises(TypeError):
            tokenizer.encode(b"bytes")  # type: ignore[arg-type]


def test_tokenizer_load_errors(tmp_path: Path) -> None:
    with pytest.raises(LoadError):
        Tokenizer.from_file(tmp_path / "missing.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    with pytest.raises(LoadError):
        Tokenizer.from_file(broken)
    with pytest.raises(LoadError, match="from_file"):
        Tokenizer.from_json("{}")


def test_tokenizer_from_threads(model_path: Path) -> None:
    texts = [f"sentence number {i} with words" for i in range(64)]
    with Tokenizer.from_file(model_path) as tokenizer:
        expected = [tokenizer.encode(t) for t in texts]
        results: dict[int, Any] = {}

        def work(index: int) -> None:
            results[index] = tokenizer.encode(texts[index])

        async def main() -> None:
            async with anyio.create_task_group() as group:
                for i in range(len(texts)):
                    group.start_soon(anyio.to_thread.run_sync, work, i)

        anyio.run(main)
        assert [results[i] for i in range(len(texts))] == expected
