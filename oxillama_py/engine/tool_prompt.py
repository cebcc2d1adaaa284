"""What a chat template is rendered with when tools are in play: the template's own ``tools``, or the generic format.

A template that reads ``tools`` (a Hugging Face template of a tool-calling
model) gets them, and the conversation's tool turns in the shape transformers
gives them. Any other template (the default Gemma file, the built-ins) gets
plain turns: the tools described in a system text and the tool turns written
as text (:mod:`oxillama_py.tools.generic`). Either way the answer is
constrained to the generic JSON format, so a template that takes tools is
also told that format.
"""

from __future__ import annotations

from typing import Any

from ..chat import ChatTemplate
from ..chat_tools import has_tool_turns, template_messages
from ..tools import ToolPlan
from ..tools.generic import plain_messages, system_text

__all__ = ["tool_conversation"]


def tool_conversation(
    template: ChatTemplate, messages: list[dict[str, Any]], plan: ToolPlan | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages, and the ``tools`` argument, that ``template`` is rendered with."""
    if plan is None and not has_tool_turns(messages):
        return messages, None
    system = None
    if plan is not None and plan.constrains:  # under "none" a template without tools is not told of them
        described = [(f.name, f.description, f.parameters) for f in plan.functions]
        system = system_text(described, plan.choice, not plan.one_call)
    if template.takes_tools:
        tools = [f.openai() for f in plan.functions] if plan is not None else None
        shaped = template_messages(messages)
        if plan is not None and plan.constrains:  # the template's own call syntax is not what will be written
            shaped = _with_system(shaped, system_text([], plan.choice, not plan.one_call))
        return shaped, tools
    return plain_messages(messages, system), None


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": (first.get("content") or "") + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
