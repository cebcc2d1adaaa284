"""Structured output: constrained against unconstrained decoding, and against llama-cpp-python's ``LlamaGrammar``.

Contenders, targets and how to read the numbers: ``benchmarks/README.md``. Writes ``results/structured.json``/``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import harness as h

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 48},
        "author": {"type": "string", "maxLength": 32},
        "year": {"type": "integer", "minimum": 1800, "maximum": 2025},
        "pages": {"type": "integer", "minimum": 20, "maximum": 2000},
        "genres": {
            "type": "array",
            "items": {"enum": ["fiction", "mystery", "science", "history", "romance", "fantasy", "travel", "poetry"]},
            "minItems": 1,
            "maxItems": 3,
        },
        "summary": {"type": "string", "maxLength": 200},
    },
    "required": ["title", "author", "year", "pages", "genres", "summary"],
}
SUBJECTS = (  # noqa: SIM905
    "a lighthouse keeper; a stolen violin; the first colony on Mars; a family bakery in Lyon; "
    "a detective who cannot sleep; the last dragon; a voyage up the Amazon; two rival chess players"
).split("; ")
PROMPT_TEMPLATE = (
    "A library catalogue record for a novel about {subject}, written as one JSON object with the keys "
    "title, author, year, pages, genres and summary.\n```json\n"
)
CAP, SEED = 320, 1234  # max_tokens of a constrained call; the sampled scenario's seed
SAMPLED = {"temperature": 1.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
SCENARIOS = ("one_greedy", "one_sampled", "eight_greedy")
SINGLE = ("one_greedy", "one_sampled")
CONTENDERS = ("ox_free", "ox_json", "ox_gbnf", "raw_json", "raw_free")
CONSTRAINED = ("ox_json", "ox_gbnf", "raw_json")  # validated; only ox_json's must be (the GBNF is looser)
TARGET_VS_FREE = {"one_greedy": 0.97, "eight_greedy": 0.97, "one_sampled": 0.9}
TARGET_VS_RAW = 1.0


@dataclass
class Scenario:
    name: str
    prompts: list[str]
    sampling: dict[str, Any]  # temperature etc.; a seed when sampled
    free_tokens: list[int] = field(default_factory=list)  # max_tokens of each unconstrained call, from the warm-up


def scenario_list() -> list[Scenario]:
    prompts = [PROMPT_TEMPLATE.format(subject=s) for s in SUBJECTS]
    greedy = {"temperature": 0.0}
    return [
        Scenario("one_greedy", prompts[:1], greedy),
        Scenario("one_sampled", prompts[:1], {**SAMPLED, "seed": SEED}),
        Scenario("eight_greedy", prompts[:8], greedy),
    ]


def make_ox(engine: Any, constraint: dict[str, Any]) -> Callable[[Scenario], h.Sample]:
    def run(scenario: Scenario) -> h.Sample:
        # A call per prompt, at once (they batch); a free one stops where its JSON did: the same batch shapes.
        budgets = [CAP] * len(scenario.prompts) if constraint else scenario.free_tokens
        start = time.perf_counter()
        with ThreadPoolExecutor(len(scenario.prompts)) as pool:
            calls = zip(scenario.prompts, budgets, strict=True)
            results = list(pool.map(lambda c: engine.complete(*c, **scenario.sampling, **constraint), calls))
        secs = time.perf_counter() - start
        finish = [str(r.finish_reason) for r in results]
        return h.Sample(secs, [r.completion_tokens for r in results], [r.text for r in results], {"finish": finish})

    return run


def make_raw(llm: Any, grammar: Any) -> Callable[[Scenario], h.Sample]:
    def run(scenario: Scenario) -> h.Sample:
        max_tokens = CAP if grammar is not None else scenario.free_tokens[0]
        texts, counts, finish = [], [], []
        start = time.perf_counter()
        for prompt in scenario.prompts:
            llm.reset()
            out: Any = llm.create_completion(prompt, max_tokens=max_tokens, grammar=grammar, **scenario.sampling)
            texts.append(str(out["choices"][0]["text"]))
            counts.append(int(out["usage"]["completion_tokens"]))
            finish.append(str(out["choices"][0]["finish_reason"]))
        secs = time.perf_counter() - start
        return h.Sample(secs, counts, texts, {"finish": finish})

    return run


def profile_constrained(engine: Any, scenarios: list[Scenario]) -> dict[str, Any]:
    """One untimed ``ox_json`` run per scenario, timing llguidance's mask (``guidance.Matcher.mask``) a token."""
    from oxillama_py.llama import guidance

    cls, out, mask, spent = guidance.Matcher, {}, guidance.Matcher.mask, [0.0, 0]

    def timed_mask(self: Any) -> None:
        start = time.perf_counter()
        mask(self)
        spent[0], spent[1] = spent[0] + time.perf_counter() - start, spent[1] + 1

    cls.mask = timed_mask  # type: ignore[method-assign]
    try:
        for scenario in scenarios:
            spent[:] = [0.0, 0]
            make_ox(engine, {"json_schema": SCHEMA})(scenario)
            out[scenario.name] = {"masks": spent[1], "mask_us_per_token": 1e6 * spent[0] / max(1, spent[1])}
    finally:
        cls.mask = mask  # type: ignore[method-assign]
    return out


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-rounds", type=int, help="rounds of the 8-request scenario (default 5, quick 1)")


def main() -> int:
    run = h.start("structured", __doc__, rounds=(5, 1), arguments=arguments)
    rounds = run.rounds
    batch_rounds = min(rounds, run.args.batch_rounds or (1 if run.args.quick else 5))
    threads = run.args.threads
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from oxillama_py import Engine, EngineConfig

    gbnf = json_schema_to_gbnf(json.dumps(SCHEMA))  # llama-cpp-python's own grammar for the schema
    scenarios = scenario_list()
    llm = h.llama(run.model, threads, 2048)
    with Engine(EngineConfig(run.model, n_threads=threads)) as engine:
        engine.load_model()
        contenders = [
            h.Contender("ox_free", make_ox(engine, {})),
            h.Contender("ox_json", make_ox(engine, {"json_schema": SCHEMA})),
            h.Contender("ox_gbnf", make_ox(engine, {"grammar": gbnf})),  # the very grammar llama-cpp-python runs
            h.Contender("raw_json", make_raw(llm, LlamaGrammar.from_string(gbnf, verbose=False))),
            h.Contender("raw_free", make_raw(llm, None)),
        ]
        ox_json = contenders[1]

        def takes(contender: h.Contender, scenario: Scenario) -> bool:
            return contender.name not in ("raw_free", "ox_gbnf") or scenario.name in SINGLE

        for scenario in scenarios:  # warm-up; ox_json's lengths size the unconstrained calls
            warm = ox_json.run(scenario)
            scenario.free_tokens = [max(1, n) for n in warm.per_sequence]
            h.say(f"warm-up {scenario.name}: ox_json {warm.per_sequence} tokens, {warm.extra['finish']}")
            for contender in contenders:
                # llama-cpp-python decodes 8 prompts one by one: the one-request warm-up did it
                raw_batch = contender.name.startswith("raw") and len(scenario.prompts) > 1
                if contender is not ox_json and takes(contender, scenario) and not raw_batch:
                    contender.run(scenario)
        for round_no, scenario, order in h.schedule(rounds, scenarios, contenders):
            if scenario.name == "eight_greedy" and round_no >= batch_rounds:
                continue
            slow = round_no and scenario.name == "eight_greedy"  # llama-cpp-python's 8 in a row: timed once
            for contender in (c for c in order if takes(c, scenario) and not (slow and c.name == "raw_json")):
                contender.record(scenario.name, contender.run(scenario))
        try:
            profile = profile_constrained(engine, scenarios)
        except AttributeError as exc:  # the matcher's internals moved: the timed results stand without it
            profile = {"unavailable": str(exc)}
    run.stop()
    data = analyse(run, contenders, scenarios, batch_rounds=batch_rounds, gbnf=gbnf, profile=profile)
    notes = [f"valid JSON: {data['validation']}", f"greedy texts: {data['same_text']}", f"masks: {data['profile']}"]
    run.report(data, notes)
    return 0 if data["all_targets_met"] and data["all_valid"] else 1


def validate(text: str) -> str | None:
    """``None`` when ``text`` is JSON valid against ``SCHEMA``, else why not."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
        return f"{type(exc).__name__}: {exc.msg if isinstance(exc, json.JSONDecodeError) else exc.message}"
    return None


def analyse(run: h.Run, contenders: list[h.Contender], scenarios: list[Scenario], **more: Any) -> dict[str, Any]:
    by = {c.name: c for c in contenders}
    results: dict[str, Any] = {name: {} for name in SCENARIOS}
    validation: dict[str, Any] = {}
    problems: list[str] = []
    for name in SCENARIOS:
        for contender, samples in ((c.name, c.samples[name]) for c in contenders if name in c.samples):
            finish = sorted({f for s in samples for f in s.extra["finish"]})
            entry = results[name][contender] = h.entry(samples) | {"finish_reasons": finish, "text": samples[0].text}
            if contender in CONSTRAINED:
                errors = [e for s in samples for t in s.texts if (e := validate(t)) is not None]
                total = sum(len(s.texts) for s in samples)
                entry["valid"] = f"{total - len(errors)}/{total}"
                validation[f"{contender}/{name}"] = {"valid": total - len(errors), "total": total}
                if contender == "ox_json":
                    problems += [f"{contender} {name}: {e}" for e in sorted(set(errors))]
                    problems += [f"{contender} {name}: finish reasons {finish}"] if finish != ["stop"] else []

    def ratio(a: str, b: str, scenario: str) -> dict[str, Any]:
        ra, rb = by[a].rates(scenario), by[b].rates(scenario)
        if not ra or not rb:
            return {"median": math.nan, "paired_median": math.nan}
        return {"median": h.median(ra) / h.median(rb), "paired_median": h.median([x / y for x, y in zip(ra, rb)])}

    pairs = (("ox_json", "ox_free"), ("ox_json", "raw_json"), ("ox_gbnf", "raw_json"), ("raw_json", "raw_free"))
    pairs += (("ox_free", "raw_free"),)
    ratios = {name: {f"{a}_vs_{b}": ratio(a, b, name) for a, b in pairs} for name in SCENARIOS}
    checks: dict[str, Any] = {}
    for name in SCENARIOS:
        vs = ratios[name]
        target = TARGET_VS_FREE[name]
        # paired (each round's JSON run over its free neighbour): the machine's drift between rounds cancels
        checks[f"{name}_constrained_vs_unconstrained"] = h.check(vs["ox_json_vs_ox_free"]["paired_median"], target)
        if name in SINGLE:
            checks[f"{name}_constrained_vs_llama_cpp"] = h.check(vs["ox_json_vs_raw_json"]["median"], TARGET_VS_RAW)
            checks[f"{name}_same_gbnf_vs_llama_cpp"] = h.check(vs["ox_gbnf_vs_raw_json"]["median"], TARGET_VS_RAW)
    text = {c: results["one_greedy"].get(c, {}).get("text") for c in CONTENDERS}
    same = {
        "ox_json_equals_raw_json": text["ox_json"] == text["raw_json"],
        "ox_gbnf_equals_raw_json": text["ox_gbnf"] == text["raw_json"],
        "ox_free_equals_raw_free": text["ox_free"] == text["raw_free"],
    }
    return {
        **run.header(),
        "batch_rounds": more["batch_rounds"],
        "schema": SCHEMA,
        "gbnf": more["gbnf"],
        "prompt_template": PROMPT_TEMPLATE,
        "subjects": list(SUBJECTS),
        "constrained_max_tokens": CAP,
        "unconstrained_max_tokens": {s.name: s.free_tokens for s in scenarios},
        "sampling": {s.name: s.sampling for s in scenarios},
        "results": results,
        "ratios": ratios,
        "checks": checks,
        "all_targets_met": h.all_pass(checks),
        "validation": validation,
        "all_valid": all(v["valid"] == v["total"] for k, v in validation.items() if k.startswith("ox_json")),
        "same_text": {"one_greedy": same},
        "profile": more["profile"],
        "problems": problems,
    }


if __name__ == "__main__":
    sys.exit(main())
