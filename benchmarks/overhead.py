"""Single-request overhead of ``Engine.complete`` and its progress adapters against raw llama-cpp-python.

Contenders, targets, how to read the numbers: ``benchmarks/README.md``. Writes ``results/overhead.json`` and ``.png``.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

import harness as h

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
    run.report(data)
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
    }


if __name__ == "__main__":
    sys.exit(main())
