"""Tool turns in a conversation: an assistant's earlier ``tool_calls`` and ``role: "tool"`` answers.

Checked into one normal form (OpenAI's, arguments as given), and turned
into the form Hugging Face templates read (arguments as a dict) for the
templates that take ``tools``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .checks import describe

__all__ = ["check_calls", "has_tool_turns", "template_messages"]


def check_calls(where: str, calls: object) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``: ``[{"id", "type": "function", "function": {"name", "arguments"}}]``
    (the arguments as given: JSON text or a dict)."""
    if isinstance(calls, (str, bytes, Mapping)) or not isinstance(calls, Sequence):
        raise ValueError(f"{where} must be a list of tool calls, got {describe(calls)}")
    checked = []
    for index, call in enumerate(calls):
        at = f"{where}[{index}]"
        if not isinstance(call, Mapping):
            raise ValueError(f"{at} must be a dict, got {describe(call)}")
        function = call.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ValueError(f"{at}.function must be a dict with a 'name'")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, (str, Mapping)):  # JSON text (OpenAI's) or a dict (transformers')
            raise ValueError(f"{at}.function.arguments must be JSON text or a dict, got {describe(arguments)}")
        call_id = call.get("id")
        if call_id is None:
            call_id = f"call_{index}"
        if not isinstance(call_id, str):
            raise ValueError(f"{at}.id must be a str, got {describe(call_id)}")
        named = {"name": function["name"], "arguments": arguments}
        checked.append({"id": call_id, "type": "function", "function": named})
    return checked


def has_tool_turns(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as Hugging Face templates read them: tool-call arguments as dicts where they parse."""
    out = []
    for message in messages:
        if not message.get("tool_calls"):
            out.append(dict(message))
            continue
        calls = []
        for call in message["tool_calls"]:
            function = call["function"]
            arguments = function["arguments"]
            if isinstance(arguments, str):
                with contextlib.suppress(ValueError):  # not JSON: the template gets the text
                    arguments = json.loads(arguments)
            calls.append({**call, "function": {"name": function["name"], "arguments": arguments}})
        out.append({**message, "tool_calls": calls})
    return out
