"""What a second engine in the same process costs the first, with the install the README gives.

pip's default llama-cpp-python build uses OpenMP. libgomp keeps a team of
threads for every thread that has computed, and once a process holds more of
them than it has cores it stops spinning at its barriers: one model's decoding
slows down for as long as another thread that computed lives. oxillama_py
computes on one process-wide thread in such builds (``oxillama_py.llama.compute``).

Each scenario runs in a fresh process (libgomp's state lives as long as the
process), rounds interleaved, and reports engine A's greedy tok/s (``N`` tokens,
``Once upon a time``, ``n_threads=T`` everywhere):

* ``engine_alone``: A alone in its process;
* ``engine_beside_engine``: A, after a second ``Engine`` B was loaded and generated
  once (B then idles, as a second model of a web backend does between requests);
* ``engine_beside_speculative``: the same with a ``SpeculativeEngine`` (prompt lookup) as B;
* ``engine_beside_engine_unshared``: as ``engine_beside_engine`` with
  ``OXILLAMA_PY_SHARED_COMPUTE=0``, i.e. each engine computing on its own thread
  (what the library did before);
* ``raw_alone`` / ``raw_beside_raw``: the same for raw llama-cpp-python, a second
  ``Llama`` having generated once in a thread that stays alive.

Ratios: each ``beside`` over its ``alone``. Target: ``engine_beside_engine /
engine_alone >= 0.95`` (and the same for the speculative neighbour). Writes
``results/coexistence.json`` and ``results/coexistence.png``. The JSON records
whether the build uses OpenMP; without OpenMP there is nothing to fix and every
ratio is about 1.

Run: ``python benchmarks/coexistence.py [--quick] [--model PATH] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common

PROMPT = "Once upon a time"
SCENARIOS = [
    "engine_alone",
    "engine_beside_engine",
    "engine_beside_speculative",
    "engine_beside_engine_unshared",
    "raw_alone",
    "raw_beside_raw",
]
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
        second: Engine
        if scenario == "engine_beside_speculative":
            second = SpeculativeEngine(SpeculativeConfig(config, PromptLookup()))
        else:
            second = Engine(config)
        second.generate(PROMPT, 8, temperature=0)
        neighbours.append(second)
    first.generate(PROMPT, 8, temperature=0)  # warm-up
    rates = []
    for _ in range(repeats):
        result = first.complete(PROMPT, max_tokens, temperature=0)
        rates.append(result.completion_tokens / result.timings.generation_secs)
    for engine in [first, *neighbours]:
        engine.close()
    return {"tok_per_sec": rates}


def _raw_child(scenario: str, model: Path, threads: int, max_tokens: int, repeats: int) -> dict[str, Any]:
    from llama_cpp import Llama

    _common.quiet_llama_cpp()
    stop = threading.Event()
    ready = threading.Event()

    def neighbour() -> None:  # a second model that computed once, on a thread that lives on
        llm = Llama(str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
        llm.create_completion(PROMPT, max_tokens=8, temperature=0)
        ready.set()
        stop.wait()

    thread = None
    if scenario == "raw_beside_raw":
        thread = threading.Thread(target=neighbour, daemon=True)
        thread.start()
        ready.wait()
    llm = Llama(str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.create_completion(PROMPT, max_tokens=8, temperature=0)
    rates = []
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        out = llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0)
        tokens = out["usage"]["completion_tokens"]
        rates.append(tokens / (time.perf_counter() - start))
    stop.set()
    if thread is not None:
        thread.join()
    return {"tok_per_sec": rates}


def run_child(scenario: str, args: Any, model: Path, max_tokens: int, repeats: int) -> list[float]:
    env = dict(os.environ)
    env.pop("OXILLAMA_PY_SHARED_COMPUTE", None)
    if scenario.endswith("_unshared"):
        env["OXILLAMA_PY_SHARED_COMPUTE"] = "0"
    command = [
        sys.executable,
        __file__,
        "--child",
        scenario,
        "--model",
        str(model),
        "--threads",
        str(args.threads),
        "--max-tokens",
        str(max_tokens),
        "--repeats",
        str(repeats),
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=1200)
    rates: list[float] = json.loads(out.stdout.strip().splitlines()[-1])["tok_per_sec"]
    return rates


def main() -> int:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per generation (default 128, quick 48)")
    parser.add_argument("--rounds", type=int, default=None, help="processes per scenario (default 5, quick 2)")
    parser.add_argument("--repeats", type=int, default=2, help="generations timed in each process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = _common.resolve_model(args.model)
    max_tokens = args.max_tokens or (48 if args.quick else 128)
    if args.child:
        print(json.dumps(child(args.child, model, args.threads, max_tokens, args.repeats)))
        return 0
    rounds = args.rounds or (2 if args.quick else 5)
    info = _common.machine_info(args.threads, model)
    from oxillama_py.llama.compute import openmp_build

    info["openmp_build"] = openmp_build(info["llama_cpp_system_info"])
    started = time.perf_counter()
    samples: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for r in range(rounds):
        for scenario in _common.rotated(SCENARIOS, r):
            rates = run_child(scenario, args, model, max_tokens, args.repeats)
            samples[scenario].append(_common.median(rates))
            print(f"round {r + 1}/{rounds} {scenario:32s} {samples[scenario][-1]:7.1f} tok/s", file=sys.stderr)
    _common.finish_info(info, started)
    data = analyse(samples, info, max_tokens, rounds, args.quick)
    _common.write_json(args.out / "coexistence.json", data)
    plot(data, args.out / "coexistence.png")
    print_table(data)
    return 0 if all(t["verdict"] == "PASS" for t in data["targets"].values()) else 1


def analyse(
    samples: dict[str, list[float]], info: dict[str, Any], max_tokens: int, rounds: int, quick: bool
) -> dict[str, Any]:
    med = {s: _common.median(v) for s, v in samples.items()}
    ratios = {name: med[a] / med[b] for name, (a, b, _) in RATIOS.items()}
    return {
        "benchmark": "coexistence",
        "mode": "quick" if quick else "default",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "machine": info,
        "load_warning": _common.load_warning(info),
        "tok_per_sec": {s: _common.summary(v) for s, v in samples.items()},
        "median_tok_per_sec": med,
        "ratios": ratios,
        "targets": {
            name: {"value": ratios[name], "target": target, "verdict": _common.verdict(ratios[name], target)}
            for name, (_, _, target) in RATIOS.items()
            if target is not None
        },
    }


def print_table(data: dict[str, Any]) -> None:
    build = "OpenMP" if data["machine"]["openmp_build"] else "no OpenMP"
    print(f"\nfirst engine's greedy tok/s, {data['max_tokens']} tokens, median of {data['rounds']} processes ({build})")
    for scenario, value in data["median_tok_per_sec"].items():
        print(f"{scenario:32s} {value:7.1f}")
    print()
    for name, value in data["ratios"].items():
        target = data["targets"].get(name)
        tail = f"(target >= {target['target']})  {target['verdict']}" if target else ""
        print(f"{name:40s} {value:5.2f}  {tail}")
    if data["load_warning"]:
        print("note:", data["load_warning"])


def plot(data: dict[str, Any], path: Path) -> None:
    plt = _common.pyplot()
    med = data["median_tok_per_sec"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(med)
    colours = ["tab:blue" if n.startswith("engine") else "tab:gray" for n in names]
    ax.barh(names[::-1], [med[n] for n in names][::-1], color=colours[::-1])
    ax.set_xlabel("first model's greedy tokens per second")
    build = "OpenMP build" if data["machine"]["openmp_build"] else "build without OpenMP"
    ax.set_title(f"A second model in the same process (llama-cpp-python {build})")
    _common.save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
