"""Speculation inside continuous batching, on the real model: exactness, distribution, cells, opt-in and out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from free_rows import price_rows_as_free
from test_speculative import COPYING, RGB, _same_distribution

from oxillama_py import AsyncEngine, Engine, EngineConfig, PromptLookup
from oxillama_py.testing import slot_cells

FREE = ["Once upon a time", "The history of the city of Rome"]
MODEL = "gemma-3-270m-q4_k_m"  # the server's name for the default model


@pytest.fixture(scope="module")
def plain_engine(model_path: Path) -> Iterator[Engine]:
    """A plain engine of this module's own: requests that opt in set speculation up on it for good."""
    with Engine(EngineConfig(model_path, n_ctx=4096, max_concurrency=2, seed=5)) as engine:
        engine.load_model()
        yield engine


@pytest.fixture(scope="module")
def spec(model_path: Path) -> Iterator[Engine]:
    config = EngineConfig(model_path, n_ctx=8192, max_concurrency=4, speculative=PromptLookup(), seed=5)
    with Engine(config) as engine:
        engine.load_model()
        yield engine


def test_greedy_speculating_sequences_in_a_batch_equal_plain_decoding(
    spec: Engine, request: pytest.FixtureRequest
) -> None:
    # Rows priced as free, so that both copying sequences draft on any CPU (``free_rows``); the
    # server test below runs on this machine's measured costs, where the text must not change either.
    price_rows_as_free(spec, request)
    prompts = [COPYING[0], FREE[0], COPYING[2], FREE[1]]
    plain = spec.complete_batch(prompts, 48, temperature=0, speculative=False)
    speculating = spec.complete_batch(prompts, 48, temperature=0)
    for i in (0, 2):  # confident (copying) prompts: the same tokens
        assert speculating[i].token_ids == plain[i].token_ids, prompts[i][:30]
        stats = speculating[i].speculative
        assert stats is not None and stats.drafted > 0 and stats.accepted > 0
        assert stats.emitted == 48 and stats.target_calls < 48  # tokens came several per step
    assert all(result.speculative is None for result in plain)
    for result in speculating:
        assert result.completion_tokens == 48 and result.speculative is not None


def test_requests_opt_in_and_out(spec: Engine, plain_engine: Engine) -> None:
    engine = plain_engine  # its own: the first opted-in request sets speculation up for good
    plain = engine.complete(COPYING[1], 32, temperature=0)
    assert plain.speculative is None  # an engine does not speculate by default
    opted_in = engine.complete(COPYING[1], 32, temperature=0, speculative=True)
    assert opted_in.token_ids == plain.token_ids
    assert opted_in.speculative is not None  # drafts, if this CPU's measured costs say they pay
    price_rows_as_free(engine)  # the first request set the engine's speculation up
    drafted = engine.complete(COPYING[1], 32, temperature=0, speculative=True)
    assert drafted.token_ids == plain.token_ids
    assert drafted.speculative is not None and drafted.speculative.accepted > 0
    assert spec.complete(COPYING[1], 8, temperature=0, speculative=False).speculative is None
    with pytest.raises(ValueError, match="mirostat"):
        spec.complete("hi", 4, speculative=True, sampler=spec.config.sampler.mirostat_v2())
    with pytest.raises(TypeError, match="speculative must be a bool"):
        spec.complete("hi", 4, speculative="yes")  # type: ignore[typeddict-item]
    constrained = spec.complete("A JSON object:", 8, json=True)  # a grammar speculates too (test_structured.py)
    assert constrained.speculative is not None


def test_speculative_sampling_inside_a_batch_of_4_keeps_the_distribution(
    spec: Engine, engine: Engine, request: pytest.FixtureRequest
) -> None:
    # Rows priced as free: every request drafts its first token (prompt lookup always finds one in RGB),
    # so every sample goes through the acceptance rule, whatever this machine's costs are.
    price_rows_as_free(spec, request)
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    batches = 75  # 300 first tokens a side
    speculative: Counter[int] = Counter()
    drafted = 0
    for b in range(batches):
        for result in spec.complete_batch([RGB] * 4, 2, seed=4 * b, **sampling):
            speculative[result.token_ids[0]] += 1
            assert result.speculative is not None
            drafted += result.speculative.drafted > 0  # at most 1 draft, for the first token
    plain: Counter[int] = Counter()
    for b in range(batches):
        for result in engine.complete_batch([RGB] * 4, 1, seed=100_000 + 4 * b, **sampling):
            plain[result.token_ids[0]] += 1
    assert drafted == batches * 4  # every first token went through the acceptance rule
    top = plain.most_common(1)[0][1]
    assert 0.2 < top / (batches * 4) < 0.9, plain  # neither certain nor hopeless
    assert _same_distribution(speculative, plain) > 0.001, (speculative, plain)


def _check_cells(engine: AsyncEngine) -> list[int]:
    """Each running sequence holds exactly its own cells, the other slots none; the running slots."""
    cells = slot_cells(engine)
    for slot in cells:
        if slot.tokens:
            assert (slot.pos_min, slot.pos_max) == (0, slot.tokens - 1), slot
        else:
            assert (slot.pos_min, slot.pos_max) == (-1, -1), slot
    return [slot.slot for slot in cells if slot.tokens is not None]


@pytest.mark.anyio
async def test_cancelling_a_speculating_sequence_frees_exactly_its_cells(model_path: Path) -> None:
    config = EngineConfig(model_path, n_ctx=8192, max_concurrency=4, speculative=PromptLookup(), prefix_cache_tokens=0)
    async with AsyncEngine(config) as engine:
        await engine.load_model()
        seen: list[list[int]] = []
        texts: dict[int, str] = {}

        async def run(i: int, prompt: str, scope: anyio.CancelScope | None = None) -> None:
            pieces = []
            async for piece in engine.stream(prompt, 160, temperature=0):
                pieces.append(piece)
                if scope is not None and len(pieces) == 20:
                    scope.cancel()  # leave the stream: the generation is cancelled
            texts[i] = "".join(pieces)

        async def watch() -> None:
            while len(texts) < 3:
                seen.append(await anyio.to_thread.run_sync(_check_cells, engine))
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            group.start_soon(run, 0, COPYING[0])
            group.start_soon(run, 1, COPYING[2])
            group.start_soon(run, 2, FREE[0])
            with anyio.CancelScope() as scope:
                await run(3, COPYING[1], scope)
        assert 3 not in texts  # it was cancelled
        assert any(len(slots) == 4 for slots in seen) and any(len(slots) == 3 for slots in seen)
        assert await anyio.to_thread.run_sync(_check_cells, engine) == []


def test_the_server_speculates_with_no_change_to_clients(engine: Engine) -> None:
    openai = pytest.importorskip("openai", reason="the server test drives it with the openai client (test extra)")
    from server_process import running_server

    expected = [engine.generate(prompt, 32, temperature=0) for prompt in (COPYING[0], COPYING[2])]
    args = ("--n-ctx", "4096", "--max-concurrency", "4", "--speculative", "lookup")
    with (
        running_server(*args) as server,
        openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=300) as client,
    ):
        for prompt, text in zip((COPYING[0], COPYING[2]), expected, strict=True):
            reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0)
            assert reply.choices[0].text == text
            streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0, stream=True)
            assert "".join(chunk.choices[0].text for chunk in streamed) == text


def test_snapshot_keeps_the_speculative_config(spec: Engine, model_path: Path) -> None:
    data = spec.snapshot_bytes()
    with Engine.restore(data) as restored:
        assert restored.config.speculative == PromptLookup() and restored.config.max_concurrency == 4
    draft = EngineConfig(model_path, n_ctx=4096, speculative=EngineConfig(Path(model_path), n_ctx=4096))
    from oxillama_py.engine.snapshot_file import config_from_json, config_to_json

    assert config_from_json(config_to_json(draft)) == EngineConfig(
        str(model_path), n_ctx=4096, speculative=EngineConfig(str(model_path), n_ctx=4096)
    )


def test_a_draft_model_drafts_for_each_sequence_of_a_batch(
    model_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slot has its own sequence in the draft context; greedy copying output stays the target's."""
    from oxillama_py.decode.speculation import Speculator

    # The draft is the target's own file (the only model here with its vocabulary): as dear as the
    # target, so the cost model would rightly never draft. Drafts and rows are priced as free here,
    # to exercise the mechanics.
    monkeypatch.setattr(Speculator, "observe_drafters", lambda self, drafters: None)
    draft = EngineConfig(model_path, n_ctx=4096)
    config = EngineConfig(model_path, n_ctx=4096, max_concurrency=2, speculative=draft, speculative_tokens=4)
    prompts = [COPYING[0], COPYING[2]]
    plain = [engine.complete(prompt, 40, temperature=0) for prompt in prompts]
    with Engine(config) as drafting:
        drafting.load_model()
        price_rows_as_free(drafting)
        results = drafting.complete_batch(prompts, 40, temperature=0)
    for result, reference in zip(results, plain, strict=True):
        assert result.token_ids == reference.token_ids
        stats = result.speculative
        assert stats is not None and stats.accepted > 0 and stats.target_calls < 40
