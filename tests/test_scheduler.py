"""The decode scheduler without a model: a fake runner, a fake prefix cache, real sequences and speculation.

Admission (slots, first come first served), fairness of the prefill budget,
cancellation of waiting and running requests, the exclusive barrier of
adapter changes, prefix-cache lending, drafts given out by the cost model,
reads (embeddings, logits) withdrawn through their future, and the sequence-id
pool. The whole file runs in well under a second.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import oxillama_py.decode
from oxillama_py.bus import Finished, Request, Step
from oxillama_py.config import SamplerConfig
from oxillama_py.decode.cells import Holder, Reuse, Run
from oxillama_py.decode.cost import Acceptance, StepCost
from oxillama_py.decode.drafters import Draft
from oxillama_py.decode.ids import LLAMA_MAX_SEQ, SeqIdPool
from oxillama_py.decode.pace import MIN_CHUNK, STALL, PrefillPace
from oxillama_py.decode.plan import StepOutput, StepPlan, Task
from oxillama_py.decode.scheduler import Scheduler
from oxillama_py.decode.sequence import ActiveSequence
from oxillama_py.decode.speculation import Placement, SequenceSpeculation, Speculator

EOG = 1


class FakeModel:
    n_vocab = 1000

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def piece(self, token: int) -> bytes:
        return f"<{token}>".encode()


class FakeCache:
    """Records what the scheduler asks of the prefix cache; lends ``reuse`` to prompts that start with ``shared``."""

    def __init__(self, shared: list[int] | None = None, reuse: Reuse | None = None) -> None:
        self.shared = shared or []
        self.reuse = reuse
        self.lookups: list[dict[str, Any]] = []
        self.calls: list[tuple[Any, ...]] = []
        self._blocks = 0

    def new_block(self) -> int:
        self._blocks += 1
        return self._blocks

    def lookup(self, prompt: np.ndarray, others: Iterable[Holder], *, lone: bool, count: bool = True) -> Reuse | None:
        self.lookups.append({"prompt": prompt.tolist(), "others": list(others), "lone": lone, "count": count})
        if self.reuse is not None and self.shared and prompt.tolist()[: len(self.shared)] == self.shared:
            return self.reuse
        return None

    def share(self, reuse: Reuse, seq_id: int) -> None:
        self.calls.append(("share", reuse.source, seq_id))

    def store(self, seq_id: int, tokens: np.ndarray, runs: tuple[Run, ...], *, pinned: bool, on_grid: bool) -> int:
        self.calls.append(("store", seq_id, tokens.tolist(), pinned, on_grid))
        return len(tokens)

    def forget(self, *, on_grid: bool) -> None:
        self.calls.append(("forget", on_grid))

    def free_cells(self, seq_id: int) -> None:
        self.calls.append(("free", seq_id))

    def drop_off_grid(self) -> None:
        self.calls.append(("drop_off_grid",))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == name]


def request(prompt: Iterable[int], max_tokens: int = 3, **fields: Any) -> Request:
    """A request whose events land in ``request.events`` (no loop needed)."""
    req = Request(list(prompt), max_tokens, SamplerConfig(temperature=0.0), 0, **fields)
    events: list[Any] = []
    req.publish = lambda *published: events.extend(published)  # type: ignore[method-assign]
    req.events = events  # type: ignore[attr-defined]
    return req


def finished(req: Request) -> Finished | None:
    ends = [event for event in req.events if isinstance(event, Finished)]  # type: ignore[attr-defined]
    assert len(ends) <= 1, ends
    return ends[0] if ends else None


def tokens_of(req: Request) -> list[int]:
    steps = [event for event in req.events if isinstance(event, Step)]  # type: ignore[attr-defined]
    return [token.token_id for step in steps for token in step.tokens]


class FakeRunner:
    """Executes plans as the runner does, without a model: each sampled sequence gets ``next_token(seq)``.

    Drafts are all accepted (the target agrees), so a speculating sequence
    advances by its draft plus one token.
    """

    def __init__(self, next_token: Any = None, seconds: Any = None) -> None:
        self.next_token = next_token or (lambda seq: 100 + len(seq.generated))
        self.seconds = seconds or (lambda logit_rows, prompt_rows: 0.01)
        """What a step costs, by its rows with logits and its prompt rows without."""
        self.rows: list[list[tuple[int, int]]] = []  # per step: (slot, rows) of each sequence, in batch order

    def execute(self, plan: StepPlan) -> StepOutput:
        rows: list[tuple[int, int]] = []
        sampled: list[tuple[ActiveSequence, Placement]] = []
        n = 0
        for seq in plan.generating:
            draft = plan.drafts.get(seq, Draft([]))
            placed = Placement(n, draft, seq.pos, [])
            seq.pos += 1 + len(draft)
            n += 1 + len(draft)
            rows.append((seq.slot, 1 + len(draft)))
            sampled.append((seq, placed))
        for seq, chunk in plan.chunks:
            draft = plan.drafts.get(seq, Draft([]))
            seq.pos += len(chunk) + len(draft)
            seq.n_prefilled += len(chunk)
            n += len(chunk) + len(draft)
            rows.append((seq.slot, len(chunk) + len(draft)))
            if not seq.prefilling and not seq.request.pin:
                sampled.append((seq, Placement(n - 1 - len(draft), draft, seq.pos, [])))
        for seq, placed in sampled:
            placed.chosen = [*placed.draft.tokens, self.next_token(seq)]
        self.rows.append(rows)
        prompt_rows = sum(len(chunk) for _, chunk in plan.chunks)
        return StepOutput(sampled, n, self.seconds(n - prompt_rows, prompt_rows))


def new_scheduler(
    n_slots: int = 2,
    n_batch: int = 64,
    cache: FakeCache | None = None,
    n_spare: int = 2,
    pace: PrefillPace | None = None,
) -> tuple[Scheduler, FakeCache, SeqIdPool]:
    cache = cache or FakeCache()
    ids = SeqIdPool(n_slots, 0, n_spare)

    def start(req: Request, lease: Any, submitted: float) -> ActiveSequence:
        if req.stop == ("boom",):
            raise ValueError("this request cannot start")
        return ActiveSequence(req, lease, FakeModel(), submitted, None)  # type: ignore[arg-type]

    return Scheduler(n_batch, ids, cache, start, pace=pace), cache, ids  # type: ignore[arg-type]


def step(scheduler: Scheduler, runner: FakeRunner) -> StepPlan:
    plan = scheduler.schedule()
    if plan.decodes:
        scheduler.update(plan, runner.execute(plan))
    return plan


def drain(scheduler: Scheduler, runner: FakeRunner, limit: int = 100) -> int:
    for n in range(limit):
        if scheduler.idle:
            return n
        step(scheduler, runner)
    raise AssertionError("the scheduler never went idle")


# -- admission and fairness -------------------------------------------------------------------
def test_admission_takes_free_slots_first_come_first_served() -> None:
    scheduler, _, ids = new_scheduler(n_slots=2)
    a, b, c = request([5, 6], 2), request([7, 8], 4), request([9, 10], 2)
    for index, req in enumerate((a, b, c)):
        scheduler.add(req, float(index))
    runner = FakeRunner()
    step(scheduler, runner)
    assert [seq.request for seq in scheduler.running] == [a, b]
    assert [seq.slot for seq in scheduler.running] == [0, 1]
    assert [req for req, _ in scheduler.waiting] == [c]
    assert ids.free_slots() == 0
    step(scheduler, runner)  # a has its 2 tokens: it ends and frees slot 0
    assert finished(a) is not None and finished(a).reason == "length"  # type: ignore[union-attr]
    step(scheduler, runner)
    assert [(seq.request, seq.slot) for seq in scheduler.running] == [(b, 1), (c, 0)]
    drain(scheduler, runner)
    assert tokens_of(a) == [100, 101] and tokens_of(b) == [100, 101, 102, 103] and tokens_of(c) == [100, 101]
    assert ids.free_slots() == 2


def test_a_request_that_cannot_start_is_answered_and_gives_its_slot_to_the_next() -> None:
    scheduler, _, _ = new_scheduler(n_slots=1)
    bad, good = request([5], stop=("boom",)), request([6])
    scheduler.add(bad, 0.0)
    scheduler.add(good, 0.0)
    scheduler.schedule()
    end = finished(bad)
    assert end is not None and end.reason == "error" and isinstance(end.error, ValueError)
    assert [seq.request for seq in scheduler.running] == [good] and scheduler.running[0].slot == 0


def test_generating_rows_come_first_and_prompts_share_what_they_leave_in_order() -> None:
    scheduler, _, _ = new_scheduler(n_slots=3, n_batch=16)
    runner = FakeRunner()
    short = request([2, 3], max_tokens=50)
    scheduler.add(short, 0.0)
    step(scheduler, runner)  # short prefills and samples its first token
    long_a, long_b = request(range(10, 50), max_tokens=2), request(range(60, 70), max_tokens=2)
    scheduler.add(long_a, 1.0)
    scheduler.add(long_b, 2.0)
    plan = step(scheduler, runner)
    assert plan.generating == [scheduler.running[0]]
    assert [(seq.request, len(chunk)) for seq, chunk in plan.chunks] == [(long_a, 15)]  # 16 rows - 1 generating
    for _ in range(2):
        step(scheduler, runner)
    # long_a's 40 tokens took three steps (15 + 15 + 10); long_b got the 5 rows left in the third.
    assert [rows for rows in runner.rows[1:4]] == [[(0, 1), (1, 15)], [(0, 1), (1, 15)], [(0, 1), (1, 10), (2, 5)]]
    drain(scheduler, runner)
    # The generating sequence decoded one token in every step while the prompts prefilled.
    assert all(rows[0] == (0, 1) for rows in runner.rows[1:6])
    assert len(tokens_of(short)) == 50 and len(tokens_of(long_a)) == 2 and len(tokens_of(long_b)) == 2


def cpu_like(logit_rows: int, prompt_rows: int) -> float:
    """A step's cost on a CPU: the weights read once (20 ms), then 3 ms a row."""
    return 0.020 + 0.003 * (logit_rows + prompt_rows)


def prefill_beside_streams(pace: PrefillPace, n_streams: int = 4) -> tuple[FakeRunner, list[tuple[int, int]]]:
    """``n_streams`` generating, then a 2,000-token prompt arrives: each step's (generating rows, prompt rows)."""
    scheduler, _, _ = new_scheduler(n_slots=n_streams + 1, n_batch=512, pace=pace)
    runner = FakeRunner(seconds=cpu_like)
    for i in range(n_streams):
        scheduler.add(request([2 + i, 3], max_tokens=400), 0.0)
    for _ in range(30):  # the streams decode alone for a while: the pace learns their step's cost
        step(scheduler, runner)
    scheduler.add(request(range(10, 2010), max_tokens=1), 1.0)
    steps: list[tuple[int, int]] = []
    while any(seq.prefilling for seq in scheduler.running) or scheduler.waiting:
        plan = step(scheduler, runner)
        steps.append((len(plan.generating), sum(len(chunk) for _, chunk in plan.chunks)))
    return runner, steps


def test_a_long_prompt_takes_no_more_than_the_budget_while_others_generate() -> None:
    _, steps = prefill_beside_streams(PrefillPace(target_ms=100.0))
    assert all(generating == 4 for generating, _ in steps)
    # The first chunks go by a guessed row cost; within ten steps the cost is learned and every step keeps to
    # the 100 ms target (20 ms + 3 ms a row: 4 generating rows and 22 prompt rows).
    learned = steps[10:]
    assert learned and all(cpu_like(4, rows) <= 0.100 for _, rows in learned), steps
    assert all(rows == 22 for _, rows in learned[:-1]), steps  # the budget is used, not just the floor
    assert sum(rows for _, rows in steps) == 2000


def test_by_default_a_step_with_prompt_rows_takes_stall_times_the_generating_rows_cost() -> None:
    _, steps = prefill_beside_streams(PrefillPace(), n_streams=8)
    alone = cpu_like(8, 0)  # 44 ms
    learned = steps[10:-1]
    assert learned and all(rows > MIN_CHUNK for _, rows in learned), steps
    assert all(STALL * alone - 0.003 < cpu_like(8, rows) <= STALL * alone for _, rows in learned), steps


def test_a_tiny_target_still_moves_the_prompt_by_the_floor() -> None:
    _, steps = prefill_beside_streams(PrefillPace(target_ms=0.001), n_streams=1)
    assert all(rows == MIN_CHUNK for _, rows in steps[:-1]) and steps[-1][1] <= MIN_CHUNK


def test_one_stalled_step_moves_the_budget_little() -> None:
    pace = PrefillPace(target_ms=100.0)
    for _ in range(40):
        pace.observe(4, 0, cpu_like(4, 0))
        pace.observe(4, 20, cpu_like(4, 20))
    before = pace.budget(4, 512)
    assert before == 22
    pace.observe(4, 20, 30.0)  # the first decode of a context, or the machine stalled for 30 s
    pace.observe(4, 0, 30.0)
    assert before / 2 <= pace.budget(4, 512) < before


def test_a_prompt_alone_takes_the_whole_batch() -> None:
    scheduler, _, _ = new_scheduler(n_slots=2, n_batch=512, pace=PrefillPace(target_ms=0.001))
    runner = FakeRunner(seconds=cpu_like)
    scheduler.add(request(range(10, 1210), max_tokens=1), 0.0)
    chunks = []
    while scheduler.running or scheduler.waiting:
        plan = step(scheduler, runner)
        chunks.append([len(chunk) for _, chunk in plan.chunks])
    assert chunks == [[512], [512], [176]]


def test_waiting_prompts_share_the_budget_oldest_first() -> None:
    scheduler, _, _ = new_scheduler(n_slots=3, n_batch=512, pace=PrefillPace(target_ms=0.001))
    runner = FakeRunner(seconds=cpu_like)
    stream = request([2, 3], max_tokens=200)
    scheduler.add(stream, 0.0)
    step(scheduler, runner)
    older, newer = request(range(10, 50), max_tokens=1), request(range(60, 70), max_tokens=1)
    scheduler.add(older, 1.0)
    scheduler.add(newer, 2.0)
    taken = [[(seq.request, len(chunk)) for seq, chunk in step(scheduler, runner).chunks] for _ in range(3)]
    assert taken == [[(older, 16)], [(older, 16)], [(older, 8), (newer, 8)]]


# -- cancellation ---------------------------------------------------------------------------
def test_a_cancelled_waiting_request_never_starts() -> None:
    scheduler, cache, _ = new_scheduler(n_slots=1)
    runner = FakeRunner()
    first, second, third = request([5], 3), request([6], 3), request([7], 3)
    for req in (first, second, third):
        scheduler.add(req, 0.0)
    step(scheduler, runner)
    second.cancel()
    drain(scheduler, runner)
    end = finished(second)
    assert end is not None and end.reason == "cancelled" and end.prompt_tokens == 1 and tokens_of(second) == []
    assert [call for call in cache.lookups if call["prompt"] == [6]] == []  # it never looked for a prefix
    assert finished(third).reason == "length"  # type: ignore[union-attr]


def test_a_cancelled_running_request_is_retired_its_cells_cached_and_its_slot_reused() -> None:
    scheduler, cache, ids = new_scheduler(n_slots=1)
    runner = FakeRunner()
    running, waiting = request([5, 6, 7], 100), request([8], 2)
    scheduler.add(running, 0.0)
    scheduler.add(waiting, 0.0)
    step(scheduler, runner)
    step(scheduler, runner)
    running.cancel()
    step(scheduler, runner)
    end = finished(running)
    assert end is not None and end.reason == "cancelled"
    assert tokens_of(running) == [100, 101]  # nothing after the cancel
    assert cache.named("store") == [("store", 0, [5, 6, 7, 100], False, True)]  # prompt + the token with cells
    assert ("free", 0) in cache.calls
    assert [seq.request for seq in scheduler.running] == [waiting] and scheduler.running[0].slot == 0
    drain(scheduler, runner)
    assert ids.free_slots() == 1


# -- the exclusive barrier ------------------------------------------------------------------
def test_an_exclusive_task_waits_for_the_running_generations_and_nothing_starts_in_between() -> None:
    scheduler, _, _ = new_scheduler(n_slots=2)
    runner = FakeRunner()
    before = request([5], 3)
    scheduler.add(before, 0.0)
    step(scheduler, runner)
    ran: list[int] = []
    task = Task(lambda: ran.append(len(scheduler.running)), exclusive=True)
    scheduler.add_exclusive(task)
    after = request([6], 2)
    scheduler.add(after, 1.0)
    while scheduler.running:
        plan = step(scheduler, runner)
        assert plan.exclusive == []
        assert [seq.request for seq in scheduler.running] in ([before], [])  # after waits, a slot free or not
    plan = scheduler.schedule()
    assert plan.exclusive == [task] and not plan.decodes and scheduler.running == []
    for due in plan.exclusive:
        due.run()
    assert ran == [0] and task.future.done()
    step(scheduler, runner)
    assert [seq.request for seq in scheduler.running] == [after]


def test_a_withdrawn_exclusive_task_holds_nothing_back() -> None:
    scheduler, _, _ = new_scheduler(n_slots=2)
    runner = FakeRunner()
    scheduler.add(request([5], 10), 0.0)
    step(scheduler, runner)
    task = Task(lambda: None, exclusive=True)
    scheduler.add_exclusive(task)
    late = request([6], 2)
    scheduler.add(late, 1.0)
    step(scheduler, runner)
    assert len(scheduler.running) == 1  # the barrier holds
    assert task.future.cancel()
    plan = step(scheduler, runner)
    assert [seq.request for seq in scheduler.running][-1] is late and plan.exclusive == []
    assert not scheduler.exclusive


# -- prefix-cache lending -------------------------------------------------------------------
def test_a_new_sequence_borrows_the_cached_prefix_and_prefills_the_rest() -> None:
    shared = list(range(100, 164))
    reuse = Reuse(source=42, n_tokens=64, runs=(Run(7, 0, 64),), on_grid=True)
    scheduler, cache, _ = new_scheduler(n_slots=2, cache=FakeCache(shared, reuse))
    runner = FakeRunner()
    lone = request([*shared, 1000, 1001], 5)
    scheduler.add(lone, 0.0)
    plan = step(scheduler, runner)
    seq = scheduler.running[0]
    assert cache.calls[:2] == [("drop_off_grid",), ("share", 42, 0)]
    assert cache.lookups[0]["lone"] is True and cache.lookups[0]["count"] is True
    assert [len(chunk) for _, chunk in plan.chunks] == [2]  # only what the cache did not lend
    assert seq.cached_tokens == 64 and seq.inherited == reuse.runs and seq.on_grid
    beside = request([2, 3], 2)
    pin = request([4, 5], 1, pin=True)
    scheduler.add(beside, 1.0)
    step(scheduler, runner)
    lookup = cache.lookups[1]
    assert lookup["lone"] is False  # another sequence decodes: off the grid, no fresh layout
    assert [(h.seq_id, h.tokens.tolist()[-2:]) for h in lookup["others"]] == [(0, [1000, 1001])]  # cells held
    assert not seq.on_grid  # two sequences interleave their cells
    drain(scheduler, runner)
    scheduler.add(pin, 2.0)
    drain(scheduler, runner)
    assert cache.lookups[-1]["count"] is False  # cache_prefix does not count as a lookup
    assert finished(pin).reason == "stop" and tokens_of(pin) == []  # type: ignore[union-attr]
    # Pinned, prefilled, nothing sampled; in slot 1, freed first (slots are reused in the order they were freed).
    assert cache.named("store")[-1] == ("store", 1, [4, 5], True, True)


def test_a_failed_sequence_gives_no_cells_to_the_cache() -> None:
    scheduler, cache, _ = new_scheduler(n_slots=1)
    scheduler.add(req := request([5, 6], 3), 0.0)
    plan = scheduler.schedule()
    output = FakeRunner().execute(plan)
    output.sampled[0][1].error = RuntimeError("sampler failed")
    scheduler.update(plan, output)
    end = finished(req)
    assert end is not None and end.reason == "error" and str(end.error) == "sampler failed"
    assert cache.named("store") == [] and cache.named("forget") == [("forget", True)] and ("free", 0) in cache.calls


# -- drafts from the cost model -------------------------------------------------------------
class CopyDrafter:
    """Offers ``k`` tokens; costs nothing."""

    seconds_per_token = 0.0

    def __init__(self) -> None:
        self.asked: list[int] = []

    def draft(self, tokens: Any, k: int, generated: Any) -> Draft:
        self.asked.append(k)
        return Draft([500 + i for i in range(k)])

    def prefill(self, tokens: Any, end: int) -> None:
        pass

    def accepted(self, n_tokens: int) -> None:
        pass

    def reset(self) -> None:
        pass


def speculating(cost: StepCost, *, rate: float, n_batch: int = 64, max_tokens: int = 40) -> tuple[Scheduler, Any]:
    scheduler, _, _ = new_scheduler(n_slots=2, n_batch=n_batch)
    speculator = Speculator(8, cost)
    speculator.shared = Acceptance(rate)
    scheduler.speculator = speculator
    model = FakeModel()

    def start(req: Request, lease: Any, submitted: float) -> ActiveSequence:
        seq = ActiveSequence(req, lease, model, submitted, None)  # type: ignore[arg-type]
        seq.spec = SequenceSpeculation(req, model, CopyDrafter(), speculator.shared, trace=False)  # type: ignore[arg-type]
        seq.spec.acceptance = Acceptance(rate)
        return seq

    scheduler.start = start
    scheduler.add(request([2, 3, 4], max_tokens, speculative=True), 0.0)
    return scheduler, speculator


FREE_ROWS = StepCost({1: 1.0, 64: 1.0})
"""Memory-bound: 64 rows cost what one does."""
DEAR_ROWS = StepCost({1: 1.0, 64: 64.0})
"""Compute-bound: every row costs what a whole step of one does."""


def test_drafts_go_where_the_cost_model_says_they_pay() -> None:
    scheduler, _ = speculating(FREE_ROWS, rate=0.9)
    plan = scheduler.schedule()  # the prompt ends in this step: it drafts after its last token
    (seq, chunk) = plan.chunks[0]
    assert len(chunk) == 3 and len(plan.drafts[seq]) == 8  # free rows: the whole cap
    scheduler, _ = speculating(DEAR_ROWS, rate=0.9)
    step(scheduler, FakeRunner())  # the prompt's rows are paid anyway: a draft may ride along
    plan = scheduler.schedule()
    assert len(plan.generating) == 1 and plan.drafts == {}  # one row a step, each draft row as dear: none
    scheduler, _ = speculating(FREE_ROWS, rate=0.0)
    assert scheduler.schedule().drafts == {}  # nothing ever accepted: no drafts


def test_drafts_fit_the_batch_and_the_tokens_left() -> None:
    scheduler, _ = speculating(FREE_ROWS, rate=0.9, n_batch=6)
    plan = scheduler.schedule()
    assert [len(draft) for draft in plan.drafts.values()] == [3]  # 6 rows - 3 of prompt
    scheduler, _ = speculating(FREE_ROWS, rate=0.9, max_tokens=4)
    plan = scheduler.schedule()
    assert [len(draft) for draft in plan.drafts.values()] == [3]  # the target's own token is the 4th
    runner = FakeRunner()
    scheduler.update(plan, runner.execute(plan))
    seq_request = plan.chunks[0][0].request
    assert tokens_of(seq_request) == [500, 501, 502, 100] and finished(seq_request).reason == "length"  # type: ignore[union-attr]


# -- reads ----------------------------------------------------------------------------------
class FakeRead:
    def __init__(self) -> None:
        self.future: Future[Any] = Future()
        self.released = 0

    def release(self, cache: Any) -> None:
        self.released += 1


def test_reads_are_advanced_each_turn_until_done_or_withdrawn() -> None:
    scheduler, _, _ = new_scheduler()
    done, withdrawn, kept = FakeRead(), FakeRead(), FakeRead()
    for job in (done, withdrawn, kept):
        scheduler.add_read(job)  # type: ignore[arg-type]
    assert not scheduler.idle
    assert list(scheduler.schedule().reads) == [done, withdrawn, kept]
    done.future.set_result(np.zeros((1, 4)))
    assert withdrawn.future.cancel()
    assert list(scheduler.schedule().reads) == [kept]
    assert (done.released, withdrawn.released, kept.released) == (0, 1, 0)
    kept.future.set_result(None)
    scheduler.schedule()
    assert scheduler.idle


# -- the sequence-id pool -------------------------------------------------------------------
def test_one_pool_leases_slots_cache_ids_and_spares_in_their_orders() -> None:
    pool = SeqIdPool.sized(4, 64)
    assert (pool.n_slots, pool.n_cache, pool.n_spare, pool.size) == (4, 64, 8, 76)
    assert [pool.slot().seq_id for _ in range(2)] == [0, 1]  # type: ignore[union-attr]
    assert pool.cache_id().seq_id == 67  # type: ignore[union-attr]
    spare = pool.spare()
    assert spare is not None and spare.seq_id == 68
    spare.release()
    spare.release()  # twice: given back once
    assert pool.free_spares() == 8
    slot = pool.slot()
    assert slot is not None and slot.seq_id == 2
    slot.release(unused=True)
    assert pool.slot().seq_id == 2  # type: ignore[union-attr]
    assert SeqIdPool.sized(LLAMA_MAX_SEQ, 64).size == LLAMA_MAX_SEQ  # every id a slot: no spares, no cache
    assert SeqIdPool.sized(250, 64).n_spare == 6


# -- the scheduler stays free of llama.cpp ----------------------------------------------------
PURE = {"scheduler", "plan", "cells", "ids", "speculation", "drafters", "cost", "distribution", "pace", "backoff"}


def _runtime_imports(path: Path) -> set[tuple[int, str]]:
    """``(level, module)`` of every import outside ``if TYPE_CHECKING:`` blocks."""
    found: set[tuple[int, str]] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom):
                    found.add((child.level, child.module or ""))
                elif isinstance(child, ast.Import):
                    found.update((0, alias.name) for alias in child.names)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


@pytest.mark.parametrize("name", sorted(PURE))
def test_the_scheduler_and_what_it_imports_need_no_llama_cpp(name: str) -> None:
    folder = Path(oxillama_py.decode.__file__).parent
    for level, module in _runtime_imports(folder / f"{name}.py"):
        assert module.split(".")[0] != "llama_cpp", (name, module)
        if level == 1:
            assert module.split(".")[0] in PURE, (name, module)  # decode modules it needs at runtime are pure too
        elif level == 2:
            assert module.split(".")[0] in {"bus", "config", "errors", "stats"}, (name, module)
