"""One context budget shared by all: a request may use the whole context, and when the cells run out the newest waits.

The scheduler's admission and preemption without a model (the fake runner of
``test_scheduler``), then the real model: a lone request of 12,000 tokens on
the default configuration (library and server), eight long requests that
together overflow a small context and still give each the text it gets alone,
and the refusal, before any work, of what could never fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, running_server
from test_scheduler import FakeCache, FakeModel, FakeRunner, finished, request, step, tokens_of

from oxillama_py import AsyncEngine, Engine, EngineConfig, KvCacheFullError
from oxillama_py.bus import Request
from oxillama_py.decode.cells import Run, distinct_cells
from oxillama_py.decode.ids import SeqIdPool
from oxillama_py.decode.kv_budget import MIN_WATERMARK, KvBudget, fits_context
from oxillama_py.decode.scheduler import Scheduler
from oxillama_py.decode.sequence import ActiveSequence


# -- the scheduler without a model ---------------------------------------------------------------
class BudgetCache(FakeCache):
    def pinned_runs(self) -> list[Run]:
        return []


def budget_scheduler(n_ctx: int, n_slots: int = 4, n_batch: int = 16) -> tuple[Scheduler, BudgetCache]:
    cache = BudgetCache()

    def start(req: Request, lease: Any, submitted: float) -> ActiveSequence:
        return ActiveSequence(req, lease, FakeModel(), submitted, None)  # type: ignore[arg-type]

    ids = SeqIdPool(n_slots, 0, 2)
    return Scheduler(n_batch, ids, cache, start, KvBudget(n_ctx, n_batch)), cache  # type: ignore[arg-type]


def held(scheduler: Scheduler) -> int:
    return distinct_cells(r for seq in scheduler.running for r in seq.runs())


def run_all(scheduler: Scheduler, runner: FakeRunner, n_ctx: int, limit: int = 500) -> list[list[Request]]:
    """Step until idle, checking the cells never exceed ``n_ctx``; the running requests of every step."""
    history = []
    for _ in range(limit):
        if scheduler.idle:
            return history
        step(scheduler, runner)
        assert held(scheduler) <= n_ctx
        history.append([seq.request for seq in scheduler.running])
    raise AssertionError("the scheduler never went idle")


def test_a_lone_request_may_use_the_whole_context() -> None:
    scheduler, _ = budget_scheduler(n_ctx=64)
    lone = request(range(2, 42), 24)  # 40 + 24 = 64 cells: all of them
    scheduler.add(lone, 0.0)
    run_all(scheduler, FakeRunner(), 64)
    assert tokens_of(lone) == [100 + i for i in range(24)]
    assert scheduler.preemptions == 0


def test_admission_waits_for_cells_first_come_first_served() -> None:
    """The second request waits until its prompt and a reserve fit; the third does not overtake it."""
    scheduler, _ = budget_scheduler(n_ctx=80)
    first = request(range(2, 42), 30)  # 40 cells of prompt, 70 in the end
    second = request(range(200, 240), 4)  # does not fit beside the first until it ends
    third = request([7, 8], 2)  # would fit, but must not overtake the second
    runner = FakeRunner()
    scheduler.add(first, 0.0)
    while scheduler.running[0].prefilling if scheduler.running else True:
        step(scheduler, runner)  # its prompt takes 40 of the 80 cells
    scheduler.add(second, 1.0)
    scheduler.add(third, 2.0)
    history = run_all(scheduler, runner, 80)
    assert history[0] == [first]
    started = {id(req): next(i for i, running in enumerate(history) if req in running) for req in (second, third)}
    assert started[id(second)] <= started[id(third)]
    assert all(finished(req).reason == "length" for req in (first, second, third))  # type: ignore[union-attr]
    assert tokens_of(second) == [100, 101, 102, 103]


def test_the_newest_sequence_is_preempted_and_goes_on_where_it_was() -> None:
    """Four sequences outgrow the cells: the newest yield, wait at the front, re-prefill and finish unchanged."""
    n_ctx = 96
    scheduler, cache = budget_scheduler(n_ctx=n_ctx)
    reqs = [request(range(10 * i + 2, 10 * i + 22), 40) for i in range(4)]  # 20 + 40 cells each: 240 in all
    for index, req in enumerate(reqs):
        scheduler.add(req, float(index))
    run_all(scheduler, FakeRunner(), n_ctx)
    assert scheduler.preemptions > 0
    for req in reqs:
        end = finished(req)
        assert end is not None and end.reason == "length" and end.prompt_tokens == 20
        assert tokens_of(req) == [100 + i for i in range(40)]  # no token repeated or missing
    assert finished(reqs[0]).admitted is not None  # type: ignore[union-attr]
    assert cache.named("store"), "a preempted sequence offers its cells to the prefix cache"


def test_preemption_keeps_the_oldest_running_and_puts_the_newest_first_in_line() -> None:
    scheduler, _ = budget_scheduler(n_ctx=96)
    old, new, later = request(range(2, 30), 50), request(range(40, 68), 50), request([5, 6], 2)
    scheduler.add(old, 0.0)
    scheduler.add(new, 1.0)
    runner = FakeRunner()
    while scheduler.preemptions == 0:
        step(scheduler, runner)
        if not scheduler.idle and len(scheduler.running) == 0:
            break
    scheduler.add(later, 2.0)
    assert [seq.request for seq in scheduler.running] == [old]
    assert [seq.request for seq in scheduler.preempted] == [new]
    assert scheduler.preempt_newest() is False  # the last one runs on: alone it fits
    run_all(scheduler, runner, 96)
    assert tokens_of(new) == [100 + i for i in range(50)] and tokens_of(later) == [100, 101]


def test_a_preempted_request_can_be_cancelled_while_it_waits() -> None:
    scheduler, _ = budget_scheduler(n_ctx=96)
    old, new = request(range(2, 30), 50), request(range(40, 68), 50)
    scheduler.add(old, 0.0)
    scheduler.add(new, 1.0)
    runner = FakeRunner()
    while scheduler.preemptions == 0:
        step(scheduler, runner)
    generated = tokens_of(new)
    new.cancel()
    step(scheduler, runner)
    end = finished(new)
    assert end is not None and end.reason == "cancelled" and tokens_of(new) == generated
    assert not scheduler.preempted


def test_a_steps_cells_count_the_prompt_rows_the_prefill_budget_lets_it_take() -> None:
    """Beside generating rows, a prompt takes what the pace allows, not all the room: fewer cells to fit."""
    scheduler, _ = budget_scheduler(n_ctx=4096, n_slots=3, n_batch=64)
    runner = FakeRunner()
    scheduler.add(request([2, 3], 100), 0.0)
    scheduler.add(request([4, 5], 100), 1.0)
    step(scheduler, runner)
    scheduler.add(request(range(10, 410), 1), 2.0)  # 400 rows to prefill beside two generating ones
    step(scheduler, runner)
    budget = KvBudget(4096, 64)
    running, reads = scheduler.running, scheduler.reads
    assert budget.step_cells(running, 0, reads) == 64  # the whole batch: 2 generating rows and 62 prompt rows
    assert budget.step_cells(running, 0, reads, lambda generating, room: 16) == 2 + 16
    assert budget.step_cells(running, 0, reads, lambda generating, room: room) == 64
    expected = budget.step_cells(running, 0, reads, scheduler.pace.budget)
    plan = step(scheduler, runner)  # the step takes exactly what was counted
    assert plan.chunks and len(plan.generating) + sum(len(chunk) for _, chunk in plan.chunks) == expected


def test_budget_arithmetic() -> None:
    budget = KvBudget(n_ctx=1000, n_batch=16)
    assert budget.watermark == max(MIN_WATERMARK, 10)
    assert budget.admits(980 - 10, 0, 980) and not budget.admits(980 - 9, 0, 980)
    assert fits_context(100, 60, 40) and not fits_context(100, 60, 41)


# -- the real model ------------------------------------------------------------------------------
def counting(start: int, n_tokens: int, tokenize: Any) -> tuple[str, int]:
    """``"start, start+1, ..., last,"`` of at most ``n_tokens`` tokens (as many as fit), and the number after it."""

    def text(count: int) -> str:
        return ", ".join(str(n) for n in range(start, start + count)) + ","

    low, high = 1, 2
    while len(tokenize(text(high))) <= n_tokens:
        low, high = high, high * 2
    while high - low > 1:  # the most numbers whose text fits
        middle = (low + high) // 2
        low, high = (middle, high) if len(tokenize(text(middle))) <= n_tokens else (low, middle)
    return text(low), start + low


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a 12,000-token prefill takes long: one loop is enough
async def test_a_lone_request_of_12000_tokens_on_the_default_config(engine: Engine, aengine: AsyncEngine) -> None:
    config = aengine.config
    default = EngineConfig()
    assert config.n_ctx == default.n_ctx  # any slot count: a lone request may use the whole pool
    prompt, following = counting(1, 11_985, engine.tokenize)
    max_tokens = max(12, 12_000 - len(engine.tokenize(prompt)))
    result = await aengine.complete(prompt, max_tokens, temperature=0)
    assert result.prompt_tokens + max_tokens >= 12_000 > 5 * (config.n_ctx // 8)  # the old share of 8 slots
    assert result.completion_tokens == max_tokens and result.text.startswith(f" {following}, {following + 1}")


@pytest.fixture(scope="module")
def small(model_path: Path) -> Iterator[Engine]:
    """A small context that eight long requests overflow, decoding in eight slots."""
    with Engine(EngineConfig(model_path, n_ctx=768, max_concurrency=8, seed=3)) as engine:
        engine.load_model()
        yield engine


def test_requests_that_overflow_the_cells_all_finish_as_they_would_alone(small: Engine) -> None:
    prompts = [counting(1000 * i + 17, 120, small.tokenize)[0] for i in range(8)]
    lengths = [len(small.tokenize(p)) for p in prompts]
    n_ctx = small.config.n_ctx
    assert sum(lengths) + 8 * 60 > 1.5 * n_ctx and min(lengths) + 60 > n_ctx // 8  # more than the old share each
    before = small.stats.preemptions
    together = small.generate_batch(prompts, 60, temperature=0)
    assert small.stats.preemptions > before, "the requests did not overflow the cells"
    alone = [small.generate(p, 60, temperature=0) for p in prompts]
    assert together == alone


def test_what_could_never_fit_is_refused_before_any_work(small: Engine) -> None:
    steps = small.stats.decode_steps
    prompt = "1, 2, 3, 4,"
    n = len(small.tokenize(prompt))
    with pytest.raises(KvCacheFullError, match=f"n_ctx={small.config.n_ctx}"):
        small.generate(prompt, small.config.n_ctx - n + 1)
    assert small.stats.decode_steps == steps
    with pytest.raises(KvCacheFullError, match="does not fit"):
        small.generate("7, " * 800, 1)
    assert small.stats.decode_steps == steps


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    with running_server() as server:  # the default --n-ctx and --max-concurrency
        yield server


def test_the_default_server_takes_a_request_of_12000_tokens(default_server: ServerProcess) -> None:
    body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 12_000, "temperature": 0, "stop": [" 9,"]}
    response = httpx.post(default_server.api_url + "/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == " 6, 7, 8,"
    body["max_tokens"] = 16_384
    response = httpx.post(default_server.api_url + "/completions", json=body, timeout=300)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"


class RefusingContext:
    """A context whose ``llama_decode`` finds no cells for the batch (fragmentation): it changes nothing."""

    n_ctx = 64
    decodes = 0

    def decode(self, entries: Any) -> None:
        self.decodes += 1
        raise KvCacheFullError("no room for the batch")


def test_a_batch_llama_cpp_refuses_leaves_the_sequences_as_they_were_and_the_newest_yields() -> None:
    from oxillama_py.decode.runner import Runner

    scheduler, cache = budget_scheduler(n_ctx=1000)
    cache.enabled = False  # type: ignore[attr-defined]
    cache.evict_one = lambda: False  # type: ignore[attr-defined]
    old, new = request(range(2, 12), 8), request(range(20, 30), 8)
    scheduler.add(old, 0.0)
    scheduler.add(new, 1.0)
    runner = FakeRunner()
    step(scheduler, runner)  # both prefilled: each has sampled its first token
    plan = scheduler.schedule()
    before = [(seq.pos, seq.n_prefilled) for seq in scheduler.running]
    refusing = Runner(FakeModel(), RefusingContext(), cache, SeqIdPool(2, 0, 0), scheduler.running, None)  # type: ignore[arg-type]
    with pytest.raises(KvCacheFullError):
        refusing.execute(plan)
    assert [(seq.pos, seq.n_prefilled) for seq in scheduler.running] == before
    assert scheduler.preempt_newest() and [seq.request for seq in scheduler.running] == [old]
    run_all(scheduler, runner, 1000)
    assert tokens_of(old) == tokens_of(new) == [100 + i for i in range(8)]
