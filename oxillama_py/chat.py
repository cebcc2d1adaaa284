"""Chat templates: a list of messages rendered into the prompt the model was trained on.

Templates are Jinja2, rendered as the Hugging Face convention does (``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``),
in a sandbox: a template read from a GGUF file is untrusted input. A model's own
``tokenizer.chat_template`` wins; a file without one gets the built-in template
its vocabulary points to (Gemma's turn tokens → ``"gemma"``), else ChatML. Pure
Python: nothing here touches llama.cpp.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn, Protocol

from .chat_tools import check_calls
from .checks import check_type, describe

__all__ = ["BUILTIN_TEMPLATES", "ChatTemplate", "Message", "check_messages", "resolve_template"]

Message = Mapping[str, Any]
"""``{"role": "system" | "developer" | "user" | "assistant", "content": str}``; with tools, also an
assistant's ``{"role": "assistant", "content": str | None, "tool_calls": [...]}`` and a tool's answer
``{"role": "tool", "tool_call_id": str, "content": str}`` (OpenAI's shapes)."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# Each built-in folds a system message the way its model family expects, and names
# the marker that ends a turn: a stop string where the model would print it as text.
_GEMMA = """\
{%- if messages[0].role in ('system', 'developer') -%}
  {%- set preamble = messages[0].content | trim ~ '\\n\\n' -%}{%- set turns = messages[1:] -%}
{%- else -%}
  {%- set preamble = '' -%}{%- set turns = messages -%}
{%- endif -%}
{{- bos_token -}}
{%- for m in turns -%}
  {%- if m.role not in ('user', 'assistant') -%}
    {{- raise_exception('a system message may only come first') -}}
  {%- endif -%}
  {%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
    {{- raise_exception('Gemma conversations alternate user and assistant turns, starting with user') -}}
  {%- endif -%}
  {{- '<start_of_turn>' ~ ('model' if m.role == 'assistant' else 'user') ~ '\\n' -}}
  {{- (preamble if loop.first else '') ~ (m.content | trim) ~ '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""

_CHATML = """\
{%- for m in messages -%}
  {{- '<|im_start|>' ~ ('system' if m.role == 'developer' else m.role) ~ '\\n' ~ m.content ~ '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""

_LLAMA3 = """\
{{- bos_token -}}
{%- for m in messages -%}
  {{- '<|start_header_id|>' ~ ('system' if m.role == 'developer' else m.role) ~ '<|end_header_id|>\\n\\n' -}}
  {{- m.content | trim ~ '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
"""

_PHI3 = """\
{%- for m in messages -%}
  {{- '<|' ~ ('system' if m.role == 'developer' else m.role) ~ '|>\\n' ~ m.content ~ '<|end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}
"""

_MISTRAL = """\
{%- if messages[0].role in ('system', 'developer') -%}
  {%- set preamble = messages[0].content ~ '\\n\\n' -%}{%- set turns = messages[1:] -%}
{%- else -%}
  {%- set preamble = '' -%}{%- set turns = messages -%}
{%- endif -%}
{{- bos_token -}}
{%- for m in turns -%}
  {%- if m.role not in ('user', 'assistant') -%}
    {{- raise_exception('a system message may only come first') -}}
  {%- endif -%}
  {%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
    {{- raise_exception('Mistral conversations alternate user and assistant turns, starting with user') -}}
  {%- endif -%}
  {%- if m.role == 'user' -%}
    {{- '[INST] ' ~ (preamble if loop.first else '') ~ m.content ~ ' [/INST]' -}}
  {%- else -%}
    {{- m.content ~ eos_token -}}
  {%- endif -%}
{%- endfor -%}
"""


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja2 chat template and the strings that end the assistant's turn."""

    name: str
    source: str
    stop: tuple[str, ...] = ()

    @property
    def takes_tools(self) -> bool:
        """Whether the template reads ``tools`` (Hugging Face templates of tool-calling models do)."""
        return _reads_tools(self.source)

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "",
        eos_token: str = "",
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text; a template's own ``raise_exception`` surfaces as ``ValueError``.

        ``tools`` (OpenAI's ``tools`` entries) reach the template as ``tools``, as transformers passes them.
        """
        checked = check_messages(messages)
        extra = {} if tools is None else {"tools": tools}
        try:
            text: str = _compile(self.source).render(
                messages=checked,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                raise_exception=_raise_exception,
                **extra,
            )
        except _TemplateRaised as exc:
            raise ValueError(f"chat template {self.name!r} rejected the messages: {exc}") from None
        except Exception as exc:  # a broken template from a GGUF file or a user: say which
            raise ValueError(f"chat template {self.name!r} failed to render: {type(exc).__name__}: {exc}") from None
        return text


BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {
    "gemma": ChatTemplate("gemma", _GEMMA, ("<end_of_turn>",)),
    "chatml": ChatTemplate("chatml", _CHATML, ("<|im_end|>",)),
    "llama3": ChatTemplate("llama3", _LLAMA3, ("<|eot_id|>",)),
    "phi3": ChatTemplate("phi3", _PHI3, ("<|end|>",)),
    "mistral": ChatTemplate("mistral", _MISTRAL, ("[INST]",)),
}

# A vocabulary token that only one family's template uses, in the order checked.
_MARKERS = (
    ("<start_of_turn>", "gemma"),
    ("<|start_header_id|>", "llama3"),
    ("<|im_start|>", "chatml"),
    ("<|assistant|>", "phi3"),
    ("[INST]", "mistral"),
)


def resolve_template(
    chosen: str | None,
    *,
    model_template: str | None,
    has_token: Callable[[str], bool],
) -> ChatTemplate:
    """The template to use: the caller's choice, else the model's own, else the one its vocabulary points to.

    ``chosen`` is a built-in name or a Jinja2 source (anything containing ``{``).
    """
    if chosen is not None:
        check_type("chat_template", chosen, str, "a str or None")
        if chosen in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[chosen]
        if "{" not in chosen:
            names = ", ".join(sorted(BUILTIN_TEMPLATES))
            raise ValueError(f"unknown chat template {chosen!r}: give one of {names}, or a Jinja2 template string")
        _compile(chosen)
        return ChatTemplate("custom", chosen, _stops_in(chosen))
    if model_template:
        return ChatTemplate("model", model_template, _stops_in(model_template))
    for marker, name in _MARKERS:
        if has_token(marker):
            return BUILTIN_TEMPLATES[name]
    return BUILTIN_TEMPLATES["chatml"]


class Vocabulary(Protocol):
    """What rendering needs of a loaded vocabulary (:class:`~oxillama_py.llama.Model` has it)."""

    bos: int
    eos: int

    def chat_template(self) -> str | None: ...

    def has_token(self, text: str) -> bool: ...

    def special_text(self, token: int) -> str: ...


def template_for(vocabulary: Vocabulary, chosen: str | None) -> ChatTemplate:
    """``chosen`` (a name or Jinja2), else the GGUF's own template, else the built-in its vocabulary points to."""
    return resolve_template(chosen, model_template=vocabulary.chat_template(), has_token=vocabulary.has_token)


def render_messages(
    vocabulary: Vocabulary, messages: list[dict[str, Any]], chosen: str | None, *, add_generation_prompt: bool
) -> str:
    """The conversation as the template writes it, BOS text included (blocking: reads the vocabulary)."""
    return template_for(vocabulary, chosen).render(
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=vocabulary.special_text(vocabulary.bos),
        eos_token=vocabulary.special_text(vocabulary.eos),
    )


def _stops_in(source: str) -> tuple[str, ...]:
    """The turn-end markers of the known families that a custom or GGUF template uses."""
    markers = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")
    return tuple(marker for marker in markers if marker in source)


def check_messages(messages: object) -> list[dict[str, Any]]:
    """Plain ``{"role", "content"}`` dicts (with the tool fields where given), or ``ValueError``/``TypeError``
    naming the bad message."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {describe(messages)}")
    if not messages:
        raise ValueError("messages must not be empty")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', got {message!r}")
        role = message.get("role")
        content = message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}] has unknown role {role!r}; roles are {', '.join(sorted(ROLES))}")
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls and content is None:
            content = ""  # an assistant turn that only calls tools
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}]['content'] must be a str, got {type(content).__name__}")
        item: dict[str, Any] = {"role": role, "content": content}
        if calls:
            item["tool_calls"] = check_calls(f"messages[{index}]['tool_calls']", calls)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise ValueError(f"messages[{index}]['tool_call_id'] must be the str id of the call it answers")
            item["tool_call_id"] = call_id
            if isinstance(message.get("name"), str):
                item["name"] = message["name"]
        checked.append(item)
    return checked


class _TemplateRaised(Exception):
    pass


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(value: object, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=32)
def _reads_tools(source: str) -> bool:
    from jinja2 import meta

    return "tools" in meta.find_undeclared_variables(_compile(source).environment.parse(source))


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # As transformers renders chat templates: loop controls, tojson keeping non-ASCII, strftime_now.
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"chat template is not valid Jinja2: {exc}") from None
