"""The generic tool format, for chat templates that know nothing of tools (as llama.cpp's server has one).

The answer is one JSON object, written exactly as :func:`answer_grammar` allows::

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    {"response": "It is sunny."}

the second only under ``tool_choice="auto"``. The tools are described in a
system text (:func:`system_text`); earlier calls are written into the
assistant's turns in that same JSON, and the tools' answers into user turns
as ``{"tool_response": {...}}`` lines (:func:`plain_messages`), so any
template renders them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from ..grammar import JSON_WHITESPACE, Grammar
from ..grammar.narrow import narrow

__all__ = [
    "CALLS_OPEN",
    "CALL_ARGUMENTS",
    "CALL_OPEN",
    "MAX_CALLS",
    "RESPONSE_OPEN",
    "answer_grammar",
    "calls_text",
    "plain_messages",
    "system_text",
]

RESPONSE_OPEN = '{"response": "'
CALLS_OPEN = '{"tool_calls": ['
CALL_OPEN = '{"name": "'
CALL_ARGUMENTS = '", "arguments": '
MAX_CALLS = 8
"""At most this many calls in one answer (a small model may otherwise repeat one until ``max_tokens``)."""


def answer_grammar(functions: tuple[tuple[str, Mapping[str, Any]], ...], *, text: bool, parallel: bool) -> Grammar:
    """Calls of ``functions`` (each argument object valid against its schema), or also a text answer."""
    key = tuple((name, json.dumps(parameters, sort_keys=False)) for name, parameters in functions)
    return _grammar(key, text, parallel)


@lru_cache(maxsize=64)
def _grammar(functions: tuple[tuple[str, str], ...], text: bool, parallel: bool) -> Grammar:
    rules = []
    alternatives = []
    for index, (name, parameters) in enumerate(functions):
        schema = {**narrow(bounded(json.loads(parameters))), "x-guidance": {"whitespace_pattern": JSON_WHITESPACE}}
        head = _lark(CALL_OPEN + name + CALL_ARGUMENTS)
        rules.append(f"call_{index}: {head} args_{index} {_lark('}')}")
        rules.append(f"args_{index}: %json {json.dumps(schema)}")
        alternatives.append(f"call_{index}")
    more = f"({_lark(', ')} call){{0,{MAX_CALLS - 1}}}" if parallel else ""
    answers = [f"{_lark(CALLS_OPEN)} call {more} {_lark(']}')}"]
    if text:
        answers.append(f'{_lark(RESPONSE_OPEN[:-1])} %json {{"type": "string"}} {_lark("}")}')
    lines = [f"start: {' | '.join(answers)}", f"call: {' | '.join(alternatives)}", *rules]
    return Grammar.from_lark("\n".join(lines) + "\n")


_LIMIT = 10**15
_DATA = frozenset({"const", "enum", "default", "examples"})  # values, not schemas: never rewritten


def bounded(schema: Any) -> Any:
    """``schema`` with its numbers bounded, so that a sampled call always ends.

    A number is written with at most 15 integer digits and 6 decimals, with
    no exponent (``multipleOf: 1e-6`` and bounds of +/-1e15 where the schema
    gives none); an integer with at most 15 digits. What is written still
    validates against the schema as given: at temperature 1.0 a small model
    otherwise writes digits until ``max_tokens`` (``15.2596963121756476...``).
    """
    if isinstance(schema, list):
        return [bounded(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {key: value if key in _DATA else bounded(value) for key, value in schema.items()}
    kind = out.get("type")
    if not isinstance(kind, (str, list)) or not all(isinstance(k, str) for k in kind):
        return out  # no type, or a "properties" map with a property named "type"
    kinds = (
        {k for k in kind if isinstance(k, str)}
        if isinstance(kind, list)
        else {kind}
        if isinstance(kind, str)
        else set()
    )
    if kinds & {"number", "integer"} and not {"const", "enum"} & set(out):
        if "number" in kinds and "multipleOf" not in out:
            out["multipleOf"] = 1e-6
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -_LIMIT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = _LIMIT
    return out


def _lark(literal: str) -> str:
    return json.dumps(literal)  # a Lark string literal takes JSON's escapes


def system_text(functions: Sequence[tuple[str, str, Mapping[str, Any]]], choice: str, parallel: bool) -> str:
    """What the model is told: the tools (unless ``functions`` is empty), and the JSON answer the grammar allows."""
    lines = []
    if functions:
        entries = [{"name": n, **({"description": d} if d else {}), "parameters": p} for n, d, p in functions]
        listed = json.dumps(entries, ensure_ascii=False)
        lines.append(f"You can call these tools:\n{listed}\n")
    example = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments as the tool\'s parameters say>}}]}'
    lines.append(f"To call a tool, answer with this JSON only:\n{example}")
    if not parallel:
        lines.append("Call one tool at a time.")
    if choice == "auto":
        lines.append('To answer in words instead, write {"response": then your answer as a JSON string, then }.')
    elif choice == "required":
        lines.append("You must call a tool now.")
    else:
        lines.append(f"You must call the tool {choice!r} now.")
    lines.append("A tool's answer comes back to you as a tool_response.")
    if choice == "auto":
        lines.append(
            "Once the tool_response has what the user asked, give the answer in words: do not call the tool again."
        )
    return "\n".join(lines)


def calls_text(calls: Sequence[tuple[str, Any]]) -> str:
    """Calls as the answer writes them (earlier turns of the history)."""
    written = ", ".join(
        CALL_OPEN + name + CALL_ARGUMENTS + json.dumps(arguments, ensure_ascii=False) + "}" for name, arguments in calls
    )
    return CALLS_OPEN + written + "]}"


def plain_messages(messages: Sequence[Mapping[str, Any]], system: str | None) -> list[dict[str, str]]:
    """``role``/``content`` turns any template renders: calls and tool answers written as text.

    ``system`` (the tools' description) joins the first system message, or
    opens the conversation. Consecutive turns of one role are merged, since
    several tool answers in a row become user turns, and templates like
    Gemma's insist that turns alternate.
    """
    names: dict[str, str] = {}
    out: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            name = message.get("name") or names.get(str(message.get("tool_call_id")), "")
            response = {"name": name, "id": message.get("tool_call_id", ""), "content": content}
            role, content = "user", json.dumps({"tool_response": response}, ensure_ascii=False)
        elif message.get("tool_calls"):
            calls = message["tool_calls"]
            names.update((call["id"], call["function"]["name"]) for call in calls)
            written = calls_text([(c["function"]["name"], _arguments(c["function"]["arguments"])) for c in calls])
            content = (content + "\n" if content else "") + written
        if out and out[-1]["role"] == role and role != "system":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    if system is not None:
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {"role": out[0]["role"], "content": out[0]["content"] + "\n\n" + system}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments
