"""Single-request overhead of ``Engine.complete`` and its progress adapters against raw llama-cpp-python.

Contenders, targets, how to read the numbers: ``benchmarks/README.md``. Writes ``results/overhead.json`` and ``.png``.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness as h
from figures import overhead_rows

PROMPT = "List of one hundred interesting facts about the ocean:\n1."
ADAPTERS = ("none", "tqdm", "widget", "callable")
CONTENDERS = ("raw", *ADAPTERS)
TARGETS = {"none": 0.98, "tqdm": 1.0, "widget": 0.98, "callable": 0.98}


def make_engine_runner(engine: Any, kind: str, max_tokens: int) -> Callable[[], h.Sample]:
    import ipywidgets
    import tqdm

    def run() -> h.Sample:
        seen: list[int] = []
        progress = {  # a fresh display per run, made before the timed call (the adapter closes it at the end)
            "none": lambda: None,
            "tqdm": lambda: tqdm.tqdm(file=io.StringIO(), desc="generate"),
            "widget": lambda: ipywidgets.IntProgress(description="generate"),
            "callable": lambda: lambda event: seen.append(event.tokens_generated),
        }[kind]()
        sample = h.timed_complete(engine, PROMPT, max_tokens, temperature=0, progress=progress)
        sample.extra["fired"] = len(seen) if kind == "callable" else None
        return sample

    return run


def main() -> int:
    run = h.start("overhead", __doc__, rounds=(9, 3), max_tokens=(128, 48))
    from oxillama_py import Engine, EngineConfig, SamplerConfig

    threads = run.args.threads
    config = EngineConfig(run.model, n_threads=threads, sampler=SamplerConfig.greedy())
    llm = h.llama(run.model, threads, 2048)
    contenders = [h.Contender("raw", lambda: h.timed_completion(llm, PROMPT, max_tokens=run.max_tokens, temperature=0))]
    with Engine(config) as engine:
        engine.load_model()
        contenders += [h.Contender(kind, make_engine_runner(engine, kind, run.max_tokens)) for kind in ADAPTERS]
        for contender in contenders:  # warm-up: page in the weights, build the graphs
            contender.run()
        for _, _, order in h.schedule(run.rounds, [None], contenders):
            for contender in order:
                contender.record(None, contender.run())
    run.stop()
    data = analyse(run, contenders)
    checks = {name: h.check(data["results"][name]["ratio_vs_raw"], TARGETS[name]) for name in ADAPTERS}
    run.report(data, overhead_rows, plot, checks)
    return 0 if data["all_targets_met"] else 1


def analyse(run: h.Run, contenders: list[h.Contender]) -> dict[str, Any]:
    raw = contenders[0].samples[None]
    raw_rates = [s.tok_per_sec for s in raw]
    raw_tokens = {s.tokens for s in raw}
    results: dict[str, Any] = {}
    problems: list[str] = []
    for contender in contenders:
        samples, rates = contender.samples[None], contender.rates()
        entry: dict[str, Any] = {
            "tok_per_sec": h.summary(rates),
            "secs": h.summary([s.secs for s in samples]),
            "completion_tokens": sorted({s.tokens for s in samples}),
        }
        if contender.name != "raw":
            ratio = h.median(rates) / h.median(raw_rates)
            paired = [e / r for e, r in zip(rates, raw_rates, strict=True)]
            # Wall time of the call not spent between submit and the worker's last token:
            # tokenizing, the portal hop, task-group set-up, delivering the end, building results.
            outside = [s.secs - s.extra["result"].timings.total_secs for s in samples]
            entry |= {
                "ratio_vs_raw": ratio,
                "paired_ratio_median": h.median(paired),
                "paired_ratios": paired,
                "target": TARGETS[contender.name],
                "verdict": h.check(ratio, TARGETS[contender.name])["verdict"],
                "outside_worker_ms_median": h.median(outside) * 1000.0,
                "text_equals_raw": all(s.text == raw[0].text for s in samples),
            }
            if contender.name == "callable":
                entry["callbacks_fired"] = sorted({s.extra["fired"] for s in samples})
            if not entry["text_equals_raw"]:
                problems.append(f"{contender.name}: greedy text differs from raw create_completion")
        if {s.tokens for s in samples} != raw_tokens or len(raw_tokens) != 1:
            problems.append(f"{contender.name}: token counts {entry['completion_tokens']} vs raw {sorted(raw_tokens)}")
        results[contender.name] = entry
    return {
        **run.header(),
        "prompt": PROMPT,
        "results": results,
        "targets": TARGETS,
        "all_targets_met": all(results[k]["verdict"] == "PASS" for k in ADAPTERS),
        "problems": problems,
        "warning": h.load_warning(run.info),
    }


def plot(data: dict[str, Any], path: Path) -> None:
    plt = h.pyplot()
    results = data["results"]
    names = list(CONTENDERS)
    medians = [results[n]["tok_per_sec"]["median"] for n in names]
    low = [m - results[n]["tok_per_sec"]["min"] for n, m in zip(names, medians, strict=True)]
    high = [results[n]["tok_per_sec"]["max"] - m for n, m in zip(names, medians, strict=True)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ["#777777"] + ["#3a7dc9"] * len(ADAPTERS)
    left.bar(names, medians, yerr=[low, high], color=colors, capsize=4)
    left.set(ylabel="tokens / s (median, min-max)", title=f"one greedy generation, {data['max_tokens']} tokens")
    ratios = [results[n]["ratio_vs_raw"] for n in ADAPTERS]
    bars = right.bar(ADAPTERS, ratios, color="#3a7dc9")
    for bar, name in zip(bars, ADAPTERS, strict=True):
        right.hlines(TARGETS[name], bar.get_x(), bar.get_x() + bar.get_width(), colors="#c0392b", linestyles="--")
        h.label_bar(right, bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{results[name]['ratio_vs_raw']:.3f}")
    right.axhline(1.0, color="#777777", linewidth=0.8)
    right.set_ylim(min([*ratios, 0.9]) - 0.05, max([*ratios, 1.05]) + 0.05)
    right.set(ylabel="engine / raw tok/s (dashed: target)", title="ratio to raw llama-cpp-python")
    fig.suptitle(h.versus(data), fontsize=10)
    h.save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
