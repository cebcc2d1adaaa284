"""What a second engine in the same process costs the first, with the install the README gives (OpenMP).

Scenarios, targets and how to read the numbers: ``benchmarks/README.md``. Writes ``results/coexistence.json``/``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import harness as h

PROMPT = "Once upon a time"
SCENARIOS = (  # noqa: SIM905
    "engine_alone engine_beside_engine engine_beside_speculative engine_beside_engine_unshared raw_alone raw_beside_raw"
).split()
RATIOS = {
    "engine_beside_engine_vs_alone": ("engine_beside_engine", "engine_alone", 0.95),
    "engine_beside_speculative_vs_alone": ("engine_beside_speculative", "engine_alone", 0.95),
    "engine_beside_engine_unshared_vs_alone": ("engine_beside_engine_unshared", "engine_alone", None),
    "raw_beside_raw_vs_alone": ("raw_beside_raw", "raw_alone", None),
}


def child(scenario: str, model: Path, threads: int, max_tokens: int, repeats: int) -> dict[str, Any]:
    """One scenario in this (fresh) process: the first engine's tok/s, ``repeats`` times."""
    if scenario.startswith("raw"):
        return _raw_child(scenario, model, threads, max_tokens, repeats)
    from oxillama_py import Engine, EngineConfig, PromptLookup, SpeculativeConfig, SpeculativeEngine

    config = EngineConfig(model, n_ctx=2048, n_threads=threads, max_concurrency=1)
    first = Engine(config)
    first.load_model()
    neighbours: list[Engine] = []
    if scenario != "engine_alone":
        speculative = scenario == "engine_beside_speculative"
        neighbours.append(
            SpeculativeEngine(SpeculativeConfig(config, PromptLookup())) if speculative else Engine(config)
        )
        neighbours[0].generate(PROMPT, 8, temperature=0)
    first.generate(PROMPT, 8, temperature=0)  # warm-up
    rates = []
    for _ in range(repeats):
        result = first.complete(PROMPT, max_tokens, temperature=0)
        rates.append(result.completion_tokens / result.timings.generation_secs)
    for engine in [first, *neighbours]:
        engine.close()
    return {"tok_per_sec": rates}


def _raw_child(scenario: str, model: Path, threads: int, max_tokens: int, repeats: int) -> dict[str, Any]:
    h.quiet_llama_cpp()
    stop, ready = threading.Event(), threading.Event()

    def neighbour() -> None:  # a second model that computed once, on a thread that lives on
        llm = h.llama(model, threads, 2048)  # alive while the thread waits
        llm.create_completion(PROMPT, max_tokens=8, temperature=0)
        ready.set()
        stop.wait()

    thread = threading.Thread(target=neighbour, daemon=True)
    if scenario == "raw_beside_raw":
        thread.start()
        ready.wait()
    llm = h.llama(model, threads, 2048)
    llm.create_completion(PROMPT, max_tokens=8, temperature=0)
    rates = [h.timed_completion(llm, PROMPT, max_tokens=max_tokens, temperature=0).tok_per_sec for _ in range(repeats)]
    stop.set()
    if thread.is_alive():
        thread.join()
    return {"tok_per_sec": rates}


def run_child(scenario: str, run: h.Run) -> list[float]:
    env = dict(os.environ)
    env.pop("OXILLAMA_PY_SHARED_COMPUTE", None)
    if scenario.endswith("_unshared"):
        env["OXILLAMA_PY_SHARED_COMPUTE"] = "0"
    command = [sys.executable, __file__, "--child", scenario, "--model", str(run.model), "--threads"]
    command += [str(run.args.threads), "--max-tokens", str(run.max_tokens), "--repeats", str(run.args.repeats)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=1200)
    rates: list[float] = json.loads(out.stdout.strip().splitlines()[-1])["tok_per_sec"]
    return rates


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=2, help="generations timed in each process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def main() -> int:
    run = h.start("coexistence", __doc__, rounds=(5, 2), max_tokens=(128, 48), arguments=arguments)
    if run.args.child:
        print(json.dumps(child(run.args.child, run.model, run.args.threads, run.max_tokens, run.args.repeats)))
        return 0
    from oxillama_py.llama.compute import openmp_build

    run.info["openmp_build"] = openmp_build(run.info["llama_cpp_system_info"])
    samples: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for _, _, order in h.schedule(run.rounds, [None], SCENARIOS):
        for scenario in order:
            samples[scenario].append(h.median(run_child(scenario, run)))
            h.say(f"  {scenario:32s} {samples[scenario][-1]:7.1f} tok/s")
    run.stop()
    med = {s: h.median(v) for s, v in samples.items()}
    ratios = {name: med[a] / med[b] for name, (a, b, _) in RATIOS.items()}
    data = {
        **run.header(),
        "tok_per_sec": {s: h.summary(v) for s, v in samples.items()},
        "median_tok_per_sec": med,
        "ratios": ratios,
        "targets": {name: h.check(ratios[name], t) for name, (_, _, t) in RATIOS.items() if t is not None},
    }
    notes = [f"{name:40s} {value:5.2f}" for name, value in ratios.items() if name not in data["targets"]]
    run.report(data, notes)
    return 0 if h.all_pass(data["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
