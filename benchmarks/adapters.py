"""LoRA adapters as models: one engine per adapter over shared weights against one engine scheduling adapter groups.

Contenders, workload and how to read the numbers: ``benchmarks/README.md``. Writes ``results/adapters.json``/``.png``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import harness as h

CONTENDERS = ("engines", "engines_split", "groups")
ADAPTERS = (None, "a", "b")  # the base model, then two adapters
PER_ADAPTER = 4
SLOTS = 4
SUBJECTS = ("rivers", "bread", "glaciers", "trains", "violins", "bees", "clocks", "volcanoes", "maps", "tea", "owls")
SUBJECTS += ("bridges",)


@dataclass
class Request:
    index: int
    adapter: str | None
    prompt: str


@dataclass
class Outcome:
    tokens: int
    ttft: float
    end: float
    text: str


def workload() -> list[Request]:
    """Base, a, b, base, a, b, ...: every adapter's requests interleaved in arrival order."""
    count = PER_ADAPTER * len(ADAPTERS)
    return [
        Request(i, ADAPTERS[i % len(ADAPTERS)], f"Write a short paragraph about {SUBJECTS[i]}:") for i in range(count)
    ]


async def _one(engine: Any, request: Request, max_tokens: int, start: float) -> Outcome:
    called = time.perf_counter()
    result = await engine.complete(request.prompt, max_tokens, temperature=0)
    t = result.timings
    ttft = called - start + t.queued_secs + t.prompt_secs
    return Outcome(result.completion_tokens, ttft, time.perf_counter() - start, result.text)


async def run_engines(engines: dict[str | None, Any], requests: list[Request], max_tokens: int) -> list[Outcome]:
    """Each request to its adapter's engine, all at once: the engines decode side by side."""
    out: dict[int, Outcome] = {}
    start = time.perf_counter()

    async def one(request: Request) -> None:
        out[request.index] = await _one(engines[request.adapter], request, max_tokens, start)

    async with anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(one, request)
    return [out[r.index] for r in requests]


async def run_groups(engine: Any, paths: dict[str, Path], requests: list[Request], max_tokens: int) -> list[Outcome]:
    """One engine: the queued requests of the oldest request's adapter as one batch, switching adapters between."""
    out: dict[int, Outcome] = {}
    start = time.perf_counter()
    queue, current = list(requests), None

    async def one(request: Request) -> None:
        out[request.index] = await _one(engine, request, max_tokens, start)

    while queue:
        adapter = queue[0].adapter
        group = [r for r in queue if r.adapter == adapter]
        queue = [r for r in queue if r.adapter != adapter]
        if adapter != current:  # each waits for the running generations: here, the previous group has ended
            if current is not None:
                await engine.remove_lora(paths[current])
            if adapter is not None:
                await engine.apply_lora(paths[adapter])
            current = adapter
        async with anyio.create_task_group() as tg:
            for request in group:
                tg.start_soon(one, request)
    if current is not None:
        await engine.remove_lora(paths[current])
    return [out[r.index] for r in requests]


def sample(outcomes: list[Outcome]) -> h.Sample:
    secs = max(o.end for o in outcomes)
    extra = {"ttft": [o.ttft for o in outcomes], "ends": [o.end for o in outcomes]}
    return h.Sample(secs, [o.tokens for o in outcomes], [o.text for o in outcomes], extra)


def main() -> int:
    sys.path.insert(0, str(h.HERE.parent / "tests"))  # the LoRA tests' adapter writer
    from lora_gguf import write_lora

    from oxillama_py import AsyncEngine, EngineConfig, loaded_weights

    run = h.start("adapters", __doc__, rounds=(2, 1), max_tokens=(48, 32))
    model, threads, max_tokens = run.model, run.args.threads, run.max_tokens
    root = Path(tempfile.mkdtemp(prefix="oxillama-adapters-"))
    paths = {"a": write_lora(root / "a.gguf", model), "b": write_lora(root / "b.gguf", model, seed=1)}
    n_ctx = SLOTS * 256

    def config(n_threads: int, adapter: str | None) -> EngineConfig:
        lora = () if adapter is None else ((paths[adapter], 1.0),)
        return EngineConfig(model, n_ctx=n_ctx, max_concurrency=SLOTS, n_threads=n_threads, lora=lora)

    split = max(1, threads // len(ADAPTERS))
    setups: dict[str, Any] = {
        "engines": {a: AsyncEngine(config(threads, a)) for a in ADAPTERS},
        "engines_split": {a: AsyncEngine(config(split, a)) for a in ADAPTERS},
        "groups": AsyncEngine(config(threads, None)),
    }
    requests = workload()

    async def measure(name: str) -> list[Outcome]:
        if name == "groups":
            return await run_groups(setups[name], paths, requests, max_tokens)
        return await run_engines(setups[name], requests, max_tokens)

    async def load() -> int:
        """Load every engine and decode a few tokens on each (a warm-up)."""
        engines = [*setups["engines"].values(), *setups["engines_split"].values(), setups["groups"]]
        for engine in engines:
            await engine.load_model()
            await engine.complete(requests[0].prompt, 4, temperature=0)
        return max(w.holders for w in loaded_weights())

    holders = anyio.run(load)
    h.say(f"{holders} engines share one load of the weights")
    contenders = [h.Contender(name, measure) for name in CONTENDERS]
    for _, key, order in h.schedule(run.rounds, [None], contenders):
        for contender in order:
            contender.record(key, sample(anyio.run(measure, contender.name)))
    run.stop()

    by = {c.name: c.samples[None] for c in contenders}
    tps = {name: h.summary([s.tok_per_sec for s in by[name]]) for name in CONTENDERS}
    ttft = {name: [t for s in by[name] for t in s.extra["ttft"]] for name in CONTENDERS}
    best = max(("engines", "engines_split"), key=lambda n: tps[n]["median"])
    ratio = tps[best]["median"] / tps["groups"]["median"]
    reference = by["groups"][0].texts
    data: dict[str, Any] = {
        **run.header(),
        "settings": {
            "requests": len(requests),
            "per_adapter": PER_ADAPTER,
            "slots": SLOTS,
            "n_ctx": n_ctx,
            "threads": {"engines": threads, "engines_split": split, "groups": threads},
            "engines_sharing_weights": holders,
        },
        "tok_per_sec": tps,
        "ttft_secs": {name: {"p50": h.percentile(v, 50), "p95": h.percentile(v, 95)} for name, v in ttft.items()},
        "same_text_as_groups": {n: sum(a == b for a, b in zip(by[n][0].texts, reference)) for n in CONTENDERS},
        "best_engines": best,
        "ratio_engines_over_groups": ratio,
        "checks": {"engines_over_groups": h.check(ratio, 0.9)},
    }
    run.report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
