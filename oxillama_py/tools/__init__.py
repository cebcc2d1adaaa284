"""Tool calling: OpenAI's ``tools`` for chat calls, checked, described to the model, constrained and read back.

:mod:`.spec` checks the options into a :class:`ToolPlan`; :mod:`.generic` is
the format the answer is written in (and the grammar that enforces it);
:mod:`.history` checks the tool turns of a conversation; :mod:`.parse` reads
an answer, streamed or whole, into text and :class:`~oxillama_py.ToolCall`
objects. Rendering the prompt (template with ``tools``, or the generic
format) is :mod:`oxillama_py.engine.tool_prompt`.
"""

from __future__ import annotations

from .parse import AnswerReader, ArgumentsDelta, CallStart, TextDelta, ToolEvent, read_answer
from .spec import Function, ToolChoice, ToolPlan, plan_tools

__all__ = [
    "AnswerReader",
    "ArgumentsDelta",
    "CallStart",
    "Function",
    "TextDelta",
    "ToolChoice",
    "ToolEvent",
    "ToolPlan",
    "plan_tools",
    "read_answer",
]
