"""Aggregate throughput of concurrent requests through ``AsyncEngine`` against raw llama.cpp.

What it measures: aggregate completion tokens per second (all sequences'
tokens / wall seconds from the first submit to the last result) for 1, 4, 8
and 16 concurrent greedy requests with distinct prompts, through

* ``engine8_batch``: ``AsyncEngine(EngineConfig(...))`` with the default
  ``max_concurrency=8``, ``await complete_batch(prompts)`` (what
  ``generate_batch`` returns the texts of). With 16 prompts only 8 decode at
  once; the other 8 queue and take slots as they free (continuous batching).
* ``engine8_tasks``: the same engine, one ``await complete(prompt)`` per
  prompt, all started in one task group (how a web backend sees it).
* ``engine16_batch``: ``AsyncEngine`` with ``max_concurrency=16``, so 16
  requests decode together.
* ``raw_sequential``: the same prompts one after another through
  ``llama_cpp.Llama.create_completion(temperature=0)`` (``reset()`` before each):
  what you get without batching.
* ``raw_batched``: a minimal batched loop over llama.cpp's low-level API
  (``llama_batch_init``, one ``llama_decode`` per step over every sequence,
  greedy by numpy argmax over ``llama_get_logits_ith``, ``llama_memory_clear``)
  with the same context settings as the engine: the machine's ceiling for this
  model. (``--raw-argmax llama`` picks with llama.cpp's greedy
  ``llama_sampler`` instead, as the engine does today; with Gemma 3's 262k
  vocabulary that costs about 0.3 ms more per sequence and step.)

It also measures the event loop's lag: during every run a task sleeps 1 ms in
a loop and records how late it wakes. The 99th percentile during the 8-request
``engine8_batch`` run is the figure of merit. The raw contenders run in a
worker thread (``anyio.to_thread.run_sync``) so that the same probe runs beside
them: their lag is what plain CPU and GIL contention from llama.cpp in another
thread costs the loop, and the probe's own cost is paid by every contender
alike. An idle-loop baseline is recorded each round.

Why: batching is the reason the engine owns one decode thread that steps all
requests together. Targets: engine(8) / sequential raw(8) >= 1.8,
engine(8) / raw batched(8) >= 0.9, p99 loop lag < 10 ms.

How: all contenders are loaded once and warmed up, then run interleaved
(for each round, for each concurrency level, every contender in a rotating
order) so machine noise hits them alike; medians over rounds are reported.
Every contender uses the same llama.cpp thread count (``--threads``). Batched
decoding takes a different kernel path than single-sequence decoding, so greedy
texts may differ between contenders and a sequence may stop early at an
end-of-generation token: throughput counts the tokens actually produced.

Usage: ``python benchmarks/batching.py [--quick] [--model PATH] [--backend asyncio|uvloop|trio]``.
Writes ``benchmarks/results/batching.json`` and ``batching.png``.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as common
import anyio
import anyio.lowlevel
import anyio.to_thread
import numpy as np

TOPICS = (
    "the ocean",
    "volcanoes",
    "the moon",
    "honey bees",
    "ancient Rome",
    "the human brain",
    "rainforests",
    "the printing press",
    "penguins",
    "black holes",
    "coffee",
    "the Sahara desert",
    "octopuses",
    "the Great Wall of China",
    "electricity",
    "mushrooms",
)
LEVELS = (1, 4, 8, 16)
CONTENDERS = ("engine8_batch", "engine8_tasks", "engine16_batch", "raw_sequential", "raw_batched")
PRIMARY = "engine8_batch"
TARGET_VS_SEQUENTIAL = 1.8
TARGET_VS_BATCHED = 0.9
TARGET_P99_LAG_MS = 10.0
LAG_SLEEP = 0.001


def prompts(n: int) -> list[str]:
    return [f"List of one hundred interesting facts about {topic}:\n1." for topic in TOPICS[:n]]


@dataclass
class Sample:
    tokens: int
    secs: float
    per_sequence: list[int]
    lag_ms: list[float] | None = None

    @property
    def tok_per_sec(self) -> float:
        return self.tokens / self.secs if self.secs > 0 else math.nan


@dataclass
class Contender:
    name: str
    run: Callable[[list[str], int], Awaitable[Sample]]
    samples: dict[int, list[Sample]] = field(default_factory=dict)


# -- the raw baselines ---------------------------------------------------------------------


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
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.flash_attn_type = 0  # as Llama and the engine: flash attention off
        cparams.kv_unified = True
        cparams.no_perf = True
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


def make_raw_batched(
    model: Path, threads: int, n_ctx: int, argmax: str
) -> Callable[[list[str], int], Awaitable[Sample]]:
    raw = RawBatched(model, threads, n_ctx, n_seq_max=max(LEVELS), argmax=argmax)

    async def run(texts: list[str], max_tokens: int) -> Sample:
        out, secs, lags = await with_lag(lambda: anyio.to_thread.run_sync(raw.generate, texts, max_tokens))
        return Sample(sum(map(len, out)), secs, [len(t) for t in out], lags)

    return run


def make_raw_sequential(model: Path, threads: int) -> Callable[[list[str], int], Awaitable[Sample]]:
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)

    def one_by_one(texts: list[str], max_tokens: int) -> list[int]:
        counts = []
        for text in texts:
            llm.reset()
            out: Any = llm.create_completion(text, max_tokens=max_tokens, temperature=0)
            counts.append(int(out["usage"]["completion_tokens"]))
        return counts

    async def run(texts: list[str], max_tokens: int) -> Sample:
        counts, secs, lags = await with_lag(lambda: anyio.to_thread.run_sync(one_by_one, texts, max_tokens))
        return Sample(sum(counts), secs, counts, lags)

    return run


# -- the engine ----------------------------------------------------------------------------


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
    result: Any = None
    async with anyio.create_task_group() as group:
        group.start_soon(lag_probe, lags)
        await anyio.lowlevel.checkpoint()
        start = time.perf_counter()
        result = await work()
        secs = time.perf_counter() - start
        group.cancel_scope.cancel()
    return result, secs, [lag * 1000.0 for lag in lags]


def make_engine_batch(engine: Any) -> Callable[[list[str], int], Awaitable[Sample]]:
    async def run(texts: list[str], max_tokens: int) -> Sample:
        results, secs, lags = await with_lag(lambda: engine.complete_batch(texts, max_tokens, temperature=0))
        counts = [r.completion_tokens for r in results]
        return Sample(sum(counts), secs, counts, lags)

    return run


def make_engine_tasks(engine: Any) -> Callable[[list[str], int], Awaitable[Sample]]:
    async def run(texts: list[str], max_tokens: int) -> Sample:
        counts = [0] * len(texts)

        async def one(index: int) -> None:
            counts[index] = (await engine.complete(texts[index], max_tokens, temperature=0)).completion_tokens

        async def all_of_them() -> None:
            async with anyio.create_task_group() as group:
                for index in range(len(texts)):
                    group.start_soon(one, index)

        _, secs, lags = await with_lag(all_of_them)
        return Sample(sum(counts), secs, counts, lags)

    return run


async def idle_lag(seconds: float) -> list[float]:
    """The loop's lag with nothing else running: the noise floor of the probe."""
    lags: list[float] = []
    with anyio.move_on_after(seconds):
        await lag_probe(lags)
    return [lag * 1000.0 for lag in lags]


# -- the run -------------------------------------------------------------------------------


async def measure(args: Any, model: Path, max_tokens: int, rounds: int, levels: tuple[int, ...]) -> dict:
    from oxillama_py import AsyncEngine, EngineConfig, SamplerConfig

    greedy = SamplerConfig.greedy()
    config8 = EngineConfig(model, n_threads=args.threads, sampler=greedy)
    config16 = EngineConfig(model, n_threads=args.threads, sampler=greedy, max_concurrency=16)
    idle: list[float] = []
    async with AsyncEngine(config8) as engine8, AsyncEngine(config16) as engine16:
        runners = {
            "engine8_batch": make_engine_batch(engine8),
            "engine8_tasks": make_engine_tasks(engine8),
            "engine16_batch": make_engine_batch(engine16),
            "raw_sequential": make_raw_sequential(model, args.threads),
            "raw_batched": make_raw_batched(model, args.threads, config8.n_ctx, args.raw_argmax),
        }
        contenders = [Contender(name, runners[name]) for name in CONTENDERS]
        warm = prompts(max(levels))
        for contender in contenders:  # warm-up: page in weights, build graphs for every batch size
            await contender.run(warm[:1], 4)
            if contender.name != "raw_sequential":  # one prompt at a time: nothing more to warm
                await contender.run(warm, 4)
        for round_no in range(rounds):
            idle += await idle_lag(0.5)
            for level in levels:
                texts = prompts(level)
                line = []
                for contender in common.rotated(contenders, round_no + level):
                    sample = await contender.run(texts, max_tokens)
                    contender.samples.setdefault(level, []).append(sample)
                    line.append(f"{contender.name} {sample.tok_per_sec:6.1f}")
                print(f"round {round_no + 1}/{rounds}, {level:2d} requests: " + ", ".join(line), flush=True)
    return {"contenders": contenders, "idle_lag_ms": idle}


def main() -> int:
    parser = common.base_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 64, quick 24)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default 3, quick 1)")
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument(
        "--raw-argmax",
        choices=("numpy", "llama"),
        default="numpy",
        help="how the raw batched loop picks greedy tokens: numpy argmax over the logits (the faster, so the "
        "ceiling) or llama.cpp's greedy llama_sampler (what the engine uses today)",
    )
    args = parser.parse_args()
    max_tokens = args.max_tokens or (24 if args.quick else 64)
    rounds = args.rounds or (1 if args.quick else 3)
    model = common.resolve_model(args.model)
    common.quiet_llama_cpp()
    started = time.perf_counter()
    info = common.machine_info(args.threads, model)
    info["backend"] = args.backend
    info["raw_argmax"] = args.raw_argmax
    backend, options = ("asyncio", {"use_uvloop": True}) if args.backend == "uvloop" else (args.backend, {})
    print(
        f"model {model.name}, {args.threads} threads, {max_tokens} tokens per request, {rounds} rounds, {args.backend}",
        flush=True,
    )
    measured = anyio.run(measure, args, model, max_tokens, rounds, LEVELS, backend=backend, backend_options=options)
    common.finish_info(info, started)
    data = analyse(measured, info, max_tokens, rounds, args.quick)
    print_table(data)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "batching.json", data)
    plot(data, args.out / "batching.png")
    print(f"wrote {args.out / 'batching.json'} and {args.out / 'batching.png'}")
    return 0 if data["all_targets_met"] else 1


def analyse(measured: dict, info: dict[str, Any], max_tokens: int, rounds: int, quick: bool) -> dict:
    contenders: list[Contender] = measured["contenders"]
    table: dict[str, Any] = {}
    for contender in contenders:
        per_level: dict[str, Any] = {}
        for level, samples in sorted(contender.samples.items()):
            entry: dict[str, Any] = {
                "tok_per_sec": common.summary([s.tok_per_sec for s in samples]),
                "secs": common.summary([s.secs for s in samples]),
                "tokens": [s.tokens for s in samples],
                "tokens_per_sequence": [s.per_sequence for s in samples],
            }
            lags = [lag for s in samples if s.lag_ms is not None for lag in s.lag_ms]
            if lags:
                entry["loop_lag_ms"] = {
                    "p50": common.percentile(lags, 50),
                    "p99": common.percentile(lags, 99),
                    "max": max(lags),
                    "probes": len(lags),
                }
            per_level[str(level)] = entry
        table[contender.name] = per_level

    def med(name: str, level: int) -> float:
        entry = table.get(name, {}).get(str(level))
        return entry["tok_per_sec"]["median"] if entry else math.nan

    ratios: dict[str, Any] = {}
    for name in ("engine8_batch", "engine8_tasks", "engine16_batch"):
        ratios[name] = {
            str(level): {
                "vs_raw_sequential": med(name, level) / med("raw_sequential", level),
                "vs_raw_batched": med(name, level) / med("raw_batched", level),
            }
            for level in LEVELS
            if str(level) in table[name]
        }
    ratios["ceiling_raw_batched_vs_sequential"] = {
        str(level): med("raw_batched", level) / med("raw_sequential", level) for level in LEVELS
    }
    primary = ratios[PRIMARY].get("8", {})
    lag8 = table[PRIMARY].get("8", {}).get("loop_lag_ms", {})
    checks = {
        "engine8_vs_raw_sequential_8": {
            "value": primary.get("vs_raw_sequential", math.nan),
            "target": TARGET_VS_SEQUENTIAL,
        },
        "engine8_vs_raw_batched_8": {"value": primary.get("vs_raw_batched", math.nan), "target": TARGET_VS_BATCHED},
        "p99_loop_lag_ms_8": {"value": lag8.get("p99", math.nan), "target": TARGET_P99_LAG_MS, "below": True},
    }
    for check in checks.values():
        check["verdict"] = common.verdict(check["value"], check["target"], higher_is_better=not check.get("below"))
    short = [
        f"{c.name} at {level}: {s.per_sequence}"
        for c in contenders
        for level, samples in c.samples.items()
        for s in samples
        if min(s.per_sequence) < max_tokens
    ]
    idle = measured["idle_lag_ms"]
    return {
        "benchmark": "batching",
        "mode": "quick" if quick else "default",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "levels": list(LEVELS),
        "prompt_template": "List of one hundred interesting facts about {topic}:\n1.",
        "machine": info,
        "contenders": {
            "engine8_batch": "AsyncEngine(EngineConfig(n_threads=T, sampler=greedy)) [max_concurrency=8, n_ctx=16384]"
            ".complete_batch(prompts)",
            "engine8_tasks": "same engine, one complete(prompt) task per prompt in a task group",
            "engine16_batch": "AsyncEngine(EngineConfig(..., max_concurrency=16)).complete_batch(prompts)",
            "raw_sequential": "llama_cpp.Llama(n_ctx=2048, n_threads=T).create_completion per prompt, one by one",
            "raw_batched": (
                "minimal llama_batch/llama_decode loop, n_ctx=16384, n_seq_max=16, kv_unified, greedy by "
                + ("numpy argmax over llama_get_logits_ith" if info["raw_argmax"] == "numpy" else "llama_sampler")
            ),
        },
        "results": table,
        "ratios": ratios,
        "idle_loop_lag_ms": {"p50": common.percentile(idle, 50), "p99": common.percentile(idle, 99)},
        "checks": checks,
        "all_targets_met": all(c["verdict"] == "PASS" for c in checks.values()),
        "stopped_early": short,
        "warning": common.load_warning(info),
    }


def print_table(data: dict) -> None:
    results = data["results"]
    levels = data["levels"]
    print()
    print("aggregate tok/s (median over rounds)")
    print(f"{'contender':<16}" + "".join(f"{f'{n} req':>10}" for n in levels))
    for name in CONTENDERS:
        cells = []
        for level in levels:
            entry = results[name].get(str(level))
            cells.append(f"{entry['tok_per_sec']['median']:10.1f}" if entry else f"{'-':>10}")
        print(f"{name:<16}" + "".join(cells))
    print()
    print("ratios (engine / raw)")
    for name in ("engine8_batch", "engine8_tasks", "engine16_batch"):
        for level, pair in data["ratios"][name].items():
            print(
                f"  {name:<16} {level:>2} req: vs sequential {pair['vs_raw_sequential']:5.2f}, "
                f"vs batched {pair['vs_raw_batched']:5.2f}"
            )
    ceiling = data["ratios"]["ceiling_raw_batched_vs_sequential"]
    cells = ", ".join(f"{level} req {value:.2f}" for level, value in ceiling.items())
    print(f"  machine ceiling, raw batched / raw sequential: {cells}")
    print()
    print("event-loop lag during each run (ms): p50 / p99 / max  (raw_*: llama.cpp in a plain thread, for comparison)")
    for name in CONTENDERS:
        for level, entry in results[name].items():
            lag = entry.get("loop_lag_ms")
            if lag:
                print(f"  {name:<16} {level:>2} req: {lag['p50']:6.2f} / {lag['p99']:6.2f} / {lag['max']:6.2f}")
    idle = data["idle_loop_lag_ms"]
    print(f"  idle loop (baseline):   {idle['p50']:6.2f} / {idle['p99']:6.2f}")
    print()
    for key, check in data["checks"].items():
        sign = "<" if check.get("below") else ">="
        print(f"{key:<30} {check['value']:7.3f}  (target {sign} {check['target']})  {check['verdict']}")
    if data["stopped_early"]:
        print(f"note: {len(data['stopped_early'])} runs had a sequence end before max_tokens (counted as produced)")
    if data["warning"]:
        print(f"NOTE: {data['warning']}")


def plot(data: dict, path: Path) -> None:
    plt = common.pyplot()
    results = data["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {
        "engine8_batch": ("#3a7dc9", "o-"),
        "engine8_tasks": ("#7fb2e5", "s--"),
        "engine16_batch": ("#1b4f8a", "^-"),
        "raw_sequential": ("#999999", "x:"),
        "raw_batched": ("#c0392b", "d-"),
    }
    for name in CONTENDERS:
        levels = [int(k) for k in results[name]]
        med = [results[name][str(n)]["tok_per_sec"]["median"] for n in levels]
        low = [results[name][str(n)]["tok_per_sec"]["min"] for n in levels]
        high = [results[name][str(n)]["tok_per_sec"]["max"] for n in levels]
        color, style = styles[name]
        left.plot(levels, med, style, color=color, label=name)
        left.fill_between(levels, low, high, color=color, alpha=0.12)
    left.set_xscale("log", base=2)
    left.set_xticks(data["levels"], [str(n) for n in data["levels"]])
    left.set_xlabel("concurrent requests")
    left.set_ylabel("aggregate tokens / s (median, min-max band)")
    left.set_title(f"greedy, {data['max_tokens']} tokens per request")
    left.legend(fontsize=8)
    for name in ("engine8_batch", "engine8_tasks", "engine16_batch"):
        per = data["ratios"][name]
        levels = [int(k) for k in per]
        color, style = styles[name]
        right.plot(levels, [per[str(n)]["vs_raw_batched"] for n in levels], style, color=color, label=name)
    right.axhline(TARGET_VS_BATCHED, color="#c0392b", linestyle="--", linewidth=0.9, label="target at 8")
    right.axhline(1.0, color="#777777", linewidth=0.8)
    right.set_xscale("log", base=2)
    right.set_xticks(data["levels"], [str(n) for n in data["levels"]])
    right.set_xlabel("concurrent requests")
    right.set_ylabel("engine / raw batched loop")
    lag = data["checks"]["p99_loop_lag_ms_8"]["value"]
    vs_seq = data["checks"]["engine8_vs_raw_sequential_8"]["value"]
    right.set_title(f"at 8: {vs_seq:.2f}x sequential raw, p99 loop lag {lag:.1f} ms", fontsize=10)
    right.legend(fontsize=8)
    info = data["machine"]
    fig.suptitle(
        f"oxillama_py {info['oxillama_py']} AsyncEngine ({info['backend']}) vs llama-cpp-python "
        f"{info['llama_cpp_python']}, {info['threads']} threads, {data['rounds']} rounds ({data['mode']})",
        fontsize=10,
    )
    common.save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
