"""Structured output with the real model: grammars and JSON Schemas, sampled at temperature 1.0.

Every output of a constrained call must parse and validate (``jsonschema``);
a grammar's language is all a call can write, whatever the sampler picks.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from free_rows import price_rows_as_free

from oxillama_py import (
    AsyncEngine,
    Engine,
    EngineConfig,
    Grammar,
    GrammarError,
    OxiLlamaError,
    PromptLookup,
    SamplerConfig,
    SpeculativeConfig,
    SpeculativeEngine,
)

jsonschema = pytest.importorskip("jsonschema", reason="structured-output tests validate with jsonschema (test extra)")

SEEDS = 50
PROMPT = "Here is the record, as JSON:\n"

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {  # required and optional properties, bounds, a pattern
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
        },
        "required": ["name", "age"],
    },
    "colours": {  # an array with min/max items of an enum
        "type": "array",
        "items": {"enum": ["red", "green", "blue", "black"]},
        "minItems": 1,
        "maxItems": 4,
    },
    "any_of": {  # anyOf over an exclusive integer range, a const and a boolean
        "anyOf": [
            {"type": "integer", "exclusiveMinimum": -10, "maximum": 10},
            {"const": "none"},
            {"type": "boolean"},
        ]
    },
    "refs": {  # $ref to $defs, numbers with fractional bounds
        "$defs": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "number", "minimum": -1.5, "maximum": 2.5},
                    "y": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                },
                "required": ["x", "y"],
            }
        },
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start"],
    },
    "nested": {  # nested objects, strings with length bounds, an optional boolean
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 9999},
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "maxLength": 6},
                        "maxItems": 3,
                    },
                },
                "required": ["id", "tags"],
            },
            "active": {"type": "boolean"},
        },
        "required": ["user"],
    },
    "event": {  # const, a pattern with quantifier ranges, an enum of numbers, a nullable field
        "type": "object",
        "properties": {
            "kind": {"const": "event"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
            "level": {"enum": [1, 2, 3]},
            "note": {"type": ["string", "null"], "maxLength": 8},
        },
        "required": ["kind", "code", "level", "note"],
    },
}


def check(text: str, schema: dict[str, Any]) -> None:
    """Valid against ``schema`` under its own draft, ``format`` included (where jsonschema can check one)."""
    validator = jsonschema.validators.validator_for(schema)
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(json.loads(text))


def test_one_batch_of_eight_each_with_its_own_schema(engine: Engine) -> None:
    names = list(SCHEMAS)
    schemas: list[dict[str, Any] | None] = [SCHEMAS[n] for n in names] + [None, None]
    steps = engine.stats.decode_steps
    results = engine.complete_batch([PROMPT] * 8, 160, temperature=1.0, seed=7, json_schema=schemas)
    assert engine.stats.decode_steps - steps < sum(r.completion_tokens for r in results)  # decoded together
    for result, schema in zip(results, schemas, strict=True):
        if schema is not None and result.finish_reason == "stop":  # numbers may run on: digits are not bounded
            check(result.text, schema)
    assert sum(r.finish_reason == "stop" for r, s in zip(results, schemas, strict=True) if s is not None) >= 4
    grammars = [Grammar.from_json_schema(s) if s else None for s in schemas]
    again = engine.complete_batch([PROMPT] * 8, 160, temperature=1.0, seed=7, grammar=grammars)
    for result, first, schema in zip(again, results, schemas, strict=True):
        assert result.text == first.text  # a Grammar is the schema it was made from
        if schema is not None and result.finish_reason == "stop":
            check(result.text, schema)


def test_gbnf_yields_only_its_language(engine: Engine) -> None:
    grammar = 'root ::= ("yes" | "no")'
    texts = engine.generate_batch(["Is water wet?"] * 30, 8, temperature=1.0, seed=1, grammar=grammar)
    assert set(texts) <= {"yes", "no"} and texts
    # Greedy decoding takes a fast path (numpy argmax) without a grammar; with one it must not.
    free = engine.generate("The colour of the sky is", 4, temperature=0)
    assert free.strip() not in ("yes", "no")
    assert engine.generate("The colour of the sky is", 4, temperature=0, grammar=grammar) in ("yes", "no")
    counted = engine.generate("Count:", 24, temperature=0, grammar='root ::= [0-9]{3} "-" [a-z]{2,3}')
    assert len(counted) in (6, 7) and counted[3] == "-"


@pytest.mark.anyio
async def test_every_call_shape_takes_a_constraint(aengine: AsyncEngine) -> None:
    schema = SCHEMAS["colours"]
    check(await aengine.generate(PROMPT, 64, json_schema=schema, temperature=0), schema)
    check((await aengine.complete(PROMPT, 64, json_schema=schema, temperature=1.0, seed=3)).text, schema)
    pieces: list[str] = []
    streamed = await aengine.generate_streaming(PROMPT, 64, pieces.append, json_schema=schema, temperature=0)
    assert "".join(pieces) == streamed
    check(streamed, schema)
    status = 'Status as JSON: {"ok": true}\nStatus as JSON: '
    async with aclosing(aengine.stream(status, 64, json=True, temperature=1.0, seed=4)) as stream:
        text = "".join([piece async for piece in stream])
    assert isinstance(json.loads(text), dict)
    batch = await aengine.generate_batch([PROMPT, PROMPT], 64, json_schema=schema, temperature=1.0, seed=5)
    for text in batch:
        check(text, schema)
    chat = await aengine.chat([{"role": "user", "content": "Three colours?"}], 64, json_schema=schema)
    check(chat.text, schema)
    async with aclosing(
        aengine.stream_chat([{"role": "user", "content": "Colours?"}], 64, json_schema=schema)
    ) as stream:
        check("".join([piece async for piece in stream]), schema)


def test_any_json_object(engine: Engine) -> None:
    for result in engine.complete_batch([PROMPT] * 8, 200, temperature=1.0, seed=11, json=True):
        if result.finish_reason == "stop":
            assert isinstance(json.loads(result.text), dict)
        else:  # the budget ran out first: an incomplete object, said so by the finish reason
            assert result.finish_reason == "length"
            assert result.text.startswith("{")


def test_finish_reason_length_when_the_budget_ends_first(engine: Engine) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    result = engine.complete(PROMPT, 5, temperature=0, json_schema=schema)
    assert result.finish_reason == "length" and result.completion_tokens == 5
    with pytest.raises(ValueError):
        json.loads(result.text)  # incomplete, as documented
    done = engine.complete(PROMPT, 20, temperature=0, grammar='root ::= "{}"')
    assert done.text == "{}" and done.finish_reason == "stop"


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"if": {"type": "string"}, "then": {"minLength": 1}}, "if"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"type": "string", "format": "no-such-format"}, "no-such-format"),
        ({"oneOf": [{"type": "string"}, {"type": "string", "minLength": 1}]}, "oneOf"),
        ({"type": "string", "pattern": "(?=x)y"}, "look-around"),
        ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
    ],
)
def test_what_cannot_be_enforced_is_named(engine: Engine, schema: dict[str, Any], keyword: str) -> None:
    steps = engine.stats.decode_steps
    with pytest.raises(GrammarError, match=re.escape(keyword)):
        engine.generate(PROMPT, 8, json_schema=schema)
    assert engine.stats.decode_steps == steps  # nothing decoded
    with pytest.raises(GrammarError, match=re.escape(keyword)):
        Grammar.from_json_schema(schema)


@pytest.mark.parametrize("gbnf", ["root ::= foo", "root ::= (", 'start ::= "x"', "root ::= [a-"])
def test_malformed_grammars_fail_before_decoding(engine: Engine, gbnf: str) -> None:
    steps = engine.stats.decode_steps
    with pytest.raises(GrammarError) as raised:
        engine.generate(PROMPT, 8, grammar=gbnf)
    assert isinstance(raised.value, OxiLlamaError) and isinstance(raised.value, ValueError)
    assert engine.stats.decode_steps == steps
    assert engine.generate("Hello", 2, temperature=0)  # still usable


def test_bad_constraint_arguments(engine: Engine) -> None:
    with pytest.raises(ValueError, match="at most one"):
        engine.generate(PROMPT, 8, json=True, grammar='root ::= "x"')
    with pytest.raises(TypeError):
        engine.generate(PROMPT, 8, grammar=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        engine.generate(PROMPT, 8, json="yes")  # type: ignore[arg-type]
    with pytest.raises(GrammarError):
        engine.generate(PROMPT, 8, json_schema="not a schema")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="for 3 prompts"):
        engine.generate_batch([PROMPT] * 3, 8, json_schema=[SCHEMAS["colours"]])
    with pytest.raises(GrammarError):
        Grammar("")


def test_pydantic_model_class(engine: Engine) -> None:
    pydantic = pytest.importorskip("pydantic", reason="pydantic is optional")

    class Point(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        x: int = pydantic.Field(ge=-50, le=50)
        label: str | None = pydantic.Field(default=None, max_length=8)

    for text in engine.generate_batch([PROMPT] * 4, 80, temperature=1.0, seed=2, json_schema=Point):
        Point.model_validate_json(text)


CORPUS_SEEDS = 20
CORPUS_TOKENS = 40


@pytest.fixture(scope="module")
def wide_engine(config: EngineConfig) -> Iterator[Engine]:
    """32 slots: the corpus decodes 1,300 sequences, as many at a time as two cores serve well."""
    with Engine(replace(config, max_concurrency=32, n_ctx=32 * 128)) as engine:
        engine.load_model()
        yield engine


def test_a_corpus_of_real_world_schemas_always_validates(wide_engine: Engine) -> None:
    """62 schemas as pydantic, OpenAI tools and schema-store files write them, plus ours: 20 seeds each, T=1.0."""
    pytest.importorskip("pydantic", reason="the corpus's first family is pydantic models (test extra)")
    from schema_corpus import corpus

    schemas = corpus() | {f"ours:{name}": schema for name, schema in SCHEMAS.items()}
    assert len(schemas) >= 60
    grammars = {name: Grammar.from_json_schema(schema) for name, schema in schemas.items()}  # all accepted
    names = [name for name in schemas for _ in range(CORPUS_SEEDS)]
    prompts = [f"{name.split(':')[1]}, as one JSON document:\n" for name in names]
    results = wide_engine.complete_batch(
        prompts, CORPUS_TOKENS, temperature=1.0, seed=100, grammar=[grammars[name] for name in names]
    )
    finished: collections.Counter[str] = collections.Counter()
    invalid = []
    for name, result in zip(names, results, strict=True):
        assert result.finish_reason in ("stop", "length"), result
        if result.finish_reason == "stop":
            finished[name] += 1
            try:
                check(result.text, schemas[name])
            except (ValueError, jsonschema.ValidationError) as exc:
                invalid.append((name, result.text, str(exc)[:200]))
    print(f"finished {sum(finished.values())}/{len(names)}; schemas shown {len(finished)}/{len(schemas)}")
    assert invalid == []
    # A small model sampled at T=1.0 rambles: a quarter of the outputs finish within the budget, which shows
    # most schemas (the others ran out of tokens, which the finish reason says; their prefixes are not checked).
    assert sum(finished.values()) >= len(names) // 4, finished
    assert len(finished) >= len(schemas) * 2 // 3, sorted(set(schemas) - set(finished))


def test_dict_of_int_never_yields_a_string(engine: Engine) -> None:
    """pydantic's ``dict[str, int]`` (``additionalProperties`` with a schema): the old converter's hole."""
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    prompt = 'Nicknames as JSON: {"robert": "bob", "alice": "ali", "william": "bill"}\nNicknames as JSON: '
    free = engine.generate(prompt, 12, temperature=0)
    assert '"' in free.split(":", 1)[1][:4]  # unconstrained, the model writes a string value here
    closed = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    for spec in (schema, closed):
        for result in engine.complete_batch([prompt] * 16, 40, temperature=1.0, seed=5, json_schema=spec):
            if result.finish_reason == "stop":
                value = json.loads(result.text)
                assert all(type(v) is int for v in value.values()), result.text
                check(result.text, spec)
            else:
                assert not re.search(r'":\s*"', result.text), result.text


def test_annotation_keywords_are_ignored(engine: Engine) -> None:
    plain = SCHEMAS["person"]
    annotated = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://example.com/person.json",
        "id": "person",
        "title": "Person",
        "description": "Someone",
        "$comment": "annotations only",
        "examples": [{"name": "Ann", "age": 3}],
        "default": {},
        "deprecated": False,
        "readOnly": False,
        "writeOnly": False,
        "x-kubernetes-preserve-unknown-fields": True,
        "x-vendor": {"anything": [1, 2]},
        **plain,
    }
    annotated["properties"] = {
        k: {**v, "title": k.title(), "description": "a field", "examples": ["x"]}
        for k, v in plain["properties"].items()
    }
    expected = engine.generate(PROMPT, 48, temperature=0, json_schema=plain)
    assert engine.generate(PROMPT, 48, temperature=0, json_schema=annotated) == expected
    check(expected, annotated)


FREE_PROMPTS = [
    "The three primary colours are",
    "def add(a, b):\n",
    "Alice is 30 years old. Bob is 25 years old. Carol is",
]


@pytest.mark.parametrize("prompt", FREE_PROMPTS)
def test_greedy_masks_never_change_an_allowed_choice(engine: Engine, prompt: str) -> None:
    """Constrained to one line, greedy text is the free text up to its first line break (then it must differ)."""
    free = engine.generate(prompt, 24, temperature=0)
    line = free.split("\n")[0]
    assert line and "\n" in free  # the case is real: the grammar refuses the free text's choice at the break
    constrained = engine.generate(prompt, 24, temperature=0, regex=r"[^\n]*")
    assert constrained.startswith(line)
    assert constrained != free


def test_greedy_json_equals_free_json_that_already_validates(engine: Engine) -> None:
    prompt = 'People as JSON lines:\n{"name": "Ann", "age": 31}\n{"name": "Bob", "age": 45}\n'
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    free = engine.generate(prompt, 24, temperature=0).split("\n")[0]
    check(free, schema)  # the model's own next line validates: the mask must not change one token of it
    assert engine.generate(prompt, 24, temperature=0, json_schema=schema) == free


def test_sampling_is_the_distribution_restricted_to_the_grammar(engine: Engine) -> None:
    """First tokens of 300 sampled answers against the softmax of the model's logits over the allowed tokens."""
    scipy_stats = pytest.importorskip("scipy.stats", reason="the chi-square test needs scipy (test extra)")
    prompt = "My favourite animal is the"
    words = [" cat", " dog", " horse", " owl", " fox"]
    allowed = sorted(
        {
            ids[0]
            for word in words
            for end in range(1, len(word) + 1)
            if len(ids := engine.tokenize(word[:end], add_special=False)) == 1
        }
    )
    logits = np.asarray(engine.logits(prompt), dtype=np.float64)[allowed]
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    pattern = "|".join(re.escape(w) for w in words)
    sampled = SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    results = engine.complete_batch([prompt] * 300, 1, sampler=sampled, seed=9, regex=f"({pattern})")
    firsts = collections.Counter(r.token_ids[0] for r in results)
    assert set(firsts) <= set(allowed)
    observed = np.array([firsts[t] for t in allowed], dtype=np.float64)
    keep = expected * 300 >= 5  # chi-square wants 5 expected per cell: pool the rare ones
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum()) * 300
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    assert scipy_stats.chisquare(observed, expected).pvalue > 0.001
    greedy = engine.complete(prompt, 1, temperature=0, regex=f"({pattern})")
    assert greedy.token_ids[0] == allowed[int(np.argmax(logits))]  # the best allowed token


def test_regex_and_lark_grammars(engine: Engine) -> None:
    phone = r"\+1 [0-9]{3}-[0-9]{4}"
    for text in engine.generate_batch(["Call me at"] * 8, 16, temperature=1.0, seed=3, regex=phone):
        assert re.fullmatch(phone, text), text
    lark = 'start: answer " because " reason\nanswer: "yes" | "no"\nreason: /[a-z ]{1,20}/'
    grammar = Grammar.from_lark(lark)
    results = engine.complete_batch(["Is water wet?"] * 8, 24, temperature=1.0, seed=4, grammar=grammar)
    finished = [r.text for r in results if r.finish_reason == "stop"]
    assert finished
    for text in finished:
        assert re.fullmatch(r"(yes|no) because [a-z ]{1,20}", text), text
    assert Grammar('start: "a"').kind == "lark"  # Grammar(text) tells Lark from GBNF
    with pytest.raises(GrammarError, match="regular expression"):
        engine.generate("x", 4, regex="a(")
    with pytest.raises(GrammarError, match="Lark"):
        Grammar.from_lark("start: undefined_rule")
    with pytest.raises(TypeError):
        engine.generate("x", 4, regex=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most one"):
        engine.generate("x", 4, regex="a", json=True)


def test_grammars_speculate(config: EngineConfig) -> None:
    """A constrained request may speculate: greedy text with prompt-lookup drafts equals it without them."""
    record = '{"city": "Lyon", "country": "France", "population": 522250, "river": "Rhone"}'
    prompt = f"Copy the record exactly.\nRecord: {record}\nCopy: "
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "population": {"type": "integer"},
            "river": {"type": "string"},
        },
        "required": ["city", "country", "population", "river"],
        "additionalProperties": False,
    }
    with Engine(replace(config, speculative=PromptLookup())) as engine:
        plain = engine.complete(prompt, 64, temperature=0, json_schema=schema, speculative=False)
        engine.complete("Hi", 1)  # sets the worker's speculation up
        price_rows_as_free(engine)  # drafts whatever this CPU's step costs (free_rows.py)
        drafted = engine.complete(prompt, 64, temperature=0, json_schema=schema)
        assert drafted.speculative is not None and drafted.speculative.accepted > 0  # drafts passed the grammar
        assert drafted.text == plain.text
        check(drafted.text, schema)
        sampled = engine.complete_batch([prompt] * 4, 64, temperature=1.0, seed=8, json_schema=schema)
        assert any(r.finish_reason == "stop" for r in sampled)
        for result in sampled:
            if result.finish_reason == "stop":
                check(result.text, schema)
    with SpeculativeEngine(SpeculativeConfig(config, PromptLookup())) as engine:
        engine.generate("Hi", 1)
        price_rows_as_free(engine)
        result = engine.complete(prompt, 64, temperature=0, json_schema=schema)
        assert result.text == plain.text
        assert result.speculative is not None and result.speculative.accepted > 0


def test_dates_are_calendar_dates() -> None:
    """``format: date``/``date-time`` are written as days that exist (what Python's ``datetime`` takes)."""
    import datetime as dt

    date = json.loads(Grammar.from_json_schema({"type": "string", "format": "date"}).text)["pattern"]
    stamp = json.loads(Grammar.from_json_schema({"type": "string", "format": "date-time"}).text)["pattern"]
    for year in (1, 400, 1900, 2000, 2023, 2024, 9999):
        for month in range(1, 13):
            for day in range(1, 32):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                try:
                    dt.date.fromisoformat(text)
                    exists = True
                except ValueError:
                    exists = False
                assert bool(re.fullmatch(date, text)) == exists, text
                assert bool(re.fullmatch(stamp, text + "T23:59:59.5+01:00")) == exists, text
    assert not re.fullmatch(date, "0000-01-01")
    assert not re.fullmatch(stamp, "2024-01-01T23:59:60Z")
    assert re.fullmatch(stamp, "2024-01-01T00:00:00Z")


def test_gbnf_as_llama_cpp_python_writes_it(engine: Engine, reference: Any) -> None:
    """GBNF from llama-cpp-python's own schema converter (200-deep optionals for ``maxLength``) keeps working,
    and greedy decoding under it writes what llama-cpp-python's ``LlamaGrammar`` writes."""
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 200}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    gbnf = json_schema_to_gbnf(json.dumps(schema))
    prompt = 'People as JSON lines:\n{"name": "Ann", "age": 31}\n'
    ours = engine.generate(prompt, 48, temperature=0, grammar=gbnf)
    reference.llm.reset()
    theirs = reference.llm.create_completion(
        prompt, max_tokens=48, temperature=0, grammar=LlamaGrammar.from_string(gbnf, verbose=False)
    )
    assert ours == theirs["choices"][0]["text"]
    check(ours, schema)


@pytest.mark.parametrize("greedy", [False, True])
def test_the_sampler_shortlist_is_the_whole_masked_chain(greedy: bool) -> None:
    """The top-k (+ penalty window) candidates ``Sampler`` hands the chain give the very token that llama.cpp's
    chain picks over the whole vocabulary with the refused tokens at minus infinity (no model needed)."""
    from types import SimpleNamespace

    import llama_cpp

    from oxillama_py.llama.sampling import Sampler, _Candidates

    n_vocab = 4000
    rng = np.random.default_rng(0)
    config = SamplerConfig(
        temperature=0.0 if greedy else 0.8, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.5, repeat_last_n=16
    )
    model = SimpleNamespace(n_vocab=n_vocab)
    full = _Candidates(n_vocab)
    for trial in range(150):
        logits = (rng.standard_normal(n_vocab) * 3).astype(np.float32)
        allowed = rng.random(n_vocab) < (0.02 if trial % 3 == 0 else 0.5)
        allowed[int(rng.integers(n_vocab))] = True
        history = [int(t) for t in rng.choice(np.flatnonzero(logits > 2), size=12)]  # likely tokens, penalised
        matcher = SimpleNamespace(allowed=lambda a=allowed: a, consume=lambda token: None, error=lambda: "")
        ours = Sampler(model, config, seed=trial, matcher=matcher)  # type: ignore[arg-type]
        theirs = Sampler(model, config, seed=trial)  # type: ignore[arg-type]
        for token in history:
            ours.accept(token)
            llama_cpp.llama_sampler_accept(theirs.ptr, token)
        full.resize(n_vocab)
        full.fill(np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32))
        llama_cpp.llama_sampler_apply(theirs.ptr, full.pointer)
        assert ours._choose(logits, matcher) == full.selected(), trial  # type: ignore[arg-type]
        ours.close()
        theirs.close()


def test_grammar_text_forms(engine: Engine) -> None:
    expr = Grammar('expr ::= "yes" | "no"', root="expr")
    assert engine.generate("Pick:", 4, temperature=0, grammar=expr) in ("yes", "no")
    named_start = 'root ::= start\nstart ::= "go" | "stop"'  # GBNF may name a rule start, as llama.cpp allows
    assert Grammar(named_start).kind == "gbnf"
    assert engine.generate("Pick:", 4, temperature=0, grammar=named_start) in ("go", "stop")
    literal = 'root ::= "(a a?)?"'  # text that looks like a repetition, inside a literal, is left alone
    assert engine.generate("Write:", 12, temperature=0, grammar=literal) == "(a a?)?"
    with pytest.raises(GrammarError, match="root"):
        Grammar('expr ::= "a"')


INTERSECTIONS: dict[str, dict[str, Any]] = {  # objects joined with others stay open: each stays satisfiable
    "required_beyond_properties": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]},
    "properties_beside_anyof": {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "anyOf": [{"properties": {"b": {"type": "boolean"}}, "required": ["b"]}],
    },
    "all_of_refs": {
        "$defs": {
            "A": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            "B": {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        },
        "allOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}],
    },
    "ref_beside_properties": {
        "$defs": {"A": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}},
        "$ref": "#/$defs/A",
        "properties": {"b": {"type": "boolean"}},
        "required": ["b"],
    },
}


@pytest.mark.parametrize("name", list(INTERSECTIONS))
def test_joined_objects_stay_satisfiable(engine: Engine, name: str) -> None:
    schema = INTERSECTIONS[name]
    prompt = 'Record: {"a": 1, "b": true}\nRecord: {"a": 7, "b": false}\nRecord: '  # short records, as these are
    results = engine.complete_batch([prompt] * 6, 64, temperature=1.0, seed=21, json_schema=schema)
    finished = [r.text for r in results if r.finish_reason == "stop"]
    assert finished
    for text in finished:
        check(text, schema)


def test_the_vocabulary_is_read_once_and_let_go_with_the_model(config: EngineConfig) -> None:
    import gc

    from oxillama_py.llama import guidance

    gc.collect()  # engines other tests dropped let go of theirs first: the count is this engine's
    with Engine(config) as engine:
        engine.generate("x", 1, json=True)
        first = guidance.vocabularies_held()
        engine.generate("x", 1, regex="[0-9]")
        assert guidance.vocabularies_held() == first  # one per model, whatever the grammars
    gc.collect()
    assert guidance.vocabularies_held() == first - 1
