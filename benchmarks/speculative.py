"""Speculative decoding against plain decoding and llama-cpp-python's prompt lookup, in one run.

What it measures: greedy tokens per second on the default model, on two tasks,

* ``copying``: rewrite a passage that is already in the prompt (drafts are
  often right; this is where speculation pays),
* ``free``: free-form text (no passage to copy; speculation must not cost much when
  drafts fail, though the model's greedy text turns repetitive after a few dozen
  tokens and lookup then finds drafts in it; the JSON records the acceptance rate
  and the start of the text),

for four contenders, interleaved round by round so that machine noise hits all
of them alike:

* ``plain``: ``Engine.complete`` (one token per target decode),
* ``lookup``: ``SpeculativeEngine(SpeculativeConfig(target))``, every setting at its
  default (prompt lookup, ``max_ngram=3``, drafts of up to ``num_pred_tokens=16``),
* ``raw_lookup``: ``Llama(draft_model=LlamaPromptLookupDecoding(max_ngram_size=3,
  num_pred_tokens=10)).create_completion`` (reset before each run),
* ``raw_plain``: ``Llama.create_completion`` without a drafter.

Targets (issues 5 and 9): ``lookup / plain >= 1.8`` on copying, with the defaults, ``lookup > raw_lookup`` on
copying, ``lookup / plain >= 0.9`` on free-form text. Writes
``results/speculative.json`` and ``results/speculative.png``.

Run: ``python benchmarks/speculative.py [--quick] [--model PATH]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common

PASSAGE = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, "
    "the members agreed to fund the children's reading room, to extend the opening hours on weekends, "
    "and to replace the old heating system before the winter. The chair thanked the volunteers who "
    "had organised the book sale, which raised more than four thousand pounds for the project."
)
TASKS = {
    "copying": f"Copy the text exactly.\nText: {PASSAGE}\nCopy: {PASSAGE}\nText: {PASSAGE}\nCopy:",
    "free": "The history of the printing press began in",
}
CONTENDERS = ["plain", "lookup", "raw_lookup", "raw_plain"]

# tokens, seconds, text, and the speculative statistics (None for plain contenders)
Runner = Callable[[str], tuple[int, float, str, Any]]


def make_runners(model: Path, threads: int, max_tokens: int) -> dict[str, Runner]:
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from oxillama_py import Engine, EngineConfig, SpeculativeConfig, SpeculativeEngine

    target = EngineConfig(model, n_ctx=4096, n_threads=threads)
    plain = Engine(target)
    plain.load_model()
    spec = SpeculativeEngine(SpeculativeConfig(target))  # the defaults, as a user gets them
    spec.load_model()
    _common.quiet_llama_cpp()
    raw_lookup = Llama(
        str(model),
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        draft_model=LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=10),
        verbose=False,
    )
    raw_plain = Llama(str(model), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)

    def engine_runner(engine: Any) -> Runner:
        def run(prompt: str) -> tuple[int, float, str, Any]:
            start = time.perf_counter()
            result = engine.complete(prompt, max_tokens, temperature=0)
            return result.completion_tokens, time.perf_counter() - start, result.text, result.speculative

        return run

    def raw_runner(llm: Any) -> Runner:
        def run(prompt: str) -> tuple[int, float, str, Any]:
            llm.reset()
            start = time.perf_counter()
            out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0)
            secs = time.perf_counter() - start
            return int(out["usage"]["completion_tokens"]), secs, str(out["choices"][0]["text"]), None

        return run

    return {
        "plain": engine_runner(plain),
        "lookup": engine_runner(spec),
        "raw_lookup": raw_runner(raw_lookup),
        "raw_plain": raw_runner(raw_plain),
    }


def main() -> int:
    parser = _common.base_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per generation (default 160, quick 64)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 2)")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (64 if args.quick else 160)
    rounds = args.rounds or (2 if args.quick else 5)
    model = _common.resolve_model(args.model)
    info = _common.machine_info(args.threads, model)
    started = time.perf_counter()
    runners = make_runners(model, args.threads, max_tokens)
    for runner in runners.values():  # warm up every contender once
        runner(TASKS["copying"])
    samples: dict[str, dict[str, list[float]]] = {t: {c: [] for c in CONTENDERS} for t in TASKS}
    texts: dict[str, dict[str, str]] = {t: {} for t in TASKS}
    acceptance: dict[str, list[float]] = {t: [] for t in TASKS}
    for r in range(rounds):
        for task, prompt in TASKS.items():
            for name in _common.rotated(CONTENDERS, r):
                tokens, secs, text, stats = runners[name](prompt)
                samples[task][name].append(tokens / secs)
                texts[task][name] = text
                if stats is not None:
                    acceptance[task].append(stats.acceptance_rate)
                print(f"round {r + 1}/{rounds} {task:8s} {name:11s} {tokens / secs:7.1f} tok/s", file=sys.stderr)
    _common.finish_info(info, started)
    data = analyse(samples, texts, acceptance, info, max_tokens, rounds, args.quick)
    _common.write_json(args.out / "speculative.json", data)
    plot(data, args.out / "speculative.png")
    print_table(data)
    return 0


def analyse(
    samples: dict[str, dict[str, list[float]]],
    texts: dict[str, dict[str, str]],
    acceptance: dict[str, list[float]],
    info: dict[str, Any],
    max_tokens: int,
    rounds: int,
    quick: bool,
) -> dict[str, Any]:
    med = {t: {c: _common.median(v) for c, v in per.items()} for t, per in samples.items()}
    ratios = {
        "copying_lookup_vs_plain": med["copying"]["lookup"] / med["copying"]["plain"],
        "copying_lookup_vs_raw_lookup": med["copying"]["lookup"] / med["copying"]["raw_lookup"],
        "free_lookup_vs_plain": med["free"]["lookup"] / med["free"]["plain"],
        "copying_plain_vs_raw_plain": med["copying"]["plain"] / med["copying"]["raw_plain"],
        "free_raw_lookup_vs_raw_plain": med["free"]["raw_lookup"] / med["free"]["raw_plain"],
    }
    targets = {
        "copying_lookup_vs_plain": (ratios["copying_lookup_vs_plain"], 1.8),
        "copying_lookup_vs_raw_lookup": (ratios["copying_lookup_vs_raw_lookup"], 1.0),
        "free_lookup_vs_plain": (ratios["free_lookup_vs_plain"], 0.9),
    }
    return {
        "benchmark": "speculative",
        "mode": "quick" if quick else "default",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "tasks": TASKS,
        "machine": info,
        "load_warning": _common.load_warning(info),
        "tok_per_sec": {t: {c: _common.summary(v) for c, v in per.items()} for t, per in samples.items()},
        "median_tok_per_sec": med,
        "ratios": ratios,
        "targets": {k: {"value": v, "target": t, "verdict": _common.verdict(v, t)} for k, (v, t) in targets.items()},
        "same_text_as_plain": {t: {c: texts[t][c] == texts[t]["plain"] for c in CONTENDERS} for t in TASKS},
        "lookup_acceptance_rate": {t: _common.median(v) for t, v in acceptance.items()},
        "plain_text_start": {t: texts[t]["plain"][:300] for t in TASKS},
    }


def print_table(data: dict[str, Any]) -> None:
    med = data["median_tok_per_sec"]
    print(f"\nspeculative decoding, greedy, {data['max_tokens']} tokens, median of {data['rounds']} rounds (tok/s)")
    print(f"{'task':10s}" + "".join(f"{c:>12s}" for c in CONTENDERS))
    for task, per in med.items():
        print(f"{task:10s}" + "".join(f"{per[c]:12.1f}" for c in CONTENDERS))
    print()
    for name, t in data["targets"].items():
        print(f"{name:32s} {t['value']:6.2f}  (target >= {t['target']})  {t['verdict']}")
    print("same text as plain:", data["same_text_as_plain"])
    print("lookup acceptance rate:", {t: round(v, 2) for t, v in data["lookup_acceptance_rate"].items()})
    if data["load_warning"]:
        print("note:", data["load_warning"])


def plot(data: dict[str, Any], path: Path) -> None:
    plt = _common.pyplot()
    med = data["median_tok_per_sec"]
    tasks = list(med)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.2
    for i, name in enumerate(CONTENDERS):
        xs = [j + (i - 1.5) * width for j in range(len(tasks))]
        ax.bar(xs, [med[t][name] for t in tasks], width, label=name)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel("tokens per second (greedy)")
    ax.set_title("Speculative decoding: oxillama_py vs llama-cpp-python (Gemma 3 270M Q4_K_M)")
    ax.legend()
    _common.save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
