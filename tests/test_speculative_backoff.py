"""Speculation never a loss: a sequence whose drafts miss stops drafting, then probes rarely (``decode/backoff.py``).

The policy is driven with numbers (no model); the plan with fake candidates;
then the real model through the public API, on rows priced as free (so the
cost model alone would draft every step): free text drafts a few times,
copying drafts and passes nearly every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from free_rows import price_rows_as_free
from test_speculative import COPYING

from oxillama_py import Engine, EngineConfig, PromptLookup
from oxillama_py.decode.backoff import MAX_WAIT, PROBE_RATE, PROBE_TOKENS, DraftBackoff
from oxillama_py.decode.cost import StepCost
from oxillama_py.decode.drafters import Draft
from oxillama_py.decode.speculation import Speculator

# Prompts whose greedy continuation does not repeat itself (checked: prompt lookup's drafts miss).
FREE_TEXT = "Once upon a time, in a village by the sea,"


def drafting_steps(backoff: DraftBackoff, steps: int, hit: bool = False) -> list[int]:
    """Drive ``steps`` steps: where it is ready, a draft of 8 (all passing if ``hit``, else none); the steps drafted."""
    drafted = []
    for step in range(steps):
        if backoff.ready:
            drafted.append(step)
            backoff.observe(8, 8 if hit else 0)
        else:
            backoff.observe(0, 0)
    return drafted


def test_misses_back_off_exponentially_up_to_a_cap() -> None:
    backoff = DraftBackoff()
    assert backoff.ready and not backoff.probing and backoff.limit(10) == 10 and backoff.rate(0.2) == 0.2
    drafted = drafting_steps(backoff, 300)
    gaps = [b - a for a, b in zip(drafted, drafted[1:], strict=False)]
    assert gaps[:7] == [2, 3, 5, 9, 17, 33, 65]  # waits of 1, 2, 4, ... steps between drafts
    assert set(gaps[7:]) == {MAX_WAIT + 1}  # then a probe every MAX_WAIT + 1 steps, for good
    assert backoff.probing and backoff.limit(10) == PROBE_TOKENS and backoff.rate(0.0) == PROBE_RATE
    assert backoff.skipped == 300 - len(drafted)


def test_a_hit_resets_the_back_off() -> None:
    backoff = DraftBackoff()
    drafting_steps(backoff, 40)
    assert backoff.misses >= 5
    while not backoff.ready:
        backoff.observe(0, 0)
    backoff.observe(2, 2)  # the probe passed
    assert backoff.ready and not backoff.probing and backoff.limit(10) == 10
    assert drafting_steps(backoff, 20, hit=True) == list(range(20))  # copying: a draft every step


def test_what_counts_as_a_miss() -> None:
    for drafted, accepted, miss in [(8, 0, True), (8, 7, True), (8, 8, False), (1, 1, False), (1, 0, True)]:
        backoff = DraftBackoff()
        backoff.observe(drafted, accepted)
        assert backoff.probing is miss, (drafted, accepted)
    backoff = DraftBackoff()
    backoff.observe(0, 0)  # no draft: no evidence, and nothing to wait for
    assert backoff.ready and not backoff.probing and backoff.skipped == 0


class FakeSpec:
    def __init__(self, rate: float) -> None:
        from oxillama_py.decode.cost import Acceptance

        self.acceptance = Acceptance(rate, weight=100.0)
        self.backoff = DraftBackoff()


class FakeSeq:
    """A candidate whose drafter counts its searches."""

    def __init__(self, rate: float, remaining: int = 100) -> None:
        self.spec = FakeSpec(rate)
        self.remaining = remaining
        self.searches = 0

    def draft(self, k: int) -> Draft:
        self.searches += 1
        return Draft([7] * k)


def test_the_plan_skips_sequences_backing_off_and_probes_short() -> None:
    flat = StepCost({1: 0.02, 64: 0.02})  # rows free: the cost model alone would draft everything offered
    speculator = Speculator(8, flat, lookup=PromptLookup())
    copying, free = FakeSeq(0.9), FakeSeq(0.9)
    free.spec.backoff.observe(8, 0)  # a miss: it waits one step
    drafts = speculator.plan_drafts([copying, free], [copying, free], 2, 100)
    assert list(drafts) == [copying] and len(drafts[copying]) == 8
    assert free.searches == 0  # backing off: its drafter was not even asked
    free.spec.backoff.observe(0, 0)
    free.spec.acceptance.update(100, 0)  # its estimate decayed to nothing: the probe goes anyway
    drafts = speculator.plan_drafts([copying, free], [copying, free], 2, 100)
    assert len(drafts[free]) == PROBE_TOKENS and len(drafts[copying]) == 8
    speculator.cost = StepCost({1: 0.020, 8: 0.024, 16: 0.040, 64: 0.120})  # memory-bound up to 8 rows
    hopeless = FakeSeq(0.01)
    assert speculator.plan_drafts([hopeless], [hopeless], 1, 100) == {}
    assert hopeless.searches == 0  # a plan with no drafts asks no drafter


@pytest.fixture(scope="module")
def lookup(model_path: Path) -> Iterator[Engine]:
    config = EngineConfig(model_path, n_ctx=2048, max_concurrency=2, speculative=PromptLookup())
    with Engine(config) as engine:
        engine.load_model()
        yield engine


def test_free_text_stops_drafting_while_copying_keeps_drafting(lookup: Engine, request: pytest.FixtureRequest) -> None:
    price_rows_as_free(lookup, request)  # the cost model alone would draft at every step
    lookup.complete(COPYING[0], 16, temperature=0)  # every sequence starts from a high shared acceptance
    free, copying = lookup.complete_batch([FREE_TEXT, COPYING[1]], 64, temperature=0)
    plain = lookup.complete(COPYING[1], 64, temperature=0, speculative=False)
    assert copying.token_ids == plain.token_ids  # greedy on a confident prompt: the same text
    stats = free.speculative
    assert stats is not None and stats.emitted == free.completion_tokens == 64
    assert stats.drafted <= 0.5 * stats.emitted  # a few short probes, not a draft every step
    assert stats.accepted <= stats.drafted
    stats = copying.speculative
    assert stats is not None and stats.emitted == 64
    assert stats.drafted >= 0.8 * stats.emitted and stats.acceptance_rate > 0.8  # copying drafts and passes
    assert stats.target_calls < 0.5 * stats.emitted
