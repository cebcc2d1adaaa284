"""A chat call's tool options checked against its other options: the plan, and the grammar that enforces it.

Tools that constrain the answer are a constraint of their own, so they and
``grammar`` / ``json_schema`` / ``regex`` / ``json`` are either-or (with
``tool_choice="none"`` the tools constrain nothing and the others apply).
Their grammar also ends the answer, so ``stop`` strings do not apply to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..options import GenerateKwargs
from ..tools import ToolPlan, plan_tools

__all__ = ["Tools", "tool_options"]

Tools = Sequence[Mapping[str, Any]] | None
"""OpenAI's ``tools``: ``[{"type": "function", "function": {"name", "description", "parameters"}}]``."""

_CONSTRAINTS = ("grammar", "json_schema", "regex", "json")


def tool_options(
    tools: object, tool_choice: object, parallel_tool_calls: object, options: GenerateKwargs
) -> tuple[ToolPlan | None, GenerateKwargs]:
    """The checked plan, and ``options`` with the tool grammar added when the tools constrain the answer."""
    plan = plan_tools(tools, tool_choice, parallel_tool_calls)
    if plan is None or not plan.constrains:
        return plan, options
    given = [name for name in _CONSTRAINTS if options.get(name) not in (None, False)]
    if given:
        raise ValueError(
            f"tools constrain the answer to calls, so they cannot be combined with {', '.join(given)} "
            "(give tool_choice='none' to use tools only as a description)"
        )
    # The grammar decides where a constrained answer ends: a stop string (often "\n", which the JSON
    # may hold between its tokens) would cut a call's arguments short.
    return plan, {**options, "grammar": plan.grammar(), "stop": None}
