"""Tool calling in the library: ``chat(..., tools=...)`` on the real model, the generic format, bad input.

The calls are constrained by the structured-output engine, so a named function
or ``"required"`` always yields a call whose arguments validate against the
function's ``parameters``, even sampled at temperature 1.0.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anyio
import pytest

from oxillama_py import AsyncEngine, CompletionResult, Engine, EngineConfig, ToolCall
from oxillama_py.tools import AnswerReader, ArgumentsDelta, CallStart, TextDelta, plan_tools

jsonschema = pytest.importorskip("jsonschema", reason="validating tool-call arguments needs jsonschema (test extra)")


def tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


WEATHER = tool(
    "get_weather",
    "The current weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
)
ADD = tool(
    "add",
    "Add two numbers.",
    {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]},
)
# Five realistic signatures: nested objects, enums, arrays, optional fields, numbers (bounded, so that a
# sampled call always ends within its budget).
SIGNATURES = [
    WEATHER,
    tool(
        "book_flight",
        "Book a flight.",
        {
            "type": "object",
            "properties": {
                "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
                "cabin": {"type": "string", "enum": ["economy", "business", "first"]},
                "flexible": {"type": "boolean"},
            },
            "required": ["origin", "destination", "passengers"],
        },
    ),
    tool(
        "create_event",
        "Put an event in the calendar.",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 30},
                "when": {
                    "type": "object",
                    "properties": {
                        "day": {"type": "integer", "minimum": 1, "maximum": 31},
                        "month": {"type": "integer", "minimum": 1, "maximum": 12},
                        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                    },
                    "required": ["day", "month"],
                },
                "attendees": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 20},
                    "maxItems": 3,
                },
            },
            "required": ["title", "when"],
        },
    ),
    tool(
        "search_products",
        "Search the shop.",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 30},
                "max_price": {"type": "number", "minimum": 0, "maximum": 10000},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["new", "sale", "eco"]}, "maxItems": 3},
                "sort": {"type": "string", "enum": ["price", "rating", "newest"]},
            },
            "required": ["query"],
        },
    ),
    tool(
        "set_thermostat",
        "Set a room's temperature.",
        {
            "type": "object",
            "properties": {
                "room": {"type": "string", "enum": ["kitchen", "bedroom", "office"]},
                "celsius": {"type": "number", "minimum": 10, "maximum": 30},
                "schedule": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                            "celsius": {"type": "number", "minimum": 10, "maximum": 30},
                        },
                        "required": ["hour", "celsius"],
                    },
                    "maxItems": 2,
                },
            },
            "required": ["room", "celsius"],
        },
    ),
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def parameters(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = next(
        t["function"]["parameters"] for t in [*SIGNATURES, ADD] if t["function"]["name"] == name
    )
    return schema


def assert_valid_call(call: ToolCall, name: str | None = None) -> None:
    assert call.id.startswith("call_")
    if name is not None:
        assert call.name == name
    jsonschema.validate(call.parse_arguments(), parameters(call.name))


# -- model-free: the options and the format ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "choice", "parallel", "error", "match"),
    [
        ("get_weather", None, None, TypeError, "tools must be a list"),
        ([{"type": "retrieval"}], None, None, ValueError, r"tools\[0\].type must be 'function'"),
        ([{"type": "function", "function": {"name": "has space"}}], None, None, ValueError, "name must be"),
        ([WEATHER, WEATHER], None, None, ValueError, "given twice"),
        ([tool("f", "", {"type": "array"})], None, None, ValueError, "must describe an object"),
        ([WEATHER], "sometimes", None, ValueError, "tool_choice must be"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, None, ValueError, "not in tools"),
        ([WEATHER], 3, None, TypeError, "tool_choice must be a str or a dict"),
        ([WEATHER], None, "yes", TypeError, "parallel_tool_calls must be a bool"),
        (None, "required", None, ValueError, "needs tools"),
    ],
)
def test_bad_tool_options_raise_before_any_work(
    tools: Any, choice: Any, parallel: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        plan_tools(tools, choice, parallel)


def test_the_plan_follows_tool_choice() -> None:
    plan = plan_tools([WEATHER, ADD], {"type": "function", "function": {"name": "add"}}, True)
    assert plan is not None and [f.name for f in plan.callable] == ["add"] and plan.one_call
    auto = plan_tools([WEATHER, ADD], None, None)
    assert auto is not None and auto.choice == "auto" and auto.one_call  # one call unless asked for more
    assert not plan_tools([WEATHER], "required", True).one_call  # type: ignore[union-attr]
    assert plan_tools([], None, None) is None
    none = plan_tools([WEATHER], "none", None)
    assert none is not None and not none.constrains


def test_reader_gives_the_same_answer_whatever_the_pieces() -> None:
    answer = (
        '{"tool_calls": [{"name": "f", "arguments": {"s": "a \\"}\\" b", "n": [1, {"x": 2}]}}, '
        '{"name": "g", "arguments": {}}]}'
    )
    text = '{"response": "caf\\u00e9 \\ud83d\\ude00 \\"quoted\\"\\n"}'
    for size in (1, 2, 3, 5, len(answer)):
        reader = AnswerReader()
        events = [e for i in range(0, len(answer), size) for e in reader.feed(answer[i : i + size])]
        calls = reader.calls()
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [
            ("f", {"s": 'a "}" b', "n": [1, {"x": 2}]}),
            ("g", {}),
        ]
        starts = [e for e in events if isinstance(e, CallStart)]
        assert [(s.index, s.id, s.name) for s in starts] == [(0, calls[0].id, "f"), (1, calls[1].id, "g")]
        fragments = "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == 0)
        assert fragments == calls[0].arguments and reader.text == ""
        reader = AnswerReader()
        deltas = [e for i in range(0, len(text), size) for e in reader.feed(text[i : i + size])]
        assert all(isinstance(d, TextDelta) for d in deltas)
        assert reader.text == 'café 😀 "quoted"\n' and reader.calls() == ()


# -- the real model ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_required_and_named_always_call_with_valid_arguments(aengine: AsyncEngine) -> None:
    required = await aengine.chat(QUESTION, 60, tools=[WEATHER, ADD], tool_choice="required", temperature=0)
    assert required.finish_reason == "stop" and len(required.tool_calls) == 1 and required.text == ""
    assert_valid_call(required.tool_calls[0])
    named = await aengine.chat(
        QUESTION, 60, tools=[WEATHER, ADD], tool_choice={"type": "function", "function": {"name": "add"}}, temperature=0
    )
    assert [c.name for c in named.tool_calls] == ["add"]
    assert_valid_call(named.tool_calls[0], "add")


def test_stop_strings_do_not_cut_a_constrained_call(engine: Engine) -> None:
    """The grammar ends a tool answer: stop strings the JSON holds leave the arguments whole."""
    stopped = engine.chat(QUESTION, 60, tools=[WEATHER, ADD], tool_choice="required", temperature=0, stop=[",", '"'])
    plain = engine.chat(QUESTION, 60, tools=[WEATHER, ADD], tool_choice="required", temperature=0)
    assert stopped.tool_calls and [c.arguments for c in stopped.tool_calls] == [c.arguments for c in plain.tool_calls]
    assert_valid_call(stopped.tool_calls[0])


def test_sync_engine_and_auto(engine: Engine) -> None:
    result = engine.chat(QUESTION, 40, tools=[WEATHER], temperature=0)
    assert isinstance(result, CompletionResult)
    if result.tool_calls:  # "auto": the model chose a call, constrained to the end
        assert result.finish_reason == "stop"
        assert_valid_call(result.tool_calls[0], "get_weather")
    else:  # or words, unwrapped from {"response": ...} (this model's choice here)
        assert result.text and not result.text.startswith('{"')
    # An answer in words, streamed, is the same text unwrapped from its JSON as it arrives.
    greeting = [{"role": "user", "content": "Say hello to me in French, in words."}]
    whole = engine.chat(greeting, 30, tools=[ADD], temperature=0)
    streamed = "".join(engine.stream_chat(greeting, 30, tools=[ADD], temperature=0))
    assert streamed == whole.text
    # tool_choice="none": tools are no constraint, and a template without tools is not told of them
    plain = engine.chat(greeting, 20, tools=[ADD], tool_choice="none", temperature=0)
    assert plain.tool_calls == () and plain.text == engine.chat(greeting, 20, temperature=0).text


def test_fifty_sampled_calls_validate(config: EngineConfig) -> None:
    """5 signatures x 10 seeds at T=1.0, decoded together in one batch of 50: every call's arguments validate."""
    asks = {
        "get_weather": "Is it raining in Lyon?",
        "book_flight": "Book me a flight from Paris to New York for two.",
        "create_event": "Put lunch with Ana on the 3rd of May at noon in my calendar.",
        "search_products": "Find cheap eco running shoes.",
        "set_thermostat": "Make the bedroom warmer tonight.",
    }
    engine = Engine(replace(config, max_concurrency=50, n_ctx=50 * 512))
    aengine = engine.async_engine()
    results: dict[str, list[CompletionResult]] = {}

    async def one(name: str) -> None:
        choice = {"type": "function", "function": {"name": name}} if name != "get_weather" else "required"
        call = await aengine.prepare_chat(
            [{"role": "user", "content": asks[name]}],
            160,
            n=10,
            tools=[t for t in SIGNATURES if t["function"]["name"] == name],
            tool_choice=choice,
            temperature=1.0,
            seed=2024,
        )
        results[name] = await call.run()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for name in asks:
                group.start_soon(one, name)

    with engine:
        anyio.run(main)
    calls = 0
    for name, answers in results.items():
        for result in answers:
            assert result.finish_reason == "stop" and len(result.tool_calls) == 1, result
            assert_valid_call(result.tool_calls[0], name)
            calls += 1
    assert calls == 50


def test_history_with_tool_turns_is_rendered_in_the_generic_format(engine: Engine) -> None:
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    prompt = engine.apply_chat_template(history, tools=[WEATHER])
    assert '"name": "get_weather"' in prompt and "The current weather in a city." in prompt
    assert '<start_of_turn>model\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}' in prompt
    assert '{"tool_response": {"name": "get_weather", "id": "call_1", "content": "18 C and sunny"}}' in prompt
    answer = engine.chat(history, 40, tools=[WEATHER], tool_choice="required", temperature=0)
    assert_valid_call(answer.tool_calls[0], "get_weather")


HERMES_LIKE = """\
{%- if tools %}<|im_start|>system
# Tools
<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}
{%- else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_a_template_that_takes_tools_gets_them(engine: Engine) -> None:
    history = [
        *QUESTION,
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "tool_call_id": "c", "content": "3"},
    ]
    prompt = engine.apply_chat_template(history, chat_template=HERMES_LIKE, tools=[WEATHER, ADD])
    assert '<tools>{"type": "function", "function": {"name": "get_weather"' in prompt
    assert '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>' in prompt  # arguments as a dict
    assert "<|im_start|>tool\n3<|im_end|>" in prompt
    result = engine.chat(history, 40, chat_template=HERMES_LIKE, tools=[WEATHER, ADD], tool_choice="required", seed=1)
    assert_valid_call(result.tool_calls[0])


def test_tools_and_another_constraint_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="cannot be combined with json_schema"):
        engine.chat(QUESTION, 10, tools=[WEATHER], json_schema={"type": "object"})
    with pytest.raises(ValueError, match="not in tools"):
        engine.chat(QUESTION, 10, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "add"}})
    with pytest.raises(ValueError, match="tool_call_id"):
        engine.chat([*QUESTION, {"role": "tool", "content": "x"}], 10)
    # with tool_choice="none" the tools constrain nothing, so a schema applies
    result = engine.chat(QUESTION, 30, tools=[WEATHER], tool_choice="none", json_schema={"type": "object"}, seed=1)
    assert result.tool_calls == ()
