"""``SpeculativeConfig`` defaults: a user who changes nothing gets the drafter's full reach."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from free_rows import price_rows_as_free

from oxillama_py import EngineConfig, PromptLookup, SpeculativeConfig, SpeculativeEngine
from oxillama_py.config import MODEL_DRAFT_TOKENS

PASSAGE = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, "
    "the members agreed to fund the children's reading room and to extend the opening hours on weekends."
)
COPYING = f"Copy the text exactly.\nText: {PASSAGE}\nCopy: {PASSAGE}\nText: {PASSAGE}\nCopy:"


def test_default_draft_length_is_what_the_drafter_offers(model_path: Path) -> None:
    target = EngineConfig(model_path)
    assert SpeculativeConfig(target).num_speculative is None
    assert SpeculativeConfig(target).max_draft == PromptLookup().num_pred_tokens == 16
    assert SpeculativeConfig(target, PromptLookup(num_pred_tokens=5)).max_draft == 5
    assert SpeculativeConfig(target, EngineConfig(model_path)).max_draft == MODEL_DRAFT_TOKENS
    assert SpeculativeConfig(target, num_speculative=3).max_draft == 3
    with pytest.raises(ValueError, match="num_speculative"):
        SpeculativeConfig(target, num_speculative=0)
    with pytest.raises(TypeError, match="num_speculative"):
        SpeculativeConfig(target, num_speculative=2.5)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def default_engine(model_path: Path) -> Iterator[SpeculativeEngine]:
    """The defaults, with rows priced as free (a memory-bound step): what the defaults allow, on any CPU.

    How much of that reach a step uses is the cost model's choice, from this
    CPU's measured costs; ``free_rows`` says why the tests set it aside.
    """
    with SpeculativeEngine(SpeculativeConfig(EngineConfig(model_path, n_ctx=4096), trace=True)) as engine:
        engine.load_model()
        price_rows_as_free(engine)
        yield engine


def test_defaults_draft_past_the_old_cap_of_4_on_a_copying_task(default_engine: SpeculativeEngine) -> None:
    stats = default_engine.complete(COPYING, 64, temperature=0).speculative
    assert stats is not None
    lengths = [len(step.drafted) for step in stats.steps if step.drafted]
    assert max(lengths) == PromptLookup().num_pred_tokens == 16  # the drafter's full reach, no smaller cap
    # Copying is confident: most drafts pass, so each target decode emits several tokens
    # (the old default, a cap of 4, could never give more than 5).
    assert stats.acceptance_rate > 0.8
    assert stats.tokens_per_target_call > 5


def test_prompt_plus_max_tokens_may_fill_the_whole_context(model_path: Path) -> None:
    """Drafts never reach past ``max_tokens`` (a step drafts at most one less than may still come): no reserve."""
    config = SpeculativeConfig(EngineConfig(model_path, n_ctx=256), trace=True)
    with SpeculativeEngine(config) as engine:
        engine.load_model()
        price_rows_as_free(engine)  # drafts as long as they may be, whatever this CPU's costs
        n_prompt = len(engine.tokenize(COPYING))
        max_tokens = 256 - n_prompt
        result = engine.complete(COPYING, max_tokens, temperature=0)
        assert result.prompt_tokens + max_tokens == 256
        assert result.speculative is not None and result.speculative.drafted > 0
        assert result.finish_reason in ("length", "stop")
        last = result.speculative.steps[-1]
        assert last.start + len(last.batch) <= 256
