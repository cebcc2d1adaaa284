"""``logit_bias``, ``presence_penalty`` and ``frequency_penalty`` on the real model, in every decode path.

llama.cpp's samplers do the work (the logit-bias sampler, then the penalties
sampler, as llama-cpp-python orders them); these tests check that each path
around them (the plain-greedy argmax, the grammar's shortlist, a batch,
speculation's verification) chooses as the whole chain over the whole
vocabulary would: greedy output equals llama-cpp-python's with the same fields.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from oxillama_py import AsyncEngine, Engine, SamplerConfig

PROMPT = "Once upon a time there was a little"
N = 24
TEXT = re.compile(r"[a-zA-Z ,.]+")
"""The greedy texts of PROMPT below stay in this class: constraining to it changes nothing but the path."""

PENALTIES = [
    pytest.param({"presence_penalty": 2.0}, id="presence"),
    pytest.param({"frequency_penalty": 0.5}, id="frequency"),
    pytest.param({"presence_penalty": 0.5, "frequency_penalty": 0.5, "repeat_penalty": 1.1}, id="all"),
]


def reference_text(reference: Any, prompt: str, max_tokens: int, **fields: Any) -> str:
    """llama-cpp-python's greedy completion with the same sampler fields (a fresh decode of the prompt)."""
    reference.llm.reset()
    out = reference.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, **fields)
    return str(out["choices"][0]["text"])


def one_token(engine: Engine, text: str) -> int:
    (token,) = engine.tokenize(text, add_special=False)
    return token


@pytest.mark.parametrize("fields", PENALTIES)
def test_penalties_change_greedy_output_as_llama_cpp_python(engine: Engine, reference: Any, fields: Any) -> None:
    plain = engine.generate(PROMPT, N, temperature=0)
    penalised = engine.generate(PROMPT, N, temperature=0, **fields)
    assert penalised != plain
    assert penalised == reference_text(reference, PROMPT, N, **fields)


def test_penalties_from_the_engine_sampler_and_per_call(engine: Engine) -> None:
    sampler = SamplerConfig(temperature=0.0, presence_penalty=2.0)
    assert engine.generate(PROMPT, N, sampler=sampler) == engine.generate(PROMPT, N, temperature=0, presence_penalty=2)
    # A per-call override beats the given sampler's value.
    assert engine.generate(PROMPT, N, sampler=sampler, presence_penalty=0.0) == engine.generate(
        PROMPT, N, temperature=0
    )


def test_negative_bias_bans_the_greedy_token(engine: Engine, reference: Any) -> None:
    plain = engine.complete(PROMPT, N, temperature=0)
    banned = plain.token_ids[0]
    biased = engine.complete(PROMPT, N, temperature=0, logit_bias={banned: -100})
    assert biased.text != plain.text
    assert banned not in biased.token_ids
    assert biased.text == reference_text(reference, PROMPT, N, logit_bias={banned: -100})


def test_positive_bias_forces_a_token(engine: Engine) -> None:
    forced = one_token(engine, " dragon")
    result = engine.complete(PROMPT, 6, temperature=0, logit_bias={forced: 100})
    assert result.token_ids == (forced,) * 6
    sampled = engine.complete(PROMPT, 6, temperature=0.8, seed=3, logit_bias={forced: 100})
    assert sampled.token_ids == (forced,) * 6


def test_grammar_path_is_exact_with_penalties_and_bias(engine: Engine) -> None:
    """The grammar's shortlist (top-k by raw logit) still holds the chain's choice when the fields move logits."""
    free = engine.generate(PROMPT, N, temperature=0, presence_penalty=2.0)
    assert TEXT.fullmatch(free), free
    assert engine.generate(PROMPT, N, temperature=0, regex=TEXT.pattern, presence_penalty=2.0) == free
    plain = engine.complete(PROMPT, N, temperature=0)
    banned = plain.token_ids[0]
    free = engine.complete(PROMPT, N, temperature=0, logit_bias={banned: -100})
    constrained = engine.complete(PROMPT, N, temperature=0, regex=TEXT.pattern, logit_bias={banned: -100})
    assert banned not in constrained.token_ids
    assert constrained.text == free.text[: len(constrained.text)]
    # A token far outside the raw top-k, forced by its bias: under a grammar, sampled (top-k 40) and greedy.
    forced = one_token(engine, " dragon")
    for temperature in (0.0, 0.8):
        result = engine.complete(
            PROMPT, 3, temperature=temperature, top_k=40, seed=5, regex=TEXT.pattern, logit_bias={forced: 100}
        )
        assert result.token_ids == (forced,) * 3


def test_speculation_verifies_with_the_same_fields(own_engine: Engine) -> None:
    """Verified drafts obey the bias and the penalties.

    That verification chooses exactly as llama.cpp's chain does is checked
    model-free (``test_speculation_s_distribution_is_the_chain_s``
    below); here the real model's verified rows are compared with plain
    decoding only where numerics cannot differ: a draft row's logits come
    from a batch of several rows, whose float sums may differ from a lone
    row's in the last bits, so long greedy texts may part at a near-tie.
    """
    engine = own_engine  # speculation, once set up, stays with its engine
    banned = engine.complete(PROMPT, 1, temperature=0).token_ids[0]
    fields: dict[str, Any] = {"presence_penalty": 2.0, "frequency_penalty": 0.5, "logit_bias": {banned: -100}}
    speculated = engine.complete(PROMPT, N, temperature=0, speculative=True, **fields)
    unbiased = engine.complete(PROMPT, N, temperature=0, speculative=True)
    assert banned not in speculated.token_ids and unbiased.token_ids[0] == banned
    plain = engine.complete(PROMPT, N, temperature=0, speculative=False, **fields)
    assert speculated.token_ids[:4] == plain.token_ids[:4]
    forced = one_token(engine, " dragon")
    result = engine.complete(PROMPT, 3, temperature=0.8, seed=2, speculative=True, logit_bias={forced: 100})
    assert result.token_ids == (forced,) * 3


@pytest.mark.anyio
async def test_batch_rows_keep_their_own_fields(aengine: AsyncEngine) -> None:
    """Each prompt of a batch has its own penalty window: the batch equals the lone calls."""
    prompts = [PROMPT, "My favourite colours are red, blue, red, blue,"]
    fields: dict[str, Any] = {"presence_penalty": 2.0, "frequency_penalty": 0.5}
    alone = [await aengine.generate(p, 16, temperature=0, **fields) for p in prompts]
    assert await aengine.generate_batch(prompts, 16, temperature=0, **fields) == alone
    plain = await aengine.generate_batch(prompts, 16, temperature=0)
    assert plain != alone


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"presence_penalty": "1"}, TypeError),
        ({"frequency_penalty": float("inf")}, ValueError),
        ({"logit_bias": [1, 2]}, TypeError),
        ({"logit_bias": {"5": 1.0}}, TypeError),
        ({"logit_bias": {-1: 1.0}}, ValueError),
        ({"logit_bias": {5: "x"}}, TypeError),
    ],
)
def test_bad_fields_fail_before_work(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        SamplerConfig(**kwargs)


def test_logit_bias_outside_the_vocabulary(engine: Engine) -> None:
    with pytest.raises(ValueError, match="logit_bias token id 999999999 is not in the model's vocabulary"):
        engine.generate(PROMPT, 2, logit_bias={999_999_999: 1.0})


def test_sampler_config_reads_back() -> None:
    config = SamplerConfig(logit_bias={9: 1, 3: -100}, presence_penalty=1, frequency_penalty=0.5)
    assert dict(config.logit_bias) == {3: -100.0, 9: 1.0}
    assert hash(config) == hash(
        SamplerConfig(logit_bias=[(3, -100), (9, 1)], presence_penalty=1, frequency_penalty=0.5)
    )
    assert config.adjusts_logits and config.penalised
    assert not SamplerConfig(presence_penalty=1, repeat_last_n=0).penalised
    assert not SamplerConfig(logit_bias={1: 0.0}).adjusts_logits


def model_free_sampler(config: SamplerConfig, n_vocab: int, seed: int, matcher: object = None) -> Any:
    from types import SimpleNamespace

    from oxillama_py.llama.sampling import Sampler

    return Sampler(SimpleNamespace(n_vocab=n_vocab), config, seed=seed, matcher=matcher)  # type: ignore[arg-type]


@pytest.mark.parametrize("greedy", [False, True])
def test_the_grammar_shortlist_is_the_whole_chain_with_bias_and_penalties(greedy: bool) -> None:
    """The shortlist ``Sampler`` hands the chain under a grammar (top-k by raw logit, plus the penalty window and
    the biased tokens) gives the token llama.cpp's chain picks over the whole masked vocabulary (no model needed)."""
    from types import SimpleNamespace

    import llama_cpp
    import numpy as np

    from oxillama_py.llama.sampling import _Candidates

    n_vocab = 4000
    rng = np.random.default_rng(1)
    full = _Candidates(n_vocab)
    for trial in range(120):
        logits = (rng.standard_normal(n_vocab) * 3).astype(np.float32)
        allowed = rng.random(n_vocab) < (0.02 if trial % 3 == 0 else 0.5)
        allowed[int(rng.integers(n_vocab))] = True
        biased = rng.choice(n_vocab, size=20, replace=False)
        bias = {int(t): float(b) for t, b in zip(biased, rng.uniform(-100, 100, size=20), strict=True)}
        if trial % 2:  # push the best allowed tokens down: their places go to tokens beyond the raw top-k
            best = np.flatnonzero(allowed)[np.argsort(logits[allowed])[-60:]]
            bias = {int(t): -50.0 for t in best[rng.random(best.size) < 0.7]}
        config = SamplerConfig(
            temperature=0.0 if greedy else 0.8,
            top_k=40,
            top_p=0.9,
            min_p=0.05,
            repeat_penalty=1.1,
            repeat_last_n=16,
            presence_penalty=1.5,
            frequency_penalty=0.7,
            logit_bias=bias,
        )
        history = [int(t) for t in rng.choice(np.flatnonzero(logits > 2), size=12)]
        matcher = SimpleNamespace(allowed=lambda a=allowed: a, consume=lambda token: None, error=lambda: "")
        ours = model_free_sampler(config, n_vocab, trial, matcher)
        theirs = model_free_sampler(config, n_vocab, trial)
        for token in history:
            ours.accept(token)
            llama_cpp.llama_sampler_accept(theirs.ptr, token)
        full.resize(n_vocab)
        full.fill(np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32))
        llama_cpp.llama_sampler_apply(theirs.ptr, full.pointer)
        assert ours._choose(logits, matcher) == full.selected(), trial
        ours.close()
        theirs.close()


def test_speculation_s_distribution_is_the_chain_s() -> None:
    """Speculation's numpy mirror of the chain applies the bias and the penalties as llama.cpp does (greedy)."""
    import llama_cpp
    import numpy as np

    from oxillama_py.decode.distribution import Distribution
    from oxillama_py.llama.sampling import _Candidates

    n_vocab = 3000
    rng = np.random.default_rng(2)
    full = _Candidates(n_vocab)
    for trial in range(100):
        logits = (rng.standard_normal(n_vocab) * 2).astype(np.float32)
        likely = np.argsort(logits)[-6:]
        biased = rng.choice(np.argsort(logits)[-40:], size=6, replace=False)
        bias = {int(t): float(b) for t, b in zip(biased, rng.uniform(-3, 3, size=6), strict=True)}
        config = SamplerConfig(
            temperature=0.0, repeat_penalty=1.1, repeat_last_n=8, presence_penalty=0.3, frequency_penalty=0.6
        ).with_overrides(logit_bias=bias)
        history = [int(t) for t in rng.choice(likely, size=20)]  # repeats, some beyond the window
        chain = model_free_sampler(config, n_vocab, trial)
        for token in history:
            llama_cpp.llama_sampler_accept(chain.ptr, token)
        full.resize(n_vocab)
        full.fill(logits)
        llama_cpp.llama_sampler_apply(chain.ptr, full.pointer)
        assert Distribution(config, n_vocab).argmax(logits, history) == full.selected(), trial
        chain.close()
