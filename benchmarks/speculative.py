"""Speculative decoding against plain decoding and llama-cpp-python's prompt lookup, in one run.

Contenders, targets and how to read the numbers: ``benchmarks/README.md``. Writes ``results/speculative.json``/``.png``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import harness as h

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


def make_runners(run: h.Run) -> dict[str, Callable[[str], h.Sample]]:
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from oxillama_py import Engine, EngineConfig, SpeculativeConfig, SpeculativeEngine

    model, threads, max_tokens = run.model, run.args.threads, run.max_tokens
    target = EngineConfig(model, n_ctx=4096, n_threads=threads)
    plain = Engine(target)
    plain.load_model()
    spec = SpeculativeEngine(SpeculativeConfig(target))  # the defaults, as a user gets them
    spec.load_model()
    h.quiet_llama_cpp()
    lookup = LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=10)
    raw_lookup, raw_plain = h.llama(model, threads, 4096, draft_model=lookup), h.llama(model, threads, 4096)
    return {
        "plain": lambda prompt: h.timed_complete(plain, prompt, max_tokens, temperature=0),
        "lookup": lambda prompt: h.timed_complete(spec, prompt, max_tokens, temperature=0),
        "raw_lookup": lambda prompt: h.timed_completion(raw_lookup, prompt, max_tokens=max_tokens, temperature=0),
        "raw_plain": lambda prompt: h.timed_completion(raw_plain, prompt, max_tokens=max_tokens, temperature=0),
    }


def main() -> int:
    run = h.start("speculative", __doc__, rounds=(5, 2), max_tokens=(160, 64))
    runners = make_runners(run)
    contenders = [h.Contender(name, runners[name]) for name in CONTENDERS]
    for contender in contenders:  # warm up every contender once
        contender.run(TASKS["copying"])
    texts: dict[str, dict[str, str]] = {t: {} for t in TASKS}
    acceptance: dict[str, list[float]] = {t: [] for t in TASKS}
    for _, task, order in h.schedule(run.rounds, list(TASKS), contenders):
        for contender in order:
            sample = contender.record(task, contender.run(TASKS[task]))
            texts[task][contender.name] = sample.text
            if "result" in sample.extra and sample.extra["result"].speculative is not None:
                acceptance[task].append(sample.extra["result"].speculative.acceptance_rate)
    run.stop()
    samples = {t: {c.name: c.rates(t) for c in contenders} for t in TASKS}
    med = {t: {c: h.median(v) for c, v in per.items()} for t, per in samples.items()}
    pairs = [("copying", "lookup", "plain"), ("copying", "lookup", "raw_lookup"), ("free", "lookup", "plain")]
    pairs += [("copying", "plain", "raw_plain"), ("free", "raw_lookup", "raw_plain")]
    ratios = {f"{t}_{a}_vs_{b}": med[t][a] / med[t][b] for t, a, b in pairs}
    targets = {"copying_lookup_vs_plain": 1.8, "copying_lookup_vs_raw_lookup": 1.0, "free_lookup_vs_plain": 0.9}
    data = {
        **run.header(),
        "tasks": TASKS,
        "tok_per_sec": {t: {c: h.summary(v) for c, v in per.items()} for t, per in samples.items()},
        "median_tok_per_sec": med,
        "ratios": ratios,
        "targets": {k: h.check(ratios[k], t) for k, t in targets.items()},
        "same_text_as_plain": {t: {c: texts[t][c] == texts[t]["plain"] for c in CONTENDERS} for t in TASKS},
        "lookup_acceptance_rate": {t: h.median(v) for t, v in acceptance.items()},
        "plain_text_start": {t: texts[t]["plain"][:300] for t in TASKS},
    }
    run.report(data, [f"same text as plain: {data['same_text_as_plain']}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
