"""Tool calling in OpenAI's shapes: the request's ``tools`` / ``tool_choice`` / tool turns, and the answer's calls.

The checking and the format are the library's (:mod:`oxillama_py.tools`);
this module says which request field a bad value is in, writes
``message.tool_calls`` and ``finish_reason: "tool_calls"``, and turns the
stream of an answer into OpenAI's ``delta.tool_calls`` chunks (the id and
name first, then argument fragments).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import GrammarError
from ..results import CompletionResult, ToolCall
from ..tools import AnswerReader, ArgumentsDelta, CallStart, TextDelta, ToolPlan, plan_tools
from .errors import bad_request

__all__ = ["ToolFields", "ToolStream", "assistant_message", "message_tool_fields", "parse_tool_fields", "tool_finish"]


@dataclass(frozen=True)
class ToolFields:
    """A request's tool fields, as the library takes them (checked)."""

    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: object = None
    parallel_tool_calls: bool | None = None
    plan: ToolPlan | None = None

    @property
    def constrains(self) -> bool:
        """Whether answers are written in the tool format (tools given, ``tool_choice`` not ``"none"``)."""
        return self.plan is not None and self.plan.constrains

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`~oxillama_py.AsyncEngine.prepare_chat` / ``count_chat_tokens``."""
        if self.tools is None:
            return {}
        parallel = self.parallel_tool_calls
        return {"tools": list(self.tools), "tool_choice": self.tool_choice, "parallel_tool_calls": parallel}


def parse_tool_fields(fields: Mapping[str, Any]) -> ToolFields:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``; a 400 names the field at fault."""
    for legacy in ("functions", "function_call"):
        if fields.get(legacy) is not None:
            raise bad_request(f"'{legacy}' (the legacy form) is not supported by this server: use 'tools'", legacy)
    tools, choice, parallel = fields.get("tools"), fields.get("tool_choice"), fields.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("'tools' must be an array of function tools", "tools")
    if choice is not None and not isinstance(choice, (str, dict)):
        raise bad_request("'tool_choice' must be a string or an object", "tool_choice")
    try:
        plan_tools(tools, None, parallel)
    except GrammarError as exc:
        raise bad_request(f"'tools': {exc}", "tools", code="invalid_schema") from None
    except (TypeError, ValueError) as exc:
        raise bad_request(f"'tools': {exc}", "tools") from None
    try:
        plan = plan_tools(tools, choice, parallel)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"'tool_choice': {exc}", "tool_choice") from None
    if plan is None:
        return ToolFields()
    return ToolFields(tuple(tools or ()), choice, parallel, plan)


def message_tool_fields(param: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """The tool fields of one history message: an assistant's ``tool_calls``, a tool's ``tool_call_id``."""
    extra: dict[str, Any] = {}
    calls = message.get("tool_calls")
    if calls is not None and message.get("role") == "assistant":
        if not isinstance(calls, list):
            raise bad_request(f"{param}.tool_calls must be an array", f"{param}.tool_calls")
        if calls:
            extra["tool_calls"] = calls  # checked by the library (a ValueError naming the message is a 400)
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise bad_request(f"{param}.tool_call_id must be the id of the call it answers", f"{param}.tool_call_id")
        extra["tool_call_id"] = call_id
        if isinstance(message.get("name"), str):
            extra["name"] = message["name"]
    return extra


def openai_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"index": index} if index is not None else {}
    return {**body, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def assistant_message(result: CompletionResult) -> dict[str, Any]:
    """The whole answer's ``message``: content, and the calls when there are any (content ``None`` then, if empty)."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    return {
        "role": "assistant",
        "content": result.text or None,
        "tool_calls": [openai_call(call) for call in result.tool_calls],
    }


def tool_finish(reason: str, has_calls: bool) -> str:
    """``"tool_calls"`` for an answer that ended on its calls (one cut by ``max_tokens`` stays ``"length"``)."""
    return "tool_calls" if has_calls and reason == "stop" else reason


class ToolStream:
    """One choice's stream of a tool-format answer, as OpenAI's deltas."""

    def __init__(self) -> None:
        self.reader = AnswerReader()

    @property
    def has_calls(self) -> bool:
        return bool(self.reader.calls())

    def deltas(self, piece: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in self.reader.feed(piece):
            if isinstance(event, TextDelta):
                out.append({"content": event.text})
            elif isinstance(event, CallStart):
                head = {"name": event.name, "arguments": ""}
                call = {"index": event.index, "id": event.id, "type": "function", "function": head}
                out.append({"tool_calls": [call]})
            elif isinstance(event, ArgumentsDelta):
                out.append({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})
        return out
