"""The prefix cache: requests that start like earlier ones reuse their KV cells, and say so.

The reference for "same text" is a fresh engine (and llama-cpp-python's ``Llama``,
reset before each run): a hit must not change a single greedy token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from oxillama_py import (
    AsyncEngine,
    CancellationToken,
    Engine,
    EngineConfig,
    GenerationCancelled,
    KvCacheFullError,
    PromptLookup,
    SpeculativeConfig,
    SpeculativeEngine,
    testing,
)
from oxillama_py.decode.prefix_cache import ALIGN

RULES = [
    "answer in plain words",
    "never invent a citation",
    "keep each reply under a hundred words",
    "say so when you are unsure",
    "prefer metric units",
    "quote numbers with their units",
    "do not repeat the question",
    "use lists for steps",
    "write dates as year-month-day",
    "explain acronyms once",
]


def system_prompt(lines: int) -> str:
    """A deterministic instruction block of about 13 tokens per line."""
    body = "\n".join(f"Rule {i + 1}: {RULES[i % len(RULES)]} (section {i // len(RULES) + 1})." for i in range(lines))
    return f"You are a careful assistant. Follow these rules.\n{body}\n\n"


SHORT = system_prompt(24)  # about 330 tokens: inside Gemma 3's 512-token sliding window
LONG = system_prompt(90)  # about 1,200 tokens: past the window
QUESTIONS = [
    "Question: What is the capital of France?\nAnswer:",
    "Question: Name three primary colours.\nAnswer:",
    "Question: How many days are in a leap year?\nAnswer:",
    "Question: What does CPU stand for?\nAnswer:",
]
# After LONG, no two greedy candidates within 3 logits in 12 tokens: these are compared
# across batches, whose cells interleave (the weekdays had a 0.09 tie, the letters 0.69).
COUNTING = [
    "Continue the sequence: 1, 2, 3, 4, 5,",
    "Continue the sequence: v1, v2, v3,",
    "Continue the sequence: k1, k2, k3,",
    "Continue the sequence: 10, 20, 30, 40,",
]
N = 24


def make_engine(model_path: Path, **overrides: object) -> Engine:
    settings: dict[str, object] = {"n_ctx": 8192, "max_concurrency": 4, "prefix_cache_tokens": 4096, **overrides}
    return Engine(EngineConfig(model_path, **settings))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cached(model_path: Path) -> Iterator[Engine]:
    with make_engine(model_path) as engine:
        engine.load_model()
        yield engine


@pytest.fixture(scope="module")
def fresh(model_path: Path) -> Iterator[Engine]:
    """No prefix cache at all: every prompt is prefilled in full."""
    with make_engine(model_path, prefix_cache_tokens=0) as engine:
        engine.load_model()
        yield engine


def aligned(n: int) -> int:
    return n - n % ALIGN


@pytest.mark.parametrize("system", [SHORT, LONG], ids=["inside-window", "past-window"])
def test_a_hit_gives_the_fresh_engines_greedy_text(
    cached: Engine, fresh: Engine, reference: object, system: str
) -> None:
    first = cached.complete(system + QUESTIONS[0], N, temperature=0)
    prompt = system + QUESTIONS[1]
    hit = cached.complete(prompt, N, temperature=0)
    common = len(cached.tokenize(system)) - 1  # the question's first token may merge with the newline
    assert common - ALIGN < hit.cached_tokens < hit.prompt_tokens
    assert first.prompt_tokens > 512 if system is LONG else hit.prompt_tokens < 512
    expected = fresh.complete(prompt, N, temperature=0)
    assert expected.cached_tokens == 0
    assert hit.text == expected.text
    assert hit.token_ids == expected.token_ids
    assert hit.text == reference.complete(prompt, N)  # type: ignore[attr-defined]


def test_the_same_prompt_twice_reuses_all_but_its_tail(cached: Engine, fresh: Engine) -> None:
    prompt = LONG + QUESTIONS[2]
    cached.complete(prompt, 8, temperature=0)
    again = cached.complete(prompt, N, temperature=0)
    assert again.prompt_tokens - 12 < again.cached_tokens <= again.prompt_tokens - 8  # a whole kernel block
    assert again.text == fresh.generate(prompt, N, temperature=0)


def test_hits_inside_a_batch_give_the_same_text(cached: Engine, fresh: Engine) -> None:
    assert cached.cache_prefix(LONG) > 0
    prompts = [LONG + q for q in COUNTING]
    before = cached.stats.prefix_cache.hits
    results = cached.complete_batch(prompts, 12, temperature=0)
    assert all(r.cached_tokens >= aligned(len(cached.tokenize(LONG)) - 1) - ALIGN for r in results)
    assert cached.stats.prefix_cache.hits >= before + len(prompts)
    expected = fresh.generate_batch(prompts, 12, temperature=0)
    assert [r.text for r in results] == expected
    assert results[0].text.startswith(" 6, 7")


@pytest.mark.anyio
async def test_async_hits_on_every_backend(cached: Engine, fresh: Engine) -> None:
    aengine: AsyncEngine = cached.async_engine()
    prompt = SHORT + QUESTIONS[3]
    await aengine.cache_prefix(SHORT)
    pieces = [piece async for piece in aengine.stream(prompt, N, temperature=0)]
    result = await aengine.complete(prompt, N, temperature=0)
    assert result.cached_tokens > 0
    assert "".join(pieces) == result.text == fresh.generate(prompt, N, temperature=0)


def test_concurrent_requests_share_one_cached_prefix(cached: Engine) -> None:
    cached.cache_prefix(LONG)
    texts: dict[int, int] = {}

    def one(i: int) -> None:
        texts[i] = cached.complete(LONG + COUNTING[i], 6, temperature=0).cached_tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(texts) == 4 and all(n >= ALIGN for n in texts.values())


def test_multi_turn_chat_reuses_the_previous_turn(cached: Engine) -> None:
    messages = [{"role": "system", "content": SHORT.strip()}]
    previous = None
    for turn, question in enumerate(["Hello! Who are you?", "What is 2 + 2?", "And 3 + 3?", "Thanks, bye."]):
        messages.append({"role": "user", "content": question})
        result = cached.chat(messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
        if previous is not None:
            # Turn N+1's prompt extends turn N's prompt and answer: all of turn N's prompt is reused.
            assert result.cached_tokens >= aligned(previous.prompt_tokens), (turn, result, previous)
        previous = result
        messages.append({"role": "assistant", "content": result.text})


def test_lru_eviction_keeps_within_capacity(model_path: Path) -> None:
    capacity = 3 * 384
    with make_engine(model_path, prefix_cache_tokens=capacity) as engine:
        prefixes = [system_prompt(20 + k) + f"Topic {k}.\n" for k in range(4)]  # ~300 tokens each, distinct
        for k in range(3):
            engine.complete(f"Note {k}. " + prefixes[k], 4, temperature=0)
            assert engine.stats.prefix_cache.tokens <= capacity
        engine.complete("Note 0. " + prefixes[0] + "More.", 4, temperature=0)  # touch entry 0
        engine.complete("Note 3. " + prefixes[3], 4, temperature=0)  # evicts the least recently used: 1
        stats = engine.stats.prefix_cache
        assert stats.tokens <= capacity and stats.evictions >= 1
        assert engine.complete("Note 0. " + prefixes[0] + "Again.", 4, temperature=0).cached_tokens > 0
        assert engine.complete("Note 1. " + prefixes[1] + "Again.", 4, temperature=0).cached_tokens == 0


def test_a_full_context_evicts_the_cache_instead_of_failing(model_path: Path) -> None:
    """The cache may hold the whole context; running requests always win the room back."""
    with make_engine(model_path, n_ctx=2048, max_concurrency=2, prefix_cache_tokens=2048) as engine:
        for k in range(6):
            engine.complete(f"Document {k}.\n" + system_prompt(40 + k), 2, temperature=0)
        assert engine.stats.prefix_cache.tokens > 1024
        prompts = [f"Letter {k}.\n" + system_prompt(56) + COUNTING[k] for k in range(2)]
        results = engine.complete_batch(prompts, 80, temperature=0)  # together nearly the whole context
        assert all(r.finish_reason in ("stop", "length") for r in results)
        assert engine.stats.prefix_cache.evictions > 0
        assert results[0].text.startswith(" 6, 7")


def test_cancelled_and_failed_requests_leave_nothing_wrong(cached: Engine, fresh: Engine) -> None:
    # Free text, but no two greedy candidates closer than 0.3 logits in N tokens ("Describe a quiet
    # morning." has a 0.05 tie, which once flipped in CI on a CPU whose kernels we could not inspect).
    prompt = LONG + "Question: Which units should I use?\nAnswer:"
    token = CancellationToken()
    seen: list[str] = []

    def cancel_soon(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            token.cancel()

    with pytest.raises(GenerationCancelled):
        cached.generate_streaming(prompt, 64, cancel_soon, temperature=0, cancel_token=token)

    def broken(piece: str) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError):
        cached.generate_streaming(prompt + " Also", 64, broken, temperature=0)
    after = cached.complete(prompt, N, temperature=0)
    assert after.cached_tokens > 0
    assert after.text == fresh.generate(prompt, N, temperature=0)


def test_a_prefix_whose_window_was_overwritten_is_prefilled_again(model_path: Path, fresh: Engine) -> None:
    """llama.cpp hands SWA cells the window left behind to the next sequence that needs room.

    Set up so that it does: a hole before a long cached entry, then an unrelated
    long prompt that fills the hole and goes on into the entry's stale SWA
    cells. A later prompt sharing the entry's whole prefix must not reuse it.
    """
    with make_engine(model_path, n_ctx=4096, max_concurrency=2, prefix_cache_tokens=4096) as engine:
        engine.load_model()
        engine.complete("Memo.\n" + system_prompt(20), 2, temperature=0)  # cells 0..255 kept
        engine.complete(LONG + QUESTIONS[1], 2, temperature=0)  # the long entry, after them
        assert testing.evict_least_recent(engine)  # the memo, least recently used: a hole before the entry
        (entry,) = testing.cached_prefixes(engine)
        prompt = LONG + COUNTING[0]
        assert entry.pos_min == 0
        engine.complete("Report.\n" + system_prompt(100), 2, temperature=0)  # unrelated, longer than the hole
        (entry, _) = sorted(testing.cached_prefixes(engine), key=lambda h: h.seq_id != entry.seq_id)
        pairs = zip(engine.tokenize(prompt), entry.tokens, strict=False)
        shared = next((i for i, (a, b) in enumerate(pairs) if a != b), len(entry.tokens))
        window = testing.sliding_window(engine)
        assert entry.pos_min > shared - window, "llama.cpp did not reuse the entry's stale SWA cells"
        result = engine.complete(prompt, 12, temperature=0)
        assert result.cached_tokens == 0
        assert engine.stats.prefix_cache.window_misses == 1
        assert result.text == fresh.generate(prompt, 12, temperature=0)
        assert result.text.startswith(" 6, 7")


def test_speculative_engine_reuses_the_targets_prefix(model_path: Path) -> None:
    passage = ", ".join(f"item {i}" for i in range(120))
    prompt = f"Copy the list.\nList: {passage}\nCopy: {passage}\nList: {passage}\nCopy:"
    config = SpeculativeConfig(EngineConfig(model_path, n_ctx=4096, prefix_cache_tokens=4096), PromptLookup())
    with SpeculativeEngine(config) as engine:
        cold = engine.complete(prompt, 32, temperature=0)
        warm = engine.complete(prompt, 32, temperature=0)
    assert cold.cached_tokens == 0 and warm.prompt_tokens - 12 < warm.cached_tokens <= warm.prompt_tokens - 8
    assert warm.text == cold.text
    assert warm.text.startswith(" item 0, item 1")


def test_cache_prefix_errors(model_path: Path, cached: Engine) -> None:
    with pytest.raises(TypeError):
        cached.cache_prefix(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(KvCacheFullError):
        cached.cache_prefix(system_prompt(400))  # about 5,200 tokens: more than the cache's 4,096 cells
    with make_engine(model_path, prefix_cache_tokens=0) as off, pytest.raises(ValueError, match="off"):
        off.cache_prefix(SHORT)
    with make_engine(model_path) as engine:
        kept = engine.cache_prefix(SHORT)
        assert kept == aligned(len(engine.tokenize(SHORT)))
        stats = engine.stats.prefix_cache
        assert stats.pinned == 1 and stats.tokens == kept and stats.lookups == 0
        assert engine.complete(SHORT + QUESTIONS[0], 4, temperature=0).cached_tokens == kept
        assert engine.stats.prefix_cache.hit_rate == 1.0


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (8193, ValueError), (True, TypeError), (1.5, TypeError)]
)
def test_bad_prefix_cache_tokens(model_path: Path, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="prefix_cache_tokens"):
        EngineConfig(model_path, n_ctx=8192, prefix_cache_tokens=value)  # type: ignore[arg-type]


def test_default_capacity_is_an_eighth_of_the_context(model_path: Path) -> None:
    assert EngineConfig(model_path, n_ctx=8192).prefix_cache_capacity == 1024
    with Engine(EngineConfig(model_path, n_ctx=4096, max_concurrency=2)) as engine:
        result = engine.complete(LONG + QUESTIONS[0], 2, temperature=0)  # longer than the cache
        stats = engine.stats.prefix_cache
        assert stats.capacity == 512 and stats.tokens == 512 and result.prompt_tokens > 512
        assert engine.complete(LONG + QUESTIONS[1], 2, temperature=0).cached_tokens == 512


def test_the_cache_is_off_with_zero(fresh: Engine) -> None:
    fresh.complete(LONG + QUESTIONS[0], 2, temperature=0)
    assert fresh.complete(LONG + QUESTIONS[0], 2, temperature=0).cached_tokens == 0
    stats = fresh.stats.prefix_cache
    assert stats.capacity == 0 and stats.entries == 0 and stats.hits == 0


def test_server_reports_cached_tokens(model_path: Path) -> None:
    openai = pytest.importorskip("openai")
    from server_process import running_server

    with running_server("--model", str(model_path), "--n-ctx", "4096", "--max-concurrency", "2") as server:
        client = openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        usages = []
        for question in ("Hello!", "What is 2 + 2?"):
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "system", "content": SHORT}, {"role": "user", "content": question}],
                max_tokens=4,
                temperature=0,
            )
            usages.append(reply.usage)
        assert usages[0].prompt_tokens_details.cached_tokens == 0
        assert usages[1].prompt_tokens_details.cached_tokens >= ALIGN
        cache = server.health()["prefix_cache"]
        assert isinstance(cache, dict) and cache["hits"] >= 1 and cache["tokens"] > 0
        client.close()


def test_hit_rate_counts(model_path: Path) -> None:
    with make_engine(model_path) as engine:
        engine.complete(SHORT + QUESTIONS[0], 2, temperature=0)
        engine.complete(SHORT + QUESTIONS[1], 2, temperature=0)
        stats = engine.stats.prefix_cache
        assert (stats.lookups, stats.hits) == (2, 1)
        assert stats.hit_rate == 0.5 and 0.0 < stats.token_hit_rate < 0.5


@pytest.mark.parametrize("exact", [True, False])
def test_prefix_cache_exact_decides_whether_turns_decoded_together_stay_cached(model_path: Path, exact: bool) -> None:
    """Two users' turns decoded together interleave their cells; whether their next turns still hit once the engine
    is idle is ``prefix_cache_exact``'s choice: dropped for a fresh engine's text (the default), or kept."""
    with make_engine(model_path, prefix_cache_exact=exact) as engine:
        prompts = [SHORT + QUESTIONS[0], SHORT.replace("careful", "patient") + QUESTIONS[1]]
        first = engine.complete_batch(prompts, 8, temperature=0)  # decoded together: off the cell grid
        assert all(r.cached_tokens == 0 for r in first)
        again = engine.complete(prompts[1] + first[1].text + "\nQuestion: and then?", 8, temperature=0)
        if exact:
            assert again.cached_tokens == 0  # the worker was idle: interleaved entries went first
        else:
            assert again.cached_tokens >= len(engine.tokenize(prompts[1])) - ALIGN
            assert again.text == engine.generate(prompts[1] + first[1].text + "\nQuestion: and then?", 8, temperature=0)


def test_prefix_cache_exact_must_be_a_bool(model_path: Path) -> None:
    with pytest.raises(TypeError, match="prefix_cache_exact"):
        EngineConfig(model_path, prefix_cache_exact="no")  # type: ignore[arg-type]
