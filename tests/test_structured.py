"""Structured output with the real model: grammars and JSON Schemas, sampled at temperature 1.0.

Every output of a constrained call must parse and validate (``jsonschema``);
a grammar's language is all a call can write, whatever the sampler picks.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from oxillama_py import (
    AsyncEngine,
    Engine,
    EngineConfig,
    Grammar,
    GrammarError,
    OxiLlamaError,
    PromptLookup,
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
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_sampled_outputs_validate_over_fifty_seeds(engine: Engine, name: str) -> None:
    schema = SCHEMAS[name]
    results = engine.complete_batch([PROMPT] * SEEDS, 200, temperature=1.0, seed=1000, json_schema=schema)
    assert len({r.text for r in results}) > 1  # seed + i: fifty different samples
    for result in results:
        assert result.finish_reason == "stop", result
        check(result.text, schema)


def test_one_batch_of_eight_each_with_its_own_schema(engine: Engine) -> None:
    names = list(SCHEMAS)
    schemas: list[dict[str, Any] | None] = [SCHEMAS[n] for n in names] + [None, None]
    steps = engine.stats.decode_steps
    results = engine.complete_batch([PROMPT] * 8, 160, temperature=1.0, seed=7, json_schema=schemas)
    assert engine.stats.decode_steps - steps < sum(r.completion_tokens for r in results)  # decoded together
    for result, schema in zip(results, schemas, strict=True):
        if schema is not None:
            assert result.finish_reason == "stop"
            check(result.text, schema)
    grammars = [Grammar.from_json_schema(s) if s else None for s in schemas]
    again = engine.complete_batch([PROMPT] * 8, 160, temperature=1.0, seed=7, grammar=grammars)
    for result, schema in zip(again, schemas, strict=True):
        if schema is not None:
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
    async with aengine.stream(PROMPT, 64, json=True, temperature=1.0, seed=4) as stream:
        text = "".join([piece async for piece in stream])
    assert isinstance(json.loads(text), dict)
    batch = await aengine.generate_batch([PROMPT, PROMPT], 64, json_schema=schema, temperature=1.0, seed=5)
    for text in batch:
        check(text, schema)
    chat = await aengine.chat([{"role": "user", "content": "Three colours?"}], 64, json_schema=schema)
    check(chat.text, schema)
    async with aengine.stream_chat([{"role": "user", "content": "Colours?"}], 64, json_schema=schema) as stream:
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
        ({"type": "string", "format": "email"}, "format"),
        ({"type": "integer", "multipleOf": 3}, "multipleOf"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, "oneOf"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
        ({"type": "string", "pattern": "(?=x)y"}, "pattern"),
        ({"type": "string", "pattern": "a\\1"}, "pattern"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"type": "array", "items": [{"type": "integer"}]}, "items"),
    ],
)
def test_unsupported_schema_keywords_are_named(engine: Engine, schema: dict[str, Any], keyword: str) -> None:
    steps = engine.stats.decode_steps
    with pytest.raises(GrammarError, match=keyword.replace("$", "\\$")):
        engine.generate(PROMPT, 8, json_schema=schema)
    assert engine.stats.decode_steps == steps  # nothing decoded
    with pytest.raises(GrammarError):
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


def test_speculative_engine_refuses_a_grammar(config: EngineConfig) -> None:
    with SpeculativeEngine(SpeculativeConfig(config, PromptLookup())) as engine:
        with pytest.raises(GrammarError, match="SpeculativeEngine"):
            engine.generate(PROMPT, 8, json=True)
        assert not engine.is_loaded()  # refused before any work
