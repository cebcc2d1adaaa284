"""A chat's ``tools`` / ``tool_choice`` / ``parallel_tool_calls``, checked once into a :class:`ToolPlan`.

The plan is what every later step reads: which functions exist, whether a
call is required (and of which function), how many calls one answer may make,
and the grammar that constrains the answer. Checking compiles that grammar, so
a schema llguidance cannot enforce fails here, before any work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..checks import describe
from ..grammar import Grammar
from .generic import answer_grammar

__all__ = ["Function", "ToolChoice", "ToolPlan", "plan_tools"]

ToolChoice = Literal["none", "auto", "required"] | str
"""``"none"``, ``"auto"``, ``"required"``, or the name of the one function to call."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


@dataclass(frozen=True)
class Function:
    """One function tool: its name, what it does, and the JSON Schema of its arguments (an object)."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry (what a Hugging Face template's ``tools`` gets)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters)
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolPlan:
    """The checked tool options of one chat call."""

    functions: tuple[Function, ...]
    choice: ToolChoice
    """``"none"``, ``"auto"``, ``"required"`` or one function's name."""
    parallel: bool
    """Whether one answer may hold several calls (as asked: a named function is called once, see
    :attr:`one_call`)."""

    @property
    def constrains(self) -> bool:
        """Whether the answer is written in the tool format (anything but ``tool_choice="none"``)."""
        return self.choice != "none"

    @property
    def callable(self) -> tuple[Function, ...]:
        """The functions the answer may call."""
        if self.choice in ("none", "auto", "required"):
            return self.functions if self.choice != "none" else ()
        return tuple(f for f in self.functions if f.name == self.choice)

    @property
    def one_call(self) -> bool:
        """Whether the answer holds one call at most: ``parallel_tool_calls=False``, or a named function
        (forcing a function asks for that call, as OpenAI answers it)."""
        return not self.parallel or self.choice not in ("none", "auto", "required")

    def grammar(self) -> Grammar:
        """The constraint on the answer (:mod:`.generic`'s JSON format)."""
        return answer_grammar(
            tuple((f.name, f.parameters) for f in self.callable), text=self.choice == "auto", parallel=not self.one_call
        )


def plan_tools(tools: object, tool_choice: object, parallel_tool_calls: object) -> ToolPlan | None:
    """The plan, or ``None`` when no tools are given; ``TypeError``/``ValueError`` name the bad argument."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise TypeError(f"parallel_tool_calls must be a bool or None, got {describe(parallel_tool_calls)}")
    if tools is None or (isinstance(tools, Sequence) and not isinstance(tools, (str, bytes)) and not tools):
        if tool_choice not in (None, "none", "auto"):
            raise ValueError(f"tool_choice={_show(tool_choice)} needs tools")
        return None
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list of function tools, got {describe(tools)}")
    functions = tuple(_function(index, tool) for index, tool in enumerate(tools))
    names = [f.name for f in functions]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"tools: the function name {name!r} is given twice")
    choice = _choice(tool_choice, names)
    # One call unless asked for more, as llama.cpp's server does: a small model given the choice repeats its call.
    plan = ToolPlan(functions, choice, bool(parallel_tool_calls))
    if plan.constrains:
        plan.grammar()  # compiled (and cached) now: a schema that cannot be enforced fails before any work
    return plan


def _function(index: int, tool: object) -> Function:
    where = f"tools[{index}]"
    if not isinstance(tool, Mapping):
        raise TypeError(f"{where} must be a dict, got {describe(tool)}")
    if "function" in tool or "type" in tool:  # OpenAI's {"type": "function", "function": {...}}
        if tool.get("type") != "function":
            raise ValueError(f"{where}.type must be 'function' (the only tool type here), got {tool.get('type')!r}")
        spec = tool.get("function")
        where += ".function"
        if not isinstance(spec, Mapping):
            raise TypeError(f"{where} must be a dict with 'name' and 'parameters', got {describe(spec)}")
    else:  # the bare function definition
        spec = tool
    unknown = set(spec) - _FUNCTION_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}")
    description = spec.get("description")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise TypeError(f"{where}.description must be a str, got {describe(description)}")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise TypeError(f"{where}.strict must be a bool, got {describe(strict)}")
    return Function(name, description, _parameters(where, spec.get("parameters")))


def _parameters(where: str, parameters: object) -> Mapping[str, Any]:
    """An object schema: arguments are always a JSON object (OpenAI's rule), so the streamed ones can be cut."""
    if parameters is None:
        return {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping):
        raise TypeError(f"{where}.parameters must be a JSON Schema dict, got {describe(parameters)}")
    kind = parameters.get("type")
    if kind is None:
        parameters = {**parameters, "type": "object"}
    elif kind != "object":
        raise ValueError(f"{where}.parameters must describe an object (type 'object'), got type {kind!r}")
    try:
        json.dumps(parameters)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.parameters must be JSON-serialisable: {exc}") from None
    return parameters


def _choice(tool_choice: object, names: list[str]) -> ToolChoice:
    if tool_choice is None:
        return "auto"
    if tool_choice in ("none", "auto", "required"):
        return tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise ValueError(
                "tool_choice must be 'none', 'auto', 'required' or "
                f"{{'type': 'function', 'function': {{'name': ...}}}}, got {_show(tool_choice)}"
            )
        if name not in names:
            raise ValueError(f"tool_choice names the function {name!r}, which is not in tools ({', '.join(names)})")
        return name
    if isinstance(tool_choice, str):
        raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or a named function, got {tool_choice!r}")
    raise TypeError(f"tool_choice must be a str or a dict, got {describe(tool_choice)}")


def _show(value: object) -> str:
    return repr(value) if not isinstance(value, Mapping) else json.dumps(value, default=str)
