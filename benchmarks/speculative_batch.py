"""Speculation inside continuous batching against plain batching, for 1, 2, 4 and 8 concurrent requests, in one run.

What it measures: aggregate greedy tokens per second of ``N`` concurrent
requests (``complete_batch`` of ``N`` distinct prompts) on one
``AsyncEngine``-backed ``Engine`` with ``EngineConfig(speculative=PromptLookup())``
and 8 slots, on two workloads:

* ``copying``: each request rewrites a passage that is already in its prompt
  (prompt lookup's drafts are often right),
* ``free``: free-form text (drafts are rarer and fail more often),

for two contenders, interleaved round by round on the same engine so that
machine noise hits both alike:

* ``plain``: ``speculative=False`` on every request (plain continuous batching),
* ``speculative``: the engine's default (drafts where the cost model says they pay).

The prefix cache is off, so every round prefills the same way. As a reference
for one request, llama-cpp-python's own ``Llama.create_completion`` is timed
too, plain and with ``LlamaPromptLookupDecoding`` (it serves one request at a
time, so only ``N = 1``).

Targets (issue 15): ``speculative / plain >= 2.0`` for one request on copying;
``speculative / plain >= 0.97`` for 8 requests on free text. Writes
``results/speculative_batch.json`` and ``results/speculative_batch.png``.

Run: ``python benchmarks/speculative_batch.py [--quick] [--model PATH]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import _common

PASSAGES = [
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, the members "
    "agreed to fund the children's reading room and to extend the opening hours on weekends.",
    "Our delivery van leaves the depot at seven every morning. It stops first at the bakery on Mill Lane, then at "
    "the school, and it is back before noon unless the bridge on the ring road is closed.",
    "To reset the router, hold the small button on the back for ten seconds until the light turns amber. Wait two "
    "minutes, then connect again with the password printed on the label underneath.",
    "The museum's new wing opens in March. It will hold the collection of maps donated by the Harrow family, "
    "together with the telescopes that the observatory lent for the first year.",
    "Please bring a packed lunch, sturdy shoes and a waterproof coat. The walk follows the river for six miles and "
    "returns through the woods, where the path can be muddy after rain.",
    "The recipe needs two cups of flour, one egg, a pinch of salt and enough milk to make a smooth batter. Let it "
    "rest for an hour before you cook the pancakes in a hot pan.",
    "Every new account starts with a free month. After that the plan costs nine pounds a month, and it can be "
    "cancelled at any time from the settings page without a fee.",
    "The ferry to the island runs every two hours in summer and twice a day in winter. Cars must be booked in "
    "advance, but foot passengers can buy a ticket at the harbour office.",
]
FREE = [
    "The history of the printing press began in",
    "Once upon a time, in a village by the sea,",
    "The most important thing about learning a language is",
    "In the year 2050, cities will",
    "My favourite season is autumn because",
    "The old lighthouse keeper looked at the storm and",
    "Scientists have long wondered why",
    "The best way to start a small business is",
]


def copying(passage: str) -> str:
    return f"Copy the text exactly.\nText: {passage}\nCopy: {passage}\nText: {passage}\nCopy:"


TASKS = {"copying": [copying(p) for p in PASSAGES], "free": FREE}
CONCURRENCY = [1, 2, 4, 8]
CONTENDERS = ["plain", "speculative"]


def main() -> int:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 96, quick 48)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (48 if args.quick else 96)
    rounds = args.rounds or (1 if args.quick else 3)
    model = _common.resolve_model(args.model)
    info = _common.machine_info(args.threads, model)
    started = time.perf_counter()

    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from oxillama_py import Engine, EngineConfig, PromptLookup

    config = EngineConfig(
        model,
        n_ctx=8 * 1024,
        n_threads=args.threads,
        max_concurrency=8,
        prefix_cache_tokens=0,
        speculative=PromptLookup(),
    )
    engine = Engine(config)
    engine.load_model()
    _common.quiet_llama_cpp()
    raw = {
        "raw_plain": Llama(str(model), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False),
        "raw_lookup": Llama(
            str(model),
            n_ctx=2048,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            draft_model=LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=10),
            verbose=False,
        ),
    }

    def run(name: str, prompts: list[str]) -> tuple[float, list[str], int, int]:
        begin = time.perf_counter()
        results = engine.complete_batch(prompts, max_tokens, temperature=0, speculative=name == "speculative")
        secs = time.perf_counter() - begin
        tokens = sum(r.completion_tokens for r in results)
        drafted = sum(r.speculative.drafted for r in results if r.speculative)
        accepted = sum(r.speculative.accepted for r in results if r.speculative)
        return tokens / secs, [r.text for r in results], drafted, accepted

    def run_raw(name: str, prompt: str) -> float:
        llm = raw[name]
        llm.reset()
        begin = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0)
        return int(out["usage"]["completion_tokens"]) / (time.perf_counter() - begin)

    run("speculative", TASKS["copying"][:2])  # warm-up
    run("plain", TASKS["free"][:2])
    samples: dict[str, dict[int, dict[str, list[float]]]] = {
        t: {n: {c: [] for c in CONTENDERS} for n in CONCURRENCY} for t in TASKS
    }
    raw_samples: dict[str, dict[str, list[float]]] = {t: {name: [] for name in raw} for t in TASKS}
    same: dict[str, dict[int, bool]] = {t: {n: True for n in CONCURRENCY} for t in TASKS}
    drafts: dict[str, dict[int, list[int]]] = {t: {n: [0, 0] for n in CONCURRENCY} for t in TASKS}
    for r in range(rounds):
        for task, prompts in TASKS.items():
            for n in CONCURRENCY:
                texts: dict[str, list[str]] = {}
                for name in _common.rotated(CONTENDERS, r + n):
                    rate, texts[name], drafted, accepted = run(name, prompts[:n])
                    samples[task][n][name].append(rate)
                    if name == "speculative":
                        drafts[task][n][0] += drafted
                        drafts[task][n][1] += accepted
                    print(f"round {r + 1}/{rounds} {task:8s} N={n} {name:12s} {rate:7.1f} tok/s", file=sys.stderr)
                same[task][n] &= texts["plain"] == texts["speculative"]
            for name in _common.rotated(list(raw), r):
                raw_samples[task][name].append(run_raw(name, prompts[0]))
    engine.close()
    _common.finish_info(info, started)
    data = analyse(samples, raw_samples, same, drafts, info, max_tokens, rounds, args.quick, engine_points(engine))
    _common.write_json(args.out / "speculative_batch.json", data)
    plot(data, args.out / "speculative_batch.png")
    print_table(data)
    return 0


def engine_points(engine: Any) -> dict[str, float]:
    worker = engine.async_engine()._life.worker
    cost = getattr(worker, "cost", None) if worker is not None else None
    return {str(n): s for n, s in cost.points().items()} if cost is not None else {}


def analyse(
    samples: dict[str, dict[int, dict[str, list[float]]]],
    raw_samples: dict[str, dict[str, list[float]]],
    same: dict[str, dict[int, bool]],
    drafts: dict[str, dict[int, list[int]]],
    info: dict[str, Any],
    max_tokens: int,
    rounds: int,
    quick: bool,
    cost_points: dict[str, float],
) -> dict[str, Any]:
    med = {
        t: {n: {c: _common.median(v) for c, v in per.items()} for n, per in by_n.items()} for t, by_n in samples.items()
    }
    ratios = {t: {n: med[t][n]["speculative"] / med[t][n]["plain"] for n in CONCURRENCY} for t in TASKS}
    raw_med = {t: {name: _common.median(v) for name, v in per.items()} for t, per in raw_samples.items()}
    targets = {
        "copying_1_speculative_vs_plain": (ratios["copying"][1], 2.0),
        "free_8_speculative_vs_plain": (ratios["free"][8], 0.97),
    }
    return {
        "benchmark": "speculative_batch",
        "mode": "quick" if quick else "default",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "machine": info,
        "load_warning": _common.load_warning(info),
        "tok_per_sec": {
            t: {str(n): {c: _common.summary(v) for c, v in per.items()} for n, per in by_n.items()}
            for t, by_n in samples.items()
        },
        "median_tok_per_sec": {t: {str(n): per for n, per in by_n.items()} for t, by_n in med.items()},
        "ratios": {t: {str(n): v for n, v in per.items()} for t, per in ratios.items()},
        "targets": {k: {"value": v, "target": t, "verdict": _common.verdict(v, t)} for k, (v, t) in targets.items()},
        "llama_cpp_python_one_request": raw_med,
        "one_request_speculative_vs_llama_cpp_python_lookup": {
            t: med[t][1]["speculative"] / raw_med[t]["raw_lookup"] for t in TASKS
        },
        "same_text_as_plain": {t: {str(n): v for n, v in per.items()} for t, per in same.items()},
        "acceptance_rate": {
            t: {str(n): (a / d if d else 0.0) for n, (d, a) in per.items()} for t, per in drafts.items()
        },
        "drafted_tokens": {t: {str(n): d for n, (d, _) in per.items()} for t, per in drafts.items()},
        "step_cost_seconds": cost_points,
    }


def print_table(data: dict[str, Any]) -> None:
    med = data["median_tok_per_sec"]
    print(f"\nspeculation inside the batch, greedy, {data['max_tokens']} tokens a request (aggregate tok/s)")
    print(f"{'task':9s}{'N':>3s}{'plain':>10s}{'spec':>10s}{'ratio':>8s}{'drafted':>9s}{'accepted':>10s}")
    for task, by_n in med.items():
        for n, per in by_n.items():
            ratio = data["ratios"][task][n]
            rate = data["acceptance_rate"][task][n]
            drafted = data["drafted_tokens"][task][n]
            print(f"{task:9s}{n:>3s}{per['plain']:10.1f}{per['speculative']:10.1f}{ratio:8.2f}{drafted:9d}{rate:10.0%}")
    print(
        "\nllama-cpp-python, one request:",
        {t: {k: round(v, 1) for k, v in per.items()} for t, per in data["llama_cpp_python_one_request"].items()},
    )
    for name, t in data["targets"].items():
        print(f"{name:34s} {t['value']:6.2f}  (target >= {t['target']})  {t['verdict']}")
    print("same text as plain:", data["same_text_as_plain"])
    if data["load_warning"]:
        print("note:", data["load_warning"])


def plot(data: dict[str, Any], path: Path) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, task in zip(axes, TASKS, strict=True):
        per = data["median_tok_per_sec"][task]
        xs = list(range(len(CONCURRENCY)))
        width = 0.38
        for i, name in enumerate(CONTENDERS):
            ax.bar([x + (i - 0.5) * width for x in xs], [per[str(n)][name] for n in CONCURRENCY], width, label=name)
        for x, n in zip(xs, CONCURRENCY, strict=True):
            ratio = data["ratios"][task][str(n)]
            top = max(per[str(n)].values())
            ax.text(x, top * 1.02, f"{ratio:.2f}x", ha="center", fontsize=9)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{n} request{'s' if n > 1 else ''}" for n in CONCURRENCY])
        ax.set_title(f"{task} ({data['max_tokens']} tokens a request)")
        ax.set_ylabel("aggregate tok/s")
    axes[0].legend()
    fig.suptitle("Speculation inside continuous batching (prompt lookup, greedy)")
    fig.tight_layout()
    _common.save_figure(fig, path, 120)


if __name__ == "__main__":
    sys.exit(main())
