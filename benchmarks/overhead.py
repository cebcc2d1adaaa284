"""Single-request overhead of ``Engine.generate`` and its progress adapters against raw llama-cpp-python.

What it measures: decode throughput (completion tokens / wall seconds of the
call, model load excluded) of one greedy generation of the same prompt and
``max_tokens`` through

* ``raw``: ``llama_cpp.Llama(model, n_ctx=2048).create_completion(prompt,
  max_tokens=N, temperature=0)`` after ``llm.reset()`` (so every run decodes the
  whole prompt, as the engine does);
* ``Engine.complete`` (what ``Engine.generate`` returns the ``.text`` of) with
  ``progress=`` each kind of adapter: ``none``; a real ``tqdm.tqdm`` bar
  writing to an ``io.StringIO``; an ``ipywidgets.IntProgress``; a plain
  callable taking a ``ProgressEvent``.

Why: the engine puts an event bus, a blocking portal, a decode thread and
subscriber tasks between the caller and llama.cpp. Those must cost nothing
visible: the targets are a ratio (engine tok/s / raw tok/s) of at least 1.0
with a tqdm bar and at least 0.98 for every adapter.

How: both sides load the model once, run one discarded warm-up each, then the
contenders run interleaved, round after round (each round starts with a
different contender), so that machine noise hits all of them alike. The
ratio reported is median(engine) / median(raw); the median of per-round
ratios is reported too. Both sides use the same llama.cpp thread count
(``--threads``, default ``os.cpu_count()`` as ``EngineConfig`` does; ``Llama``
alone would use half of them). Progress objects are created before the timed
call (that is the caller's cost); attaching, updating and closing them is
inside it. The script checks that every run produced the same token count
and that the engine's greedy text equals raw's.

Usage: ``python benchmarks/overhead.py [--quick] [--model PATH]``. Writes
``benchmarks/results/overhead.json`` and ``overhead.png``.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as common

PROMPT = "List of one hundred interesting facts about the ocean:\n1."
ADAPTERS = ("none", "tqdm", "widget", "callable")
CONTENDERS = ("raw", *ADAPTERS)
TARGETS = {"none": 0.98, "tqdm": 1.0, "widget": 0.98, "callable": 0.98}


@dataclass
class Sample:
    tokens: int
    secs: float
    text: str
    engine_secs: float | None = None  # the engine's own submit-to-finish time
    fired: int | None = None  # progress callbacks seen by the callable

    @property
    def tok_per_sec(self) -> float:
        return self.tokens / self.secs if self.secs > 0 else math.nan


@dataclass
class Contender:
    name: str
    run: Callable[[], Sample]
    samples: list[Sample] = field(default_factory=list)


def make_raw(model: Path, threads: int, max_tokens: int) -> Callable[[], Sample]:
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run() -> Sample:
        llm.reset()
        start = time.perf_counter()
        out: Any = llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0)
        secs = time.perf_counter() - start
        return Sample(int(out["usage"]["completion_tokens"]), secs, str(out["choices"][0]["text"]))

    return run


def make_progress(kind: str, seen: list[int]) -> object:
    """A fresh display per run (the adapter closes it when the generation ends)."""
    if kind == "none":
        return None
    if kind == "tqdm":
        import tqdm

        return tqdm.tqdm(file=io.StringIO(), desc="generate")
    if kind == "widget":
        import ipywidgets

        return ipywidgets.IntProgress(description="generate")
    if kind == "callable":

        def on_progress(event: Any) -> None:
            seen.append(event.tokens_generated)

        return on_progress
    raise ValueError(kind)


def make_engine_runner(engine: Any, kind: str, max_tokens: int) -> Callable[[], Sample]:
    def run() -> Sample:
        seen: list[int] = []
        progress = make_progress(kind, seen)
        start = time.perf_counter()
        result = engine.complete(PROMPT, max_tokens, temperature=0, progress=progress)
        secs = time.perf_counter() - start
        fired = len(seen) if kind == "callable" else None
        return Sample(result.completion_tokens, secs, result.text, result.timings.total_secs, fired)

    return run


def main() -> int:
    parser = common.base_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per run (default 128, quick 48)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default 9, quick 3)")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (48 if args.quick else 128)
    rounds = args.rounds or (3 if args.quick else 9)
    model = common.resolve_model(args.model)
    common.quiet_llama_cpp()
    started = time.perf_counter()
    info = common.machine_info(args.threads, model)

    from oxillama_py import Engine, EngineConfig, SamplerConfig

    config = EngineConfig(model, n_threads=args.threads, sampler=SamplerConfig.greedy())
    print(f"model {model.name}, {args.threads} threads, {max_tokens} tokens, {rounds} rounds", flush=True)
    contenders = [Contender("raw", make_raw(model, args.threads, max_tokens))]
    with Engine(config) as engine:
        engine.load_model()
        contenders += [Contender(kind, make_engine_runner(engine, kind, max_tokens)) for kind in ADAPTERS]
        for contender in contenders:  # warm-up: page in the weights, build the graphs
            contender.run()
        for round_no in range(rounds):
            line = []
            for contender in common.rotated(contenders, round_no):
                sample = contender.run()
                contender.samples.append(sample)
                line.append(f"{contender.name} {sample.tok_per_sec:5.1f}")
            print(f"round {round_no + 1}/{rounds}: " + ", ".join(line), flush=True)

    common.finish_info(info, started)
    data = analyse(contenders, info, max_tokens, rounds, args.quick)
    print_table(data)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "overhead.json", data)
    plot(data, args.out / "overhead.png")
    print(f"wrote {args.out / 'overhead.json'} and {args.out / 'overhead.png'}")
    return 0 if data["all_targets_met"] else 1


def analyse(contenders: list[Contender], info: dict[str, Any], max_tokens: int, rounds: int, quick: bool) -> dict:
    by_name = {c.name: c for c in contenders}
    raw = by_name["raw"]
    raw_rates = [s.tok_per_sec for s in raw.samples]
    raw_median = common.median(raw_rates)
    raw_tokens = {s.tokens for s in raw.samples}
    raw_text = raw.samples[0].text
    results: dict[str, Any] = {}
    problems: list[str] = []
    for contender in contenders:
        rates = [s.tok_per_sec for s in contender.samples]
        entry: dict[str, Any] = {
            "tok_per_sec": common.summary(rates),
            "secs": common.summary([s.secs for s in contender.samples]),
            "completion_tokens": sorted({s.tokens for s in contender.samples}),
        }
        if contender.name != "raw":
            ratio = common.median(rates) / raw_median
            paired = [e / r for e, r in zip(rates, raw_rates, strict=True)]
            outside = [s.secs - s.engine_secs for s in contender.samples if s.engine_secs is not None]
            entry |= {
                "ratio_vs_raw": ratio,
                "paired_ratio_median": common.median(paired),
                "paired_ratios": paired,
                "target": TARGETS[contender.name],
                "verdict": common.verdict(ratio, TARGETS[contender.name]),
                # Wall time of the call not spent between submit and the worker's last token:
                # tokenizing, the portal hop, task-group set-up, delivering the end, building results.
                "outside_worker_ms_median": common.median(outside) * 1000.0,
                "text_equals_raw": all(s.text == raw_text for s in contender.samples),
            }
            if contender.name == "callable":
                entry["callbacks_fired"] = sorted({s.fired for s in contender.samples if s.fired is not None})
            if not entry["text_equals_raw"]:
                problems.append(f"{contender.name}: greedy text differs from raw create_completion")
        if {s.tokens for s in contender.samples} != raw_tokens or len(raw_tokens) != 1:
            problems.append(f"{contender.name}: token counts {entry['completion_tokens']} vs raw {sorted(raw_tokens)}")
        results[contender.name] = entry
    met = all(results[k]["verdict"] == "PASS" for k in ADAPTERS)
    warning = common.load_warning(info)
    return {
        "benchmark": "overhead",
        "mode": "quick" if quick else "default",
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "machine": info,
        "raw": "llama_cpp.Llama(n_ctx=2048, n_threads=T, n_threads_batch=T).create_completion(temperature=0)",
        "engine": "oxillama_py.Engine(EngineConfig(n_threads=T, sampler=greedy)).complete(progress=...)",
        "results": results,
        "targets": TARGETS,
        "all_targets_met": met,
        "problems": problems,
        "warning": warning,
    }


def print_table(data: dict) -> None:
    results = data["results"]
    print()
    print(f"{'contender':<10} {'tok/s med':>9} {'min':>7} {'max':>7} {'ratio':>7} {'paired':>7} {'target':>7}  verdict")
    for name in CONTENDERS:
        entry = results[name]
        rate = entry["tok_per_sec"]
        cells = f"{name:<10} {rate['median']:9.2f} {rate['min']:7.2f} {rate['max']:7.2f}"
        if name == "raw":
            print(cells)
            continue
        print(
            f"{cells} {entry['ratio_vs_raw']:7.3f} {entry['paired_ratio_median']:7.3f} "
            f"{entry['target']:7.2f}  {entry['verdict']}  (outside worker {entry['outside_worker_ms_median']:.1f} ms)"
        )
    for problem in data["problems"]:
        print(f"PROBLEM: {problem}")
    if data["warning"]:
        print(f"NOTE: {data['warning']}")


def plot(data: dict, path: Path) -> None:
    plt = common.pyplot()
    results = data["results"]
    names = list(CONTENDERS)
    medians = [results[n]["tok_per_sec"]["median"] for n in names]
    low = [m - results[n]["tok_per_sec"]["min"] for n, m in zip(names, medians, strict=True)]
    high = [results[n]["tok_per_sec"]["max"] - m for n, m in zip(names, medians, strict=True)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ["#777777"] + ["#3a7dc9"] * len(ADAPTERS)
    left.bar(names, medians, yerr=[low, high], color=colors, capsize=4)
    left.set_ylabel("tokens / s (median, min-max)")
    left.set_title(f"one greedy generation, {data['max_tokens']} tokens")
    ratios = [results[n]["ratio_vs_raw"] for n in ADAPTERS]
    bars = right.bar(ADAPTERS, ratios, color="#3a7dc9")
    for bar, name in zip(bars, ADAPTERS, strict=True):
        right.hlines(TARGETS[name], bar.get_x(), bar.get_x() + bar.get_width(), colors="#c0392b", linestyles="--")
        right.annotate(
            f"{results[name]['ratio_vs_raw']:.3f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            xytext=(0, 2),
            textcoords="offset points",
        )
    right.axhline(1.0, color="#777777", linewidth=0.8)
    lo = min([*ratios, 0.9]) - 0.05
    right.set_ylim(lo, max([*ratios, 1.05]) + 0.05)
    right.set_ylabel("engine / raw tok/s (dashed: target)")
    right.set_title("ratio to raw llama-cpp-python")
    info = data["machine"]
    fig.suptitle(
        f"oxillama_py {info['oxillama_py']} vs llama-cpp-python {info['llama_cpp_python']}, "
        f"{info['threads']} threads, {data['rounds']} rounds ({data['mode']})",
        fontsize=10,
    )
    common.save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
