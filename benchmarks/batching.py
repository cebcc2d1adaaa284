"""Aggregate throughput of concurrent requests through ``AsyncEngine`` against raw llama.cpp, and the loop's lag.

Contenders, targets, how to read the numbers: ``benchmarks/README.md``. Writes ``results/batching.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import harness as h
import numpy as np

TOPICS = (  # noqa: SIM905
    "the ocean; volcanoes; the moon; honey bees; ancient Rome; the human brain; rainforests; the printing press; "
    "penguins; black holes; coffee; the Sahara desert; octopuses; the Great Wall of China; electricity; mushrooms"
).split("; ")
LEVELS = (1, 4, 8, 16)
CONTENDERS = ("engine8_batch", "engine8_tasks", "engine16_batch", "raw_sequential", "raw_batched")
ENGINES = CONTENDERS[:3]
PRIMARY = "engine8_batch"
TARGET_VS_SEQUENTIAL = 1.8
TARGET_VS_BATCHED = 0.9
TARGET_P99_LAG_MS = 10.0
LAG_SLEEP = 0.001
Runner = Callable[[list[str], int], Awaitable[h.Sample]]


def prompts(n: int) -> list[str]:
    return [f"List of one hundred interesting facts about {topic}:\n1." for topic in TOPICS[:n]]


class RawBatched:
    """The shortest honest batched greedy loop over llama-cpp-python's low-level API."""

    def __init__(
        self, model: Path, threads: int, n_ctx: int, n_seq_max: int, n_batch: int = 512, argmax: str = "numpy"
    ) -> None:
        import llama_cpp

        self.ll = llama_cpp
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(model).encode("utf-8"), mparams)
        if not self.model:
            raise RuntimeError(f"cannot load {model}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        cparams = llama_cpp.llama_context_default_params()
        settings = dict(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(n_batch, 512), n_seq_max=n_seq_max, no_perf=True)
        settings |= dict(n_threads=threads, n_threads_batch=threads, kv_unified=True)
        settings["flash_attn_type"] = 0  # as Llama and the engine: flash attention off
        for key, value in settings.items():
            setattr(cparams, key, value)
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("cannot create a llama.cpp context")
        self.n_batch = n_batch
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.sampler = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(self.sampler, llama_cpp.llama_sampler_init_greedy())
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.argmax = argmax
        self.piece = ctypes.create_string_buffer(256)

    def greedy(self, index: int) -> int:
        """The argmax of batch entry ``index``'s logits (the first maximum, as llama.cpp's greedy sampler)."""
        if self.argmax == "llama":
            return int(self.ll.llama_sampler_sample(self.sampler, self.ctx, index))
        logits = self.ll.llama_get_logits_ith(self.ctx, index)
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        buf = (self.ll.llama_token * (len(data) + 8))()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return list(buf[:n])

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        rc = self.ll.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def generate(self, texts: list[str], max_tokens: int) -> list[list[int]]:
        ll = self.ll
        ll.llama_memory_clear(self.memory, True)
        prompts = [self.tokenize(t) for t in texts]
        out: list[list[int]] = [[] for _ in prompts]
        sampled: dict[int, int] = {}  # sequence -> its next token, not yet decoded
        pending = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)]
        for start in range(0, len(pending), self.n_batch):  # prefill every prompt, one batch if it fits
            chunk = pending[start : start + self.n_batch]
            self._decode(chunk)
            for i, (_, _, seq, logits) in enumerate(chunk):
                if logits:
                    sampled[seq] = self.greedy(i)
        pos = [len(p) for p in prompts]
        while True:
            entries = []
            for seq, token in sampled.items():
                if ll.llama_vocab_is_eog(self.vocab, token):
                    continue
                out[seq].append(token)
                if len(out[seq]) < max_tokens:
                    entries.append((token, pos[seq], seq, True))
                    pos[seq] += 1
            if not entries:
                break
            self._decode(entries)
            sampled = {seq: self.greedy(i) for i, (_, _, seq, _) in enumerate(entries)}
        for tokens in out:  # text too, as every other contender makes it
            for token in tokens:
                ll.llama_token_to_piece(self.vocab, token, self.piece, len(self.piece), 0, False)
        return out


async def lag_probe(lags: list[float]) -> None:
    """Sleep 1 ms over and over; record how late each wake-up is (seconds)."""
    clock = time.perf_counter
    while True:
        before = clock()
        await anyio.sleep(LAG_SLEEP)
        lags.append(clock() - before - LAG_SLEEP)


async def with_lag(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, list[float]]:
    """Run ``work`` while the lag probe runs; return its result, wall seconds, lags in ms."""
    lags: list[float] = []
    async with anyio.create_task_group() as group:
        group.start_soon(lag_probe, lags)
        await anyio.lowlevel.checkpoint()
        start = time.perf_counter()
        result = await work()
        secs = time.perf_counter() - start
        group.cancel_scope.cancel()
    return result, secs, [lag * 1000.0 for lag in lags]


async def idle_lag(seconds: float) -> list[float]:
    """The loop's lag with nothing else running: the noise floor of the probe."""
    lags: list[float] = []
    with anyio.move_on_after(seconds):
        await lag_probe(lags)
    return [lag * 1000.0 for lag in lags]


def lagged(work: Callable[[list[str], int], Awaitable[Any]], count: Callable[[Any], list[int]]) -> Runner:
    """A contender: ``work(prompts, max_tokens)`` timed with the lag probe beside it; ``count`` its tokens after."""

    async def run(texts: list[str], max_tokens: int) -> h.Sample:
        out, secs, lags = await with_lag(lambda: work(texts, max_tokens))
        return h.Sample(secs, count(out), extra={"lag_ms": lags})

    return run


def contenders_of(engine8: Any, engine16: Any, run: h.Run, n_ctx: int) -> list[h.Contender]:
    """The five contenders; the raw ones run in a worker thread so the same lag probe runs beside them."""
    llm = h.llama(run.model, run.args.threads, 2048)
    raw = RawBatched(run.model, run.args.threads, n_ctx, n_seq_max=max(LEVELS), argmax=run.args.raw_argmax)

    def one_by_one(texts: list[str], max_tokens: int) -> list[int]:
        return [h.timed_completion(llm, text, max_tokens=max_tokens, temperature=0).tokens for text in texts]

    async def tasks(texts: list[str], max_tokens: int) -> list[int]:
        counts = [0] * len(texts)

        async def one(index: int) -> None:
            counts[index] = (await engine8.complete(texts[index], max_tokens, temperature=0)).completion_tokens

        async with anyio.create_task_group() as group:
            for index in range(len(texts)):
                group.start_soon(one, index)
        return counts

    def batch(engine: Any) -> Runner:
        work = lambda texts, max_tokens: engine.complete_batch(texts, max_tokens, temperature=0)  # noqa: E731
        return lagged(work, lambda results: [r.completion_tokens for r in results])

    def counts(out: list[list[int]]) -> list[int]:
        return [len(tokens) for tokens in out]

    return [
        h.Contender("engine8_batch", batch(engine8)),
        h.Contender("engine8_tasks", lagged(tasks, list)),
        h.Contender("engine16_batch", batch(engine16)),
        h.Contender("raw_sequential", lagged(lambda t, n: anyio.to_thread.run_sync(one_by_one, t, n), list)),
        h.Contender("raw_batched", lagged(lambda t, n: anyio.to_thread.run_sync(raw.generate, t, n), counts)),
    ]


async def measure(run: h.Run) -> tuple[list[h.Contender], list[float]]:
    from oxillama_py import AsyncEngine, EngineConfig, SamplerConfig

    levels = LEVELS
    config8 = EngineConfig(run.model, n_threads=run.args.threads, sampler=SamplerConfig.greedy())
    config16 = EngineConfig(run.model, n_threads=run.args.threads, sampler=SamplerConfig.greedy(), max_concurrency=16)
    idle: list[float] = []
    async with AsyncEngine(config8) as engine8, AsyncEngine(config16) as engine16:
        contenders = contenders_of(engine8, engine16, run, config8.n_ctx)
        warm = prompts(max(levels))
        for contender in contenders:  # warm-up: page in weights, build graphs for every batch size
            await contender.run(warm[:1], 4)
            if contender.name != "raw_sequential":  # one prompt at a time: nothing more to warm
                await contender.run(warm, 4)
        for _, level, order in h.schedule(run.rounds, levels, contenders, lambda r, level: r + level):
            if level == levels[0]:
                idle += await idle_lag(0.5)
            texts = prompts(level)
            for contender in order:
                contender.record(level, await contender.run(texts, run.max_tokens))
    return contenders, idle


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument(
        "--raw-argmax",
        choices=("numpy", "llama"),
        default="numpy",
        help="how the raw batched loop picks greedy tokens: numpy argmax over the logits (the faster, so the "
        "ceiling) or llama.cpp's greedy llama_sampler (what the engine uses today)",
    )


def main() -> int:
    run = h.start("batching", __doc__, rounds=(3, 1), max_tokens=(64, 24), arguments=arguments)
    args = run.args
    run.info |= {"backend": args.backend, "raw_argmax": args.raw_argmax}
    backend, options = ("asyncio", {"use_uvloop": True}) if args.backend == "uvloop" else (args.backend, {})
    contenders, idle = anyio.run(measure, run, backend=backend, backend_options=options)
    run.stop()
    data = analyse(run, contenders, idle)
    ceiling = data["ratios"]["ceiling_raw_batched_vs_sequential"]
    notes = [f"ceiling, raw batched / raw sequential: {ceiling}", f"stopped early: {len(data['stopped_early'])} runs"]
    run.report(data, notes)
    return 0 if data["all_targets_met"] else 1


def analyse(run: h.Run, contenders: list[h.Contender], idle: list[float]) -> dict[str, Any]:
    table: dict[str, Any] = {c.name: {} for c in contenders}
    for contender in contenders:
        for level, samples in sorted(contender.samples.items()):
            lags = [lag for s in samples for lag in s.extra["lag_ms"]]
            table[contender.name][str(level)] = h.entry(samples) | {
                "loop_lag_ms": {**h.spread(lags), "probes": len(lags)}
            }

    def med(name: str, level: int) -> float:
        return table[name][str(level)]["tok_per_sec"]["median"] if str(level) in table[name] else math.nan

    def versus(name: str, n: int) -> dict[str, float]:
        return {f"vs_{raw}": med(name, n) / med(raw, n) for raw in ("raw_sequential", "raw_batched")}

    ratios: dict[str, Any] = {
        name: {str(n): versus(name, n) for n in LEVELS if str(n) in table[name]} for name in ENGINES
    }
    ceiling = {str(n): med("raw_batched", n) / med("raw_sequential", n) for n in LEVELS}
    ratios["ceiling_raw_batched_vs_sequential"] = ceiling
    at8, lag8 = ratios[PRIMARY].get("8", {}), table[PRIMARY].get("8", {}).get("loop_lag_ms", {})
    checks = {
        "engine8_vs_raw_sequential_8": h.check(at8.get("vs_raw_sequential", math.nan), TARGET_VS_SEQUENTIAL),
        "engine8_vs_raw_batched_8": h.check(at8.get("vs_raw_batched", math.nan), TARGET_VS_BATCHED),
        "p99_loop_lag_ms_8": h.check(lag8.get("p99", math.nan), TARGET_P99_LAG_MS, below=True),
    }
    return {
        **run.header(),
        "levels": list(LEVELS),
        "prompt_template": "List of one hundred interesting facts about {topic}:\n1.",
        "results": table,
        "ratios": ratios,
        "idle_loop_lag_ms": {"p50": h.percentile(idle, 50), "p99": h.percentile(idle, 99)},
        "checks": checks,
        "all_targets_met": h.all_pass(checks),
        "stopped_early": h.stopped_early(contenders, run.max_tokens),
    }


if __name__ == "__main__":
    sys.exit(main())
