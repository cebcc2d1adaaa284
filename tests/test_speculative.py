"""SpeculativeEngine against the real model: exactness, statistics, progress, streaming, cancellation."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from free_rows import price_rows_as_free
from gguf_factory import write_tiny_llama
from tqdm import tqdm

from oxillama_py import (
    AsyncSpeculativeEngine,
    CancellationToken,
    Engine,
    EngineConfig,
    GenerationCancelled,
    LoadError,
    PromptLookup,
    SpeculativeConfig,
    SpeculativeEngine,
    VerifyStep,
)
from oxillama_py.llama import Context, Model
from oxillama_py.llama.context import BatchEntry
from oxillama_py.progress import ProgressEvent

pytestmark = pytest.mark.anyio

PASSAGE = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single "
    "step. To be or not to be, that is the question. All that glitters is not gold."
)
FRUIT = (
    "apples, pears, plums, grapes, lemons, limes, cherries, peaches, melons, figs, dates, "
    "kiwis, mangoes, papayas, guavas"
)
# Confident input-copying prompts: the continuation repeats text already in the context.
COPYING = [
    f"Repeat the passage exactly.\nPassage: {PASSAGE}\nRepeat: {PASSAGE}\nPassage: {PASSAGE}\nRepeat:",
    "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n\n\ndef add(a, b):\n",
    f"Copy the list.\nList: {FRUIT}\nCopy: {FRUIT}\nList: {FRUIT}\nCopy:",
]


@pytest.fixture(scope="module")
def lookup_engine(model_path: Path) -> Iterator[SpeculativeEngine]:
    """Prompt lookup, with rows priced as free: these tests check drafting itself, on any CPU (``free_rows``)."""
    config = SpeculativeConfig(EngineConfig(model_path, n_ctx=4096), PromptLookup(), num_speculative=8, trace=True)
    with SpeculativeEngine(config) as engine:
        engine.load_model()
        price_rows_as_free(engine)
        yield engine


@pytest.fixture(scope="module")
def draft_engine(model_path: Path) -> Iterator[SpeculativeEngine]:
    """The same GGUF as target and draft: a valid test of the draft-model path (high acceptance).

    A draft model as large as its target never pays (each drafted token costs
    a decode as dear as the target's), so the cost model would rightly not
    draft at all; here the drafts and the rows are priced as free, so that
    the draft model's mechanics are exercised on any CPU. The pricing is
    tested on its own.
    """
    from oxillama_py.decode.speculation import Speculator

    config = SpeculativeConfig(
        EngineConfig(model_path, n_ctx=4096), EngineConfig(model_path, n_ctx=4096), num_speculative=4, trace=True
    )
    with pytest.MonkeyPatch.context() as patch, SpeculativeEngine(config) as engine:
        patch.setattr(Speculator, "observe_drafters", lambda self, drafters: None)
        engine.load_model()
        price_rows_as_free(engine)
        yield engine


@pytest.fixture
def alookup(lookup_engine: SpeculativeEngine) -> AsyncSpeculativeEngine:
    return lookup_engine.async_engine()


def replay_argmax(model_path: Path, steps: tuple[VerifyStep, ...], n_ctx: int) -> None:
    """Re-run every recorded target decode in a fresh context and check each emitted token is its argmax."""
    model = Model(model_path)
    ctx = Context(model, n_ctx=n_ctx, n_batch=512, n_threads=EngineConfig().n_threads, n_seq_max=1, flash_attn=False)
    try:
        for step in steps:
            n_pending = len(step.batch) - len(step.drafted)
            verifying = bool(step.choices)
            ctx.decode(
                [BatchEntry(t, step.start + i, 0, verifying and i >= n_pending - 1) for i, t in enumerate(step.batch)]
            )
            if not verifying:
                assert step.emitted == ()
                continue
            argmaxes = [int(np.argmax(ctx.logits_array(n_pending - 1 + i))) for i in range(len(step.emitted))]
            assert list(step.emitted) == argmaxes, step
            assert list(step.emitted[: step.accepted]) == list(step.drafted[: step.accepted])
            assert step.accepted == len(step.emitted) - 1
            ctx.remove(0, step.start + n_pending + step.accepted, -1)
    finally:
        ctx.close()
        model.close()


# -- greedy exactness -------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["lookup", "draft"])
def test_every_emitted_token_is_the_targets_argmax(
    request: pytest.FixtureRequest, model_path: Path, which: str
) -> None:
    engine: SpeculativeEngine = request.getfixturevalue(f"{which}_engine")
    for prompt in (COPYING[0], "Once upon a time"):  # free-form too: the rule holds whatever the text
        result = engine.complete(prompt, 48, temperature=0)
        stats = result.speculative
        assert stats is not None and stats.steps
        emitted = [t for step in stats.steps for t in step.emitted]
        assert tuple(emitted[: result.completion_tokens]) == result.token_ids
        replay_argmax(model_path, stats.steps, 4096)


@pytest.mark.parametrize("prompt", COPYING)
def test_greedy_copying_output_equals_the_target_alone(
    engine: Engine, lookup_engine: SpeculativeEngine, draft_engine: SpeculativeEngine, prompt: str
) -> None:
    plain = engine.complete(prompt, 64, temperature=0)
    lookup = lookup_engine.complete(prompt, 64, temperature=0)
    draft = draft_engine.complete(prompt, 64, temperature=0)
    assert lookup.text == plain.text
    assert draft.text == plain.text
    assert lookup.token_ids == plain.token_ids == draft.token_ids
    # Copying drafts well: far fewer target decodes than tokens.
    for result in (lookup, draft):
        stats = result.speculative
        assert stats is not None
        assert stats.emitted == result.completion_tokens == 64
        assert stats.target_calls < 0.5 * stats.emitted
        assert stats.tokens_per_target_call > 2
        assert stats.accepted <= stats.drafted and 0.5 < stats.acceptance_rate <= 1.0


def test_stats_and_adaptive_draft_length(lookup_engine: SpeculativeEngine) -> None:
    result = lookup_engine.complete("Once upon a time in a land far away,", 64, temperature=0)
    stats = result.speculative
    assert stats is not None
    verifications = [s for s in stats.steps if s.choices]
    assert stats.target_calls == len(stats.steps)
    assert stats.drafted == sum(len(s.drafted) for s in verifications)
    assert stats.accepted == sum(s.accepted for s in verifications)
    assert stats.acceptance_rate == (stats.accepted / stats.drafted if stats.drafted else 0.0)
    assert stats.tokens_per_target_call == stats.emitted / stats.target_calls
    assert max(len(s.drafted) for s in verifications) <= 8


def test_the_plan_gives_drafts_where_they_pay() -> None:
    from oxillama_py.decode.cost import Acceptance, StepCost, plan

    cost = StepCost({1: 0.020, 8: 0.024, 16: 0.040, 64: 0.120})  # memory-bound up to 8 rows, then compute
    assert plan(cost, 1, [(0.9, 8)]) == [7]  # alone and copying: nearly all the rows that are almost free
    assert plan(cost, 1, [(0.01, 8)]) == [0]  # drafts that fail cost more than they give
    assert plan(cost, 8, [(0.3, 8)] * 8) == [0] * 8  # a crowd with low acceptance: plain batching
    crowded = plan(cost, 8, [(0.95, 8), (0.1, 8)] + [(0.2, 8)] * 6)
    assert crowded[0] > 0 and sum(crowded[1:]) == 0  # the rows go to the sequence that copies
    assert sum(plan(cost, 1, [(0.9, 8)] * 4, limit=5)) <= 5
    assert plan(cost, 1, [(0.9, 8)], draft_cost=1.0) == [0]  # drafting that costs a second never pays
    acceptance = Acceptance(0.5)
    for _ in range(10):
        acceptance.update(8, 8)
    assert acceptance.rate > 0.9
    for _ in range(10):
        acceptance.update(8, 0)
    assert acceptance.rate < 0.1
    acceptance.update(0, 0)  # nothing drafted: no evidence
    cost.observe(8, 0.048)  # a slower machine: the curve follows
    assert 0.024 < cost(8) < 0.048 and cost(4) <= cost(8) <= cost(16)


def test_draft_length_grows_back_when_drafts_pass(lookup_engine: SpeculativeEngine) -> None:
    stats = lookup_engine.complete(COPYING[2], 64, temperature=0).speculative
    assert stats is not None
    lengths = [len(s.drafted) for s in stats.steps if s.drafted]
    assert max(lengths) == 8


def test_vocabulary_mismatch_is_a_clear_load_error(tmp_path: Path, model_path: Path) -> None:
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    config = SpeculativeConfig(EngineConfig(model_path, n_ctx=1024), EngineConfig(tiny, n_ctx=1024))
    with SpeculativeEngine(config) as engine, pytest.raises(LoadError, match="vocabulary"):
        engine.load_model()


def test_bad_speculative_inputs(lookup_engine: SpeculativeEngine) -> None:
    with pytest.raises(TypeError, match="SpeculativeConfig"):
        SpeculativeEngine(EngineConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mirostat"):
        lookup_engine.generate("hello", 4, sampler=lookup_engine.config.sampler.mirostat_v2())
    with pytest.raises(ValueError, match="max_tokens"):
        lookup_engine.generate("hello", -1)
    with pytest.raises(TypeError, match="^progress must be"):
        lookup_engine.generate("hello", 4, progress=object())
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=0)


# -- sampling -------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(lookup_engine: SpeculativeEngine, draft_engine: SpeculativeEngine) -> None:
    for engine in (lookup_engine, draft_engine):
        a = engine.complete(COPYING[0], 32, temperature=0.8, seed=11)
        b = engine.complete(COPYING[0], 32, temperature=0.8, seed=11)
        assert a.text == b.text and a.token_ids == b.token_ids
        assert a.speculative is not None and a.speculative.drafted > 0


# A prompt whose next token is uncertain yet drafted by prompt lookup: the first
# emitted token then always goes through the acceptance rule.
RGB = "red green blue red green blue red green blue red green"


def _first_tokens(generate, n: int) -> Counter[int]:  # type: ignore[no-untyped-def]
    return Counter(generate(seed).token_ids[0] for seed in range(n))


def _same_distribution(a: Counter[int], b: Counter[int]) -> float:
    from scipy.stats import chi2_contingency

    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    top, rest = keys[:5], keys[5:]
    table = [[a[k] for k in top] + [sum(a[k] for k in rest)], [b[k] for k in top] + [sum(b[k] for k in rest)]]
    table = [row for row in np.array(table).T.tolist() if sum(row) > 0]
    return float(chi2_contingency(np.array(table).T)[1])


def test_speculative_sampling_matches_plain_sampling(model_path: Path, engine: Engine, monkeypatch) -> None:
    n = 300
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    config = SpeculativeConfig(EngineConfig(model_path, n_ctx=1024), PromptLookup(), num_speculative=1, trace=True)
    with SpeculativeEngine(config) as spec:
        spec.load_model()
        price_rows_as_free(spec)  # every first token is drafted, whatever this CPU's costs
        probe = spec.complete(RGB, 2, seed=0, **sampling)
        assert probe.speculative is not None and probe.speculative.steps[0].drafted  # the first token is drafted
        drafted = probe.speculative.steps[0].drafted[0]
        speculative = _first_tokens(lambda s: spec.complete(RGB, 2, seed=1000 + s, **sampling), n)
        plain = _first_tokens(lambda s: engine.complete(RGB, 1, seed=10_000 + s, **sampling), n)
        assert 0.2 < plain[drafted] / n < 0.9, plain  # the draft is neither certain nor hopeless
        assert _same_distribution(speculative, plain) > 0.001, (speculative, plain)

        # A wrong rule (accept the draft with probability p, else draw again from all of p) is caught.
        from oxillama_py.decode.distribution import sample_at
        from oxillama_py.decode.speculation import SequenceSpeculation

        def wrong(p, proposal, u):  # type: ignore[no-untyped-def]
            if proposal is not None and u < p[proposal]:
                return proposal
            return sample_at(p, (u * 7919) % 1.0)

        monkeypatch.setattr(SequenceSpeculation, "choose", staticmethod(wrong))
        biased = _first_tokens(lambda s: spec.complete(RGB, 2, seed=1000 + s, **sampling), n)
        assert _same_distribution(biased, plain) < 0.001, (biased, plain)


# -- the engine surface on every backend ------------------------------------------------------
async def test_stream_equals_generate(alookup: AsyncSpeculativeEngine) -> None:
    text = await alookup.generate(COPYING[1], 40, temperature=0)
    pieces = [p async for p in alookup.stream(COPYING[1], 40, temperature=0)]
    assert "".join(pieces) == text
    seen: list[str] = []
    assert await alookup.generate_streaming(COPYING[1], 40, seen.append, temperature=0) == text
    assert "".join(seen) == text


async def test_progress_counts_accepted_tokens(alookup: AsyncSpeculativeEngine) -> None:
    events: list[ProgressEvent] = []
    bar = tqdm(file=io.StringIO())
    result = await alookup.complete(COPYING[2], 30, temperature=0, progress=events.append)
    await alookup.complete(COPYING[2], 30, temperature=0, progress=bar)
    assert bar.n == 30 == result.completion_tokens
    counts = [e.tokens_generated for e in events]
    assert counts == sorted(counts) and max(counts) == 30
    assert all(e.tokens_total == 30 for e in events)
    assert [e.is_final for e in events].count(True) == 1 and events[-1].is_final
    assert events[0].tokens_generated >= 1


async def test_progress_never_exceeds_max_tokens(alookup: AsyncSpeculativeEngine) -> None:
    for max_tokens in (1, 2, 5, 9):
        events: list[ProgressEvent] = []
        result = await alookup.complete(
            COPYING[0], max_tokens, temperature=0, progress=events.append, progress_throttle_ms=0
        )
        assert result.completion_tokens == max_tokens
        assert max(e.tokens_generated for e in events) == max_tokens
        assert [e.tokens_generated for e in events][-2:] == [max_tokens, max_tokens]


async def test_stop_string(alookup: AsyncSpeculativeEngine) -> None:
    result = await alookup.complete(COPYING[2], 40, temperature=0, stop=" melons")
    assert result.finish_reason == "stop"
    assert result.text == " apples, pears, plums, grapes, lemons, limes, cherries, peaches,"


async def test_cancellation(alookup: AsyncSpeculativeEngine) -> None:
    """Cancelled at the first token, by a token and by a cancel scope: mid-generation on any machine."""
    token = CancellationToken()
    events: list[ProgressEvent] = []

    def record(event: ProgressEvent) -> None:
        events.append(event)
        token.cancel()

    with pytest.raises(GenerationCancelled):
        await alookup.generate(COPYING[0], 400, temperature=0, cancel_token=token, progress=record)
    assert events[-1].is_final and [e.is_final for e in events].count(True) == 1
    assert events[-1].tokens_generated < 400
    with anyio.CancelScope() as scope:
        async with contextlib.aclosing(alookup.stream(COPYING[0], 400, temperature=0)) as pieces:
            async for _ in pieces:
                scope.cancel()
    assert scope.cancelled_caught
    assert await alookup.generate(COPYING[2], 6, temperature=0) == " apples, pears, plums,"


def test_restore_with_upstreams_target_and_draft_paths(
    draft_engine: SpeculativeEngine, lookup_engine: SpeculativeEngine, model_path: Path, tmp_path: Path
) -> None:
    """``SpeculativeEngine.restore(path, target_model, draft_model)``: upstream's signature, moved files."""
    import shutil

    snapshot = tmp_path / "spec.snap"
    draft_engine.snapshot(snapshot)
    moved_draft = tmp_path / "draft.gguf"
    shutil.copyfile(model_path, moved_draft)
    expected = draft_engine.generate(COPYING[1], 24, temperature=0)
    with SpeculativeEngine.restore(str(snapshot), str(model_path), str(moved_draft)) as restored:
        assert isinstance(restored, SpeculativeEngine)
        config = restored.async_engine().speculative_config
        assert isinstance(config.draft, EngineConfig) and config.draft.model_path == str(moved_draft)
        assert config.num_speculative == 4 and config.target.model_path == str(model_path)
        result = restored.complete(COPYING[1], 24, temperature=0)
        assert result.text == expected and result.speculative is not None
    with SpeculativeEngine.restore(lookup_engine.snapshot_bytes()) as again:  # the recorded files, prompt lookup
        assert again.async_engine().speculative_config.draft == PromptLookup()
    with pytest.raises(LoadError, match="prompt lookup"):
        SpeculativeEngine.restore(lookup_engine.snapshot_bytes(), model_path, moved_draft)
    with pytest.raises(LoadError, match="does not speculate"), Engine(EngineConfig(model_path, n_ctx=1024)) as plain:
        SpeculativeEngine.restore(plain.snapshot_bytes(), model_path)
    with pytest.raises(LoadError):
        SpeculativeEngine.restore(str(snapshot), model_path, tmp_path / "missing.gguf")


async def test_async_restore_with_upstreams_paths(
    draft_engine: SpeculativeEngine, model_path: Path, tmp_path: Path
) -> None:
    snapshot = tmp_path / "spec.snap"
    draft_engine.snapshot(snapshot)
    restored = await AsyncSpeculativeEngine.restore(snapshot, model_path, model_path)
    async with restored:
        assert isinstance(restored, AsyncSpeculativeEngine) and restored.is_loaded()
        assert restored.speculative_config.num_speculative == 4
        assert (await restored.generate(COPYING[1], 8, temperature=0)) == draft_engine.generate(
            COPYING[1], 8, temperature=0
        )


def test_restore_takes_target_model_or_model_path_not_both(draft_engine: SpeculativeEngine, model_path: Path) -> None:
    with pytest.raises(TypeError, match="not both"):
        SpeculativeEngine.restore(draft_engine.snapshot_bytes(), model_path, model_path=model_path)
