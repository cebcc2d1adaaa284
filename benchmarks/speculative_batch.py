"""Speculation inside continuous batching against plain batching, for 1, 2, 4 and 8 concurrent requests.

Contenders, targets and how to read the numbers: ``benchmarks/README.md``. Writes ``results/speculative_batch.*``.
"""

from __future__ import annotations

import sys
import time

import harness as h

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
    run = h.start("speculative_batch", __doc__, rounds=(3, 1), max_tokens=(96, 48))
    max_tokens, threads = run.max_tokens, run.args.threads
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from oxillama_py import Engine, EngineConfig, PromptLookup

    options = {"n_ctx": 8 * 1024, "max_concurrency": 8, "prefix_cache_tokens": 0, "speculative": PromptLookup()}
    engine = Engine(EngineConfig(run.model, n_threads=threads, **options))
    engine.load_model()
    h.quiet_llama_cpp()
    lookup = LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=10)
    raw = {
        "raw_plain": h.llama(run.model, threads, 2048),
        "raw_lookup": h.llama(run.model, threads, 2048, draft_model=lookup),
    }

    def batch(name: str, prompts: list[str]) -> h.Sample:
        begin = time.perf_counter()
        results = engine.complete_batch(prompts, max_tokens, temperature=0, speculative=name == "speculative")
        secs = time.perf_counter() - begin
        drafted = sum(r.speculative.drafted for r in results if r.speculative)
        accepted = sum(r.speculative.accepted for r in results if r.speculative)
        extra = {"drafted": drafted, "accepted": accepted}
        return h.Sample(secs, [sum(r.completion_tokens for r in results)], [r.text for r in results], extra)

    def one_raw(name: str, prompt: str) -> h.Sample:
        return h.timed_completion(raw[name], prompt, max_tokens=max_tokens, temperature=0)

    batch("speculative", TASKS["copying"][:2])  # warm-up
    batch("plain", TASKS["free"][:2])
    contenders = [h.Contender(name, batch) for name in CONTENDERS]
    raw_contenders = [h.Contender(name, one_raw) for name in raw]
    same: dict[str, dict[int, bool]] = {t: {n: True for n in CONCURRENCY} for t in TASKS}
    drafts: dict[str, dict[int, list[int]]] = {t: {n: [0, 0] for n in CONCURRENCY} for t in TASKS}
    keys = [(task, n) for task in TASKS for n in CONCURRENCY]
    for r, (task, n), order in h.schedule(run.rounds, keys, contenders, lambda r, key: r + key[1]):
        texts: dict[str, list[str]] = {}
        for contender in order:
            sample = contender.record((task, n), contender.run(contender.name, TASKS[task][:n]))
            texts[contender.name] = sample.texts
            if contender.name == "speculative":
                drafts[task][n][0] += sample.extra["drafted"]
                drafts[task][n][1] += sample.extra["accepted"]
        same[task][n] &= texts["plain"] == texts["speculative"]
        if n == CONCURRENCY[-1]:  # then llama-cpp-python on the task's first prompt
            for contender in h.rotated(raw_contenders, r):
                contender.record(task, contender.run(contender.name, TASKS[task][0]))
    engine.close()
    run.stop()
    med = {t: {n: {c.name: h.median(c.rates((t, n))) for c in contenders} for n in CONCURRENCY} for t in TASKS}
    ratios = {t: {n: med[t][n]["speculative"] / med[t][n]["plain"] for n in CONCURRENCY} for t in TASKS}
    raw_med = {t: {c.name: h.median(c.rates(t)) for c in raw_contenders} for t in TASKS}
    # Each round runs plain and speculative back to back: their ratio within a round shows the spread.
    plain, spec = contenders
    paired = {
        t: {n: [s / p for s, p in zip(spec.rates((t, n)), plain.rates((t, n)), strict=True)] for n in CONCURRENCY}
        for t in TASKS
    }
    targets = {
        "copying_1_speculative_vs_plain": h.check(ratios["copying"][1], 2.0),
        **{f"free_{n}_speculative_vs_plain": h.check(ratios["free"][n], 0.98) for n in CONCURRENCY},
    }
    data = {
        **run.header(),
        "concurrency": CONCURRENCY,
        "tok_per_sec": {
            t: {str(n): {c.name: h.summary(c.rates((t, n))) for c in contenders} for n in CONCURRENCY} for t in TASKS
        },
        "median_tok_per_sec": {t: {str(n): per for n, per in by_n.items()} for t, by_n in med.items()},
        "ratios": {t: {str(n): v for n, v in per.items()} for t, per in ratios.items()},
        "paired_ratios": {t: {str(n): h.summary(v) for n, v in per.items()} for t, per in paired.items()},
        "targets": targets,
        "llama_cpp_python_one_request": raw_med,
        "one_request_speculative_vs_llama_cpp_python_lookup": {
            t: med[t][1]["speculative"] / raw_med[t]["raw_lookup"] for t in TASKS
        },
        "same_text_as_plain": {t: {str(n): v for n, v in per.items()} for t, per in same.items()},
        "acceptance_rate": {t: {str(n): a / d if d else 0.0 for n, (d, a) in per.items()} for t, per in drafts.items()},
        "drafted_tokens": {t: {str(n): d for n, (d, _) in per.items()} for t, per in drafts.items()},
    }
    spreads = {t: {n: f"{min(v):.2f}-{max(v):.2f}" for n, v in per.items()} for t, per in paired.items()}
    notes = [
        f"llama-cpp-python, one request: {raw_med}",
        f"same text as plain: {data['same_text_as_plain']}",
        f"speculative / plain within a round, min-max: {spreads}",
    ]
    run.report(data, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
