"""Structured output: constrained against unconstrained decoding, and against llama-cpp-python's ``LlamaGrammar``.

What it measures: completion tokens per second (tokens produced / wall
seconds of the call, prompt prefill included, model load excluded) of a
generation constrained by a JSON Schema (``SCHEMA``: a book record with
bounded strings, two bounded integers and an array of at most 3 enum values,
~60-120 tokens) and of the same prompt unconstrained, in three scenarios:

* ``one_greedy``: one request, ``temperature=0``;
* ``one_sampled``: one request, ``temperature=1.0``, ``top_k=40``,
  ``top_p=0.95``, ``min_p=0.05`` (llama-cpp-python's defaults) and a fixed
  seed, so each contender writes the same text every round;
* ``eight_greedy``: 8 distinct prompts at once, greedy, aggregate tok/s (all
  sequences' tokens / wall seconds of the whole call).

The contenders:

* ``ox_free``: ``Engine(EngineConfig(model, n_threads=T)).complete(prompt,
  N, ...)`` (``complete_batch(prompts, N, ...)`` for 8), unconstrained;
* ``ox_json``: the same call with ``json_schema=SCHEMA`` (the schema is
  turned into a grammar inside the call, as a user's call does);
* ``raw_json``: ``llama_cpp.Llama(model, n_ctx=2048, n_threads=T,
  n_threads_batch=T).create_completion(prompt, max_tokens=CAP,
  grammar=LlamaGrammar.from_string(gbnf), ...)`` after ``reset()``, where
  ``gbnf`` is ``oxillama_py.Grammar.from_json_schema(SCHEMA).gbnf``: the very
  same grammar, so both sides are held to the same language. llama-cpp-python
  puts the grammar sampler in its chain, so it matches the grammar against the
  whole vocabulary at every step. It has no batching: for 8 prompts it runs
  them one after another (for reference; no target);
* ``raw_free``: the same ``Llama`` unconstrained (one request only): the
  reference for llama-cpp-python's own constrained/unconstrained ratio.

Why: a backend asks for structured output on most of its calls, so the
constraint should cost little. Targets, for one request (greedy and sampled):
``ox_json / ox_free`` >= 0.8, and ``ox_json / raw_json`` >= 1.0.

How: the engine and the ``Llama`` are loaded once; every contender runs every
scenario once as a discarded warm-up; then rounds run the scenarios in turn,
the contenders of each in a rotating order, so machine noise hits them alike;
medians over rounds are reported (and the median of per-round ratios,
``paired``). Constrained calls get ``max_tokens=CAP`` (320), far more than
the grammar lets a document grow, so they end at the grammar's end (their
``finish_reason`` is recorded). Unconstrained calls get ``max_tokens`` = the
median token count of ``ox_json``'s warm-up outputs in that scenario, so both
sides decode about as many tokens after the same prefill (an unconstrained
run may end sooner at an end-of-generation token; tokens are counted as
produced). Every constrained output is parsed with ``json.loads`` and
validated against ``SCHEMA`` with ``jsonschema``; the greedy texts of
``ox_json`` and ``raw_json`` are compared (the constrained greedy choice is
exact on both sides, so they should be equal). After the timed rounds, an
untimed pass wraps ``oxillama_py.llama.sampling.Sampler`` to count how often
the unconstrained choice is refused by the grammar and where the sampler's
time goes (``profile`` in the JSON).

Usage: ``python benchmarks/structured.py [--quick] [--model PATH] [--rounds N]
[--batch-rounds N]``. Writes ``benchmarks/results/structured.json`` and
``structured.png``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as common
import numpy as np

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
SUBJECTS = (
    "a lighthouse keeper",
    "a stolen violin",
    "the first colony on Mars",
    "a family bakery in Lyon",
    "a detective who cannot sleep",
    "the last dragon",
    "a voyage up the Amazon",
    "two rival chess players",
)
PROMPT_TEMPLATE = (
    "A library catalogue record for a novel about {subject}, written as one JSON object with the keys "
    "title, author, year, pages, genres and summary.\n```json\n"
)
CAP = 320
SEED = 1234
SAMPLED = {"temperature": 1.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
SCENARIOS = ("one_greedy", "one_sampled", "eight_greedy")
SINGLE = ("one_greedy", "one_sampled")
CONTENDERS = ("ox_free", "ox_json", "raw_json", "raw_free")
LABELS = {
    "ox_free": "oxillama_py unconstrained",
    "ox_json": "oxillama_py json_schema",
    "raw_json": "llama-cpp-python LlamaGrammar",
    "raw_free": "llama-cpp-python unconstrained",
}
TARGET_VS_FREE = 0.8
TARGET_VS_RAW = 1.0


def prompts(n: int) -> list[str]:
    return [PROMPT_TEMPLATE.format(subject=s) for s in SUBJECTS[:n]]


@dataclass
class Scenario:
    name: str
    prompts: list[str]
    sampling: dict[str, Any]  # temperature etc.; a seed when sampled
    free_tokens: int = 0  # max_tokens of the unconstrained calls, set after the warm-up


@dataclass
class Sample:
    secs: float
    texts: list[str]
    per_sequence: list[int]
    finish: list[str]

    @property
    def tokens(self) -> int:
        return sum(self.per_sequence)

    @property
    def tok_per_sec(self) -> float:
        return self.tokens / self.secs if self.secs > 0 else math.nan


@dataclass
class Contender:
    name: str
    constrained: bool
    run: Callable[[Scenario], Sample]
    scenarios: tuple[str, ...]
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def scenario_list() -> list[Scenario]:
    greedy = {"temperature": 0.0}
    return [
        Scenario("one_greedy", prompts(1), greedy),
        Scenario("one_sampled", prompts(1), {**SAMPLED, "seed": SEED}),
        Scenario("eight_greedy", prompts(8), greedy),
    ]


# -- the contenders ------------------------------------------------------------------------


def make_ox(engine: Any, constrained: bool) -> Callable[[Scenario], Sample]:
    def run(scenario: Scenario) -> Sample:
        options: dict[str, Any] = dict(scenario.sampling)
        max_tokens = CAP if constrained else scenario.free_tokens
        if constrained:
            options["json_schema"] = SCHEMA
        start = time.perf_counter()
        if len(scenario.prompts) == 1:
            results = [engine.complete(scenario.prompts[0], max_tokens, **options)]
        else:
            results = engine.complete_batch(scenario.prompts, max_tokens, **options)
        secs = time.perf_counter() - start
        return Sample(
            secs,
            [r.text for r in results],
            [r.completion_tokens for r in results],
            [str(r.finish_reason) for r in results],
        )

    return run


def make_raw(llm: Any, grammar: Any) -> Callable[[Scenario], Sample]:
    def run(scenario: Scenario) -> Sample:
        max_tokens = CAP if grammar is not None else scenario.free_tokens
        texts, counts, finish = [], [], []
        start = time.perf_counter()
        for prompt in scenario.prompts:
            llm.reset()
            out: Any = llm.create_completion(prompt, max_tokens=max_tokens, grammar=grammar, **scenario.sampling)
            texts.append(str(out["choices"][0]["text"]))
            counts.append(int(out["usage"]["completion_tokens"]))
            finish.append(str(out["choices"][0]["finish_reason"]))
        secs = time.perf_counter() - start
        return Sample(secs, texts, counts, finish)

    return run


# -- the sampler profile (untimed) ---------------------------------------------------------


@contextmanager
def sampler_profile(stats: dict[str, Any]) -> Iterator[None]:
    """Wrap the constrained path of ``Sampler``: count refusals, time each part of a step."""
    from oxillama_py.llama import sampling

    cls = sampling.Sampler
    originals = {name: getattr(cls, name) for name in ("sample", "_choose", "_allowed", "_choose_constrained")}
    clock = time.perf_counter

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        start = clock()
        result = fn()
        stats[key] = stats.get(key, 0.0) + clock() - start
        return result

    def sample(self: Any, ctx_ptr: object, index: int) -> int:
        if self.grammar_ptr is None:
            return originals["sample"](self, ctx_ptr, index)
        stats["steps"] = stats.get("steps", 0) + 1
        stats["n_vocab"] = self.n_vocab
        return timed("sample_secs", lambda: originals["sample"](self, ctx_ptr, index))

    def choose(self: Any, logits: Any, *, constrained: bool) -> int:
        if constrained:
            stats["whole_vocab"] = stats.get("whole_vocab", 0) + 1
            return timed("whole_vocab_secs", lambda: originals["_choose"](self, logits, constrained=True))
        return timed("first_choice_secs", lambda: originals["_choose"](self, logits, constrained=False))

    def allowed(self: Any, token: int, logit: float) -> bool:
        ok = timed("check_secs", lambda: originals["_allowed"](self, token, logit))
        if not ok:
            stats["refused"] = stats.get("refused", 0) + 1
        return bool(ok)

    def choose_constrained(self: Any, logits: Any) -> int:
        return timed("constrained_secs", lambda: originals["_choose_constrained"](self, logits))

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        timed("sampler_init_secs", lambda: originals["__init__"](self, *args, **kwargs))
        stats["sampler_inits"] = stats.get("sampler_inits", 0) + 1

    # Once per request, outside the decode loop: the schema made a grammar, the grammar parsed.
    from oxillama_py import engine as engine_module
    from oxillama_py import options as options_module

    resolve, check = options_module.resolve_grammar, engine_module.check_grammar
    originals["__init__"] = cls.__init__

    def resolve_grammar(*args: Any) -> Any:
        return timed("resolve_grammar_secs", lambda: resolve(*args))

    def check_grammar(*args: Any) -> Any:
        return timed("check_grammar_secs", lambda: check(*args))

    patched = {
        "sample": sample,
        "_choose": choose,
        "_allowed": allowed,
        "_choose_constrained": choose_constrained,
        "__init__": init,
    }
    for name, fn in patched.items():
        setattr(cls, name, fn)
    options_module.resolve_grammar = resolve_grammar
    engine_module.check_grammar = check_grammar
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(cls, name, fn)
        options_module.resolve_grammar = resolve
        engine_module.check_grammar = check


def profile_constrained(engine: Any, scenarios: list[Scenario], free_rates: dict[str, float]) -> dict[str, Any]:
    """One untimed ``ox_json`` run per scenario under the wrapped sampler; per-step costs in ms."""
    out: dict[str, Any] = {}
    run = make_ox(engine, constrained=True)
    for scenario in scenarios:
        stats: dict[str, Any] = {}
        with sampler_profile(stats):
            sample = run(scenario)
        steps = stats.get("steps", 0) or 1
        calls, requests = 1, len(scenario.prompts)  # one call converts and checks the schema once
        ms = {k: stats.get(k, 0.0) * 1000.0 / steps for k in ("sample_secs", "first_choice_secs", "check_secs")}
        constrained_ms = stats.get("constrained_secs", 0.0) * 1000.0
        whole_ms = stats.get("whole_vocab_secs", 0.0) * 1000.0
        refused = stats.get("refused", 0)
        step_ms = sample.secs * 1000.0 / max(1, max(sample.per_sequence))  # one decode step, all sequences
        out[scenario.name] = {
            "steps": stats.get("steps", 0),
            "refused": refused,
            "refused_share": refused / steps,
            "whole_vocabulary_fallbacks": stats.get("whole_vocab", 0),
            "ms_per_step": {
                "sample_total": ms["sample_secs"],
                "first_choice_without_grammar": ms["first_choice_secs"],
                "check_one_token": ms["check_secs"],
                "refused_retry_averaged_over_all_steps": constrained_ms / steps,
                "other_accept_etc": ms["sample_secs"]
                - ms["first_choice_secs"]
                - ms["check_secs"]
                - constrained_ms / steps,
            },
            "setup_ms": {
                "schema_to_grammar": stats.get("resolve_grammar_secs", 0.0) * 1000.0 / calls,
                "grammar_check": stats.get("check_grammar_secs", 0.0) * 1000.0 / calls,
                "sampler_init": stats.get("sampler_init_secs", 0.0) * 1000.0 / requests,
            },
            "ms_per_refused_retry": constrained_ms / refused if refused else 0.0,
            "ms_per_whole_vocabulary_fallback": whole_ms / stats["whole_vocab"] if stats.get("whole_vocab") else 0.0,
            "wall_ms_per_decode_step": step_ms,
            "unconstrained_wall_ms_per_decode_step": 1000.0 / free_rates[scenario.name] * len(scenario.prompts)
            if free_rates.get(scenario.name)
            else math.nan,
            "n_vocab": stats.get("n_vocab"),
        }
    return out


def numpy_ms(n_vocab: int) -> dict[str, float]:
    """Per-call cost of the numpy parts: the unconstrained greedy path's argmax, the shortlist's argpartition."""
    from oxillama_py.llama.sampling import SHORTLIST

    logits = np.random.default_rng(0).standard_normal(n_vocab).astype(np.float32)

    def per_call(fn: Callable[[], object], n: int = 100) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) * 1000.0 / n

    return {
        "argmax": per_call(lambda: np.argmax(logits)),
        "argpartition_shortlist": per_call(lambda: np.argpartition(logits, -SHORTLIST)[-SHORTLIST:]),
    }


# -- the run -------------------------------------------------------------------------------


def main() -> int:
    parser = common.base_parser(__doc__)
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of the one-request scenarios (default 5, quick 1)"
    )
    parser.add_argument(
        "--batch-rounds", type=int, default=None, help="rounds of the 8-request scenario (default 2, quick 1)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    batch_rounds = min(rounds, args.batch_rounds or (1 if args.quick else 2))
    model = common.resolve_model(args.model)
    common.quiet_llama_cpp()
    started = time.perf_counter()
    info = common.machine_info(args.threads, model)

    from llama_cpp import Llama, LlamaGrammar

    from oxillama_py import Engine, EngineConfig, Grammar

    gbnf = Grammar.from_json_schema(SCHEMA).gbnf
    scenarios = scenario_list()
    by_name = {s.name: s for s in scenarios}
    print(f"model {model.name}, {args.threads} threads, {rounds} rounds ({batch_rounds} with 8 requests)", flush=True)
    llm = Llama(str(model), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    with Engine(EngineConfig(model, n_threads=args.threads)) as engine:
        engine.load_model()
        contenders = [
            Contender("ox_free", False, make_ox(engine, False), SCENARIOS),
            Contender("ox_json", True, make_ox(engine, True), SCENARIOS),
            Contender("raw_json", True, make_raw(llm, LlamaGrammar.from_string(gbnf, verbose=False)), SCENARIOS),
            Contender("raw_free", False, make_raw(llm, None), SINGLE),
        ]
        ox_json = contenders[1]
        for scenario in scenarios:  # warm-up; ox_json's lengths size the unconstrained calls
            warm = ox_json.run(scenario)
            scenario.free_tokens = max(1, int(common.median(warm.per_sequence)))
            print(f"warm-up {scenario.name}: ox_json {warm.per_sequence} tokens, {warm.finish}", flush=True)
            for contender in contenders:
                # llama-cpp-python decodes 8 prompts one by one: the one-request warm-up did it
                raw_batch = contender.name.startswith("raw") and len(scenario.prompts) > 1
                if contender is not ox_json and scenario.name in contender.scenarios and not raw_batch:
                    contender.run(scenario)
        for round_no in range(rounds):
            for scenario in scenarios:
                if scenario.name == "eight_greedy" and round_no >= batch_rounds:
                    continue
                line = []
                for contender in common.rotated(contenders, round_no):
                    if scenario.name not in contender.scenarios:
                        continue
                    sample = contender.run(scenario)
                    contender.samples.setdefault(scenario.name, []).append(sample)
                    line.append(f"{contender.name} {sample.tok_per_sec:5.1f}")
                print(f"round {round_no + 1}/{rounds} {scenario.name}: " + ", ".join(line), flush=True)
        free_rates = {s.name: common.median([x.tok_per_sec for x in contenders[0].samples[s.name]]) for s in scenarios}
        profile = profile_constrained(engine, scenarios, free_rates)
    n_vocab = next((p["n_vocab"] for p in profile.values() if p.get("n_vocab")), None)
    if n_vocab:
        profile["numpy_ms"] = numpy_ms(n_vocab)

    common.finish_info(info, started)
    data = analyse(contenders, by_name, profile, info, gbnf, rounds, batch_rounds, args.quick)
    print_table(data)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "structured.json", data)
    plot(data, args.out / "structured.png")
    print(f"wrote {args.out / 'structured.json'} and {args.out / 'structured.png'}")
    return 0 if data["all_targets_met"] and data["all_valid"] else 1


def validate(text: str) -> str | None:
    """``None`` when ``text`` is JSON valid against ``SCHEMA``, else why not."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at {exc.pos}"
    except jsonschema.ValidationError as exc:
        return f"invalid: {exc.message}"
    return None


def analyse(
    contenders: list[Contender],
    scenarios: dict[str, Scenario],
    profile: dict[str, Any],
    info: dict[str, Any],
    gbnf: str,
    rounds: int,
    batch_rounds: int,
    quick: bool,
) -> dict:
    by = {c.name: c for c in contenders}
    results: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    problems: list[str] = []
    for name in SCENARIOS:
        per: dict[str, Any] = {}
        for contender in contenders:
            samples = contender.samples.get(name)
            if not samples:
                continue
            entry: dict[str, Any] = {
                "tok_per_sec": common.summary([s.tok_per_sec for s in samples]),
                "secs": common.summary([s.secs for s in samples]),
                "tokens": [s.tokens for s in samples],
                "tokens_per_sequence": [s.per_sequence for s in samples],
                "finish_reasons": sorted({f for s in samples for f in s.finish}),
                "text": samples[0].texts[0],
            }
            if contender.constrained:
                errors = [e for s in samples for t in s.texts if (e := validate(t)) is not None]
                total = sum(len(s.texts) for s in samples)
                entry["valid"] = f"{total - len(errors)}/{total}"
                validation[f"{contender.name}/{name}"] = {"valid": total - len(errors), "total": total}
                problems += [f"{contender.name} {name}: {e}" for e in sorted(set(errors))]
                if entry["finish_reasons"] != ["stop"]:
                    problems.append(f"{contender.name} {name}: finish reasons {entry['finish_reasons']}")
            per[contender.name] = entry
        results[name] = per

    def rates(contender: str, scenario: str) -> list[float]:
        return [s.tok_per_sec for s in by[contender].samples.get(scenario, [])]

    def ratio(a: str, b: str, scenario: str) -> dict[str, Any]:
        ra, rb = rates(a, scenario), rates(b, scenario)
        if not ra or not rb:
            return {"median": math.nan, "paired_median": math.nan}
        return {
            "median": common.median(ra) / common.median(rb),
            "paired_median": common.median([x / y for x, y in zip(ra, rb, strict=True)]),
        }

    ratios: dict[str, Any] = {}
    for name in SCENARIOS:
        ratios[name] = {
            "ox_json_vs_ox_free": ratio("ox_json", "ox_free", name),
            "ox_json_vs_raw_json": ratio("ox_json", "raw_json", name),
            "raw_json_vs_raw_free": ratio("raw_json", "raw_free", name),
            "ox_free_vs_raw_free": ratio("ox_free", "raw_free", name),
        }
    checks: dict[str, Any] = {}
    for name in SINGLE:
        checks[f"{name}_constrained_vs_unconstrained"] = {
            "value": ratios[name]["ox_json_vs_ox_free"]["median"],
            "target": TARGET_VS_FREE,
        }
        checks[f"{name}_constrained_vs_llama_cpp"] = {
            "value": ratios[name]["ox_json_vs_raw_json"]["median"],
            "target": TARGET_VS_RAW,
        }
    for check in checks.values():
        check["verdict"] = common.verdict(check["value"], check["target"])
    same_text = {
        name: {
            "ox_json_equals_raw_json": results[name]["ox_json"]["text"] == results[name]["raw_json"]["text"],
            "ox_free_equals_raw_free": results[name].get("ox_free", {}).get("text")
            == results[name].get("raw_free", {}).get("text"),
        }
        for name in ("one_greedy",)
    }
    all_valid = all(v["valid"] == v["total"] for v in validation.values())
    return {
        "benchmark": "structured",
        "mode": "quick" if quick else "default",
        "rounds": rounds,
        "batch_rounds": batch_rounds,
        "schema": SCHEMA,
        "gbnf": gbnf,
        "prompt_template": PROMPT_TEMPLATE,
        "subjects": list(SUBJECTS),
        "constrained_max_tokens": CAP,
        "unconstrained_max_tokens": {name: s.free_tokens for name, s in scenarios.items()},
        "sampling": {name: s.sampling for name, s in scenarios.items()},
        "machine": info,
        "contenders": {
            "ox_free": "Engine(EngineConfig(model, n_threads=T)).complete(prompt, N, **sampling) "
            "(complete_batch(prompts, ...) for 8)",
            "ox_json": f"the same with max_tokens={CAP}, json_schema=SCHEMA",
            "raw_json": "Llama(model, n_ctx=2048, n_threads=T, n_threads_batch=T, verbose=False)"
            f".create_completion(prompt, max_tokens={CAP}, grammar=LlamaGrammar.from_string(gbnf), **sampling) "
            "after reset(); 8 prompts one after another",
            "raw_free": "the same Llama, no grammar, max_tokens=N",
        },
        "labels": LABELS,
        "results": results,
        "ratios": ratios,
        "checks": checks,
        "all_targets_met": all(c["verdict"] == "PASS" for c in checks.values()),
        "validation": validation,
        "all_valid": all_valid,
        "same_text": same_text,
        "profile": profile,
        "problems": problems,
        "warning": common.load_warning(info),
    }


def print_table(data: dict) -> None:
    results = data["results"]
    print()
    print("tok/s, median over rounds (8 requests: aggregate; llama-cpp-python: one after another)")
    print(f"{'scenario':<14}" + "".join(f"{n:>11}" for n in CONTENDERS) + f"{'tokens (json)':>16}")
    for name in SCENARIOS:
        cells = []
        for contender in CONTENDERS:
            entry = results[name].get(contender)
            cells.append(f"{entry['tok_per_sec']['median']:11.1f}" if entry else f"{'-':>11}")
        tokens = results[name]["ox_json"]["tokens_per_sequence"][0]
        print(f"{name:<14}" + "".join(cells) + f"{str(tokens)[:30]:>16}")
    print()
    print("ratios (median / paired median)")
    for name in SCENARIOS:
        parts = [
            f"{key} {r['median']:.2f}/{r['paired_median']:.2f}"
            for key, r in data["ratios"][name].items()
            if not math.isnan(r["median"])
        ]
        print(f"  {name:<13} " + ", ".join(parts))
    print()
    for key, check in data["checks"].items():
        print(f"{key:<45} {check['value']:7.3f}  (target >= {check['target']})  {check['verdict']}")
    valid = ", ".join(f"{k} {v['valid']}/{v['total']}" for k, v in data["validation"].items())
    print(f"valid JSON against the schema: {valid}")
    print(f"greedy texts: {data['same_text']}")
    print()
    print("constrained sampler profile (ox_json, one untimed run each; ms per sampled token)")
    for name in SCENARIOS:
        p = data["profile"][name]
        ms = p["ms_per_step"]
        print(
            f"  {name:<13} steps {p['steps']:4d}, refused {p['refused']:3d} ({p['refused_share']:.0%}), "
            f"whole-vocabulary {p['whole_vocabulary_fallbacks']}; sample {ms['sample_total']:.2f} = first choice "
            f"{ms['first_choice_without_grammar']:.2f} + check {ms['check_one_token']:.2f} + retries "
            f"{ms['refused_retry_averaged_over_all_steps']:.2f} + other {ms['other_accept_etc']:.2f}; "
            f"retry {p['ms_per_refused_retry']:.1f} ms each; decode step {p['wall_ms_per_decode_step']:.1f} ms "
            f"(unconstrained {p['unconstrained_wall_ms_per_decode_step']:.1f})"
        )
        setup = p["setup_ms"]
        print(
            f"  {'':<13} once per call: schema to GBNF {setup['schema_to_grammar']:.2f} ms, grammar check "
            f"{setup['grammar_check']:.2f} ms; per request: sampler set-up {setup['sampler_init']:.2f} ms"
        )
    if "numpy_ms" in data["profile"]:
        numpy = data["profile"]["numpy_ms"]
        print(
            f"  (numpy over the logits: argmax, the unconstrained greedy path, {numpy['argmax']:.3f} ms; "
            f"argpartition for the shortlist {numpy['argpartition_shortlist']:.3f} ms)"
        )
    for problem in data["problems"]:
        print(f"PROBLEM: {problem}")
    if data["warning"]:
        print(f"NOTE: {data['warning']}")


def plot(data: dict, path: Path) -> None:
    plt = common.pyplot()
    results = data["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {"ox_free": "#9cc3ea", "ox_json": "#3a7dc9", "raw_json": "#c0392b", "raw_free": "#bbbbbb"}
    width = 0.2
    xs = np.arange(len(SCENARIOS))
    for i, contender in enumerate(CONTENDERS):
        med, low, high, at = [], [], [], []
        for j, name in enumerate(SCENARIOS):
            entry = results[name].get(contender)
            if entry is None:
                continue
            rate = entry["tok_per_sec"]
            at.append(xs[j] + (i - 1.5) * width)
            med.append(rate["median"])
            low.append(rate["median"] - rate["min"])
            high.append(rate["max"] - rate["median"])
        left.bar(at, med, width, yerr=[low, high], color=colors[contender], capsize=3, label=LABELS[contender])
    left.set_xticks(xs, ["1 request, greedy", "1 request, T=1.0", "8 requests, greedy\n(llama-cpp-python: in turn)"])
    left.set_ylabel("tokens / s (median, min-max; 8: aggregate)")
    left.set_title("constrained by the same JSON Schema grammar, or not")
    left.legend(fontsize=8)
    pairs = (
        ("ox_json_vs_ox_free", "oxillama_py json / free", "#3a7dc9", TARGET_VS_FREE),
        ("ox_json_vs_raw_json", "json: oxillama_py / llama-cpp-python", "#1b4f8a", TARGET_VS_RAW),
        ("raw_json_vs_raw_free", "llama-cpp-python json / free", "#c0392b", None),
    )
    width = 0.26
    for i, (key, label, color, target) in enumerate(pairs):
        for j, name in enumerate(SCENARIOS):
            value = data["ratios"][name][key]["median"]
            if math.isnan(value):
                continue
            x = xs[j] + (i - 1) * width
            right.bar(x, value, width, color=color, label=label if j == 0 else None)
            right.annotate(
                f"{value:.2f}",
                (x, value),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
            if target is not None and name in SINGLE:
                right.hlines(target, x - width / 2, x + width / 2, colors="black", linestyles="--", linewidth=0.9)
    right.axhline(1.0, color="#777777", linewidth=0.8)
    right.set_yscale("log")
    ticks = [0.25, 0.5, 0.8, 1.0, 2.0, 4.0, 8.0]
    right.set_yticks(ticks, [f"{t:g}" for t in ticks])
    right.minorticks_off()
    right.set_xticks(xs, ["1, greedy", "1, T=1.0", "8, greedy"])
    right.set_ylabel("ratio of tok/s (log; dashed: target)")
    right.set_title("ratios")
    right.legend(fontsize=8)
    info = data["machine"]
    fig.suptitle(
        f"structured output: oxillama_py {info['oxillama_py']} vs llama-cpp-python {info['llama_cpp_python']}, "
        f"{info['threads']} threads, {data['rounds']} rounds ({data['mode']})",
        fontsize=10,
    )
    common.save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
