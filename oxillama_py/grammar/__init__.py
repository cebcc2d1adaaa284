"""Constrained output: a grammar (GBNF, Lark, a regular expression or a JSON Schema) for one request.

:class:`Grammar` is pure data, compiled and checked by llguidance when it is
made, so a malformed grammar or a schema keyword that cannot be enforced fails
before any work; the token masks are computed per sequence in
:mod:`oxillama_py.llama.guidance`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import llguidance

from ..checks import check_bool, describe
from ..errors import GrammarError
from .gbnf import gbnf_as_lark
from .narrow import narrow

__all__ = ["Constraint", "Grammar", "GrammarError", "GrammarKind", "grammar_for", "resolve_grammar"]

GrammarKind = Literal["gbnf", "lark", "regex", "json_schema"]

JSON_WHITESPACE = r"(?: |\n{1,2}[ \t]{0,20})?"
"""Between JSON tokens: nothing, a space, or a line break and an indent (as llama.cpp's schema grammars allow).

Bounded, so that a sampled answer cannot fill its budget with blank lines; a
schema's own ``"x-guidance"`` settings take precedence.
"""

_LARK_SYNTAX = re.compile(r"(?m)^\s*(%llguidance\b|start\s*:(?!:))")  # GBNF's rules are "name ::="


@dataclass(frozen=True)
class Grammar:
    """A constraint on a request's output, compiled by llguidance.

    ``Grammar(text)`` takes GBNF (llama.cpp's format, start rule ``root`` or
    ``root=``) or a Lark grammar (llguidance's dialect, start rule ``start``);
    :meth:`from_lark`, :meth:`from_regex`, :meth:`from_json_schema` (a dict or
    a pydantic model class) and :meth:`json_object` make the others. Every one
    raises :class:`GrammarError` at once when it cannot be enforced.
    """

    text: str
    """The grammar's source: GBNF or Lark text, a regular expression, or a JSON Schema as JSON (objects closed:
    :mod:`oxillama_py.grammar.narrow`)."""
    root: str = "root"
    """GBNF's start rule (only for GBNF)."""
    kind: GrammarKind = "gbnf"
    schema: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The JSON Schema this grammar was made from, if any."""
    compiled: str = field(default="", init=False, compare=False, repr=False)
    """llguidance's form of the grammar (what a matcher is built from)."""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise GrammarError("a grammar must be a non-empty string")
        if "\x00" in self.text:
            raise GrammarError("a grammar must not contain NUL characters")
        if not isinstance(self.root, str) or not self.root:
            raise GrammarError("a grammar's root must be a rule name")
        kind = self.kind
        if kind == "gbnf" and _LARK_SYNTAX.search(self.text):
            kind = "lark"  # Grammar(text) takes either: a Lark grammar has a "start:" rule or "%llguidance"
            object.__setattr__(self, "kind", kind)
        if kind not in ("gbnf", "lark", "regex", "json_schema"):
            raise GrammarError(f"a grammar's kind must be gbnf, lark, regex or json_schema, not {kind!r}")
        object.__setattr__(self, "compiled", _compile(kind, self.text, self.root))

    @property
    def gbnf(self) -> str:
        """The GBNF text this grammar was made from (``AttributeError`` for the other kinds)."""
        if self.kind != "gbnf":
            raise AttributeError(f"a {self.kind} grammar has no GBNF text")
        return self.text

    @classmethod
    def from_lark(cls, text: str) -> Grammar:
        """A Lark grammar in llguidance's dialect (``start: ...``; ``%json {...}`` embeds a schema)."""
        return cls(text, kind="lark")

    @classmethod
    def from_regex(cls, pattern: str) -> Grammar:
        """Text that matches the regular expression ``pattern`` as a whole (Rust ``regex`` syntax)."""
        return cls(pattern, kind="regex")

    @classmethod
    def from_json_schema(cls, schema: object) -> Grammar:
        """JSON valid against ``schema``; :class:`GrammarError` names what cannot be enforced."""
        document = _schema_document(schema)
        try:
            text = json.dumps(narrow(document))  # key order kept: llguidance writes properties in it
        except (TypeError, ValueError) as exc:
            raise GrammarError(f"json_schema must be JSON-serialisable: {exc}") from None
        except RecursionError:
            raise GrammarError("json_schema is nested too deeply") from None
        return cls(text, kind="json_schema", schema=document)

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object."""
        return cls.from_json_schema({"type": "object"})


@functools.lru_cache(maxsize=256)
def _compile(kind: GrammarKind, text: str, root: str) -> str:
    """llguidance's grammar for ``text``, checked (cached: a server sees the same schema again and again)."""
    try:
        if kind == "json_schema":
            compiled = llguidance.LLMatcher.grammar_from_json_schema(text, defaults=_JSON_DEFAULTS)
        elif kind == "regex":
            compiled = llguidance.LLMatcher.grammar_from_regex(text)
        elif kind == "lark":
            compiled = llguidance.LLMatcher.grammar_from_lark(text)
        else:
            compiled = llguidance.LLMatcher.grammar_from_lark(gbnf_as_lark(text, root))
    except ValueError as exc:
        raise GrammarError(f"malformed {_NAMES[kind]}: {_reason(str(exc))}") from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled)
    if failed:
        raise GrammarError(f"{_NAMES[kind]} cannot be enforced: {_reason(messages[0] if messages else '')}")
    return compiled


if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

_JSON_DEFAULTS: JsonCompileOptions = {"whitespace_pattern": JSON_WHITESPACE}
_NAMES = {"gbnf": "GBNF grammar", "lark": "Lark grammar", "regex": "regular expression", "json_schema": "json_schema"}


def _reason(message: str) -> str:
    text = message.removeprefix("Failed to convert the grammar from GBNF to Lark: ").strip()
    return text or "llguidance gave no reason"


def _schema_document(schema: object) -> Mapping[str, Any]:
    to_schema = getattr(schema, "model_json_schema", None)  # a pydantic model class
    if isinstance(schema, type) and callable(to_schema):
        document = to_schema()
        if isinstance(document, Mapping):
            return document
    if isinstance(schema, Mapping):
        return schema
    raise GrammarError(f"json_schema must be a dict or a pydantic model class, got {type(schema).__name__}")


Constraint = Grammar | tuple[Grammar | None, ...] | None
"""A call's constraint: one grammar for every prompt, one per prompt, or none."""


def resolve_grammar(grammar: object, json_schema: object, json: object, regex: object = None) -> Constraint:
    """The constraint of a call, from its ``grammar`` / ``json_schema`` / ``json`` / ``regex`` options.

    ``grammar``, ``json_schema`` and ``regex`` may be lists (one entry per
    prompt, ``None`` for an unconstrained one): a batch whose prompts each
    have their own.
    """
    check_bool("json", json)
    named = (("grammar", grammar), ("json_schema", json_schema), ("regex", regex))
    given = [name for name, value in named if value is not None]
    if json:
        given.append("json")
    if len(given) > 1:
        raise ValueError(f"give at most one of grammar, json_schema, regex and json (got {', '.join(given)})")
    if grammar is not None:
        return _each(grammar, _one_grammar)
    if json_schema is not None:
        return _each(json_schema, Grammar.from_json_schema)
    if regex is not None:
        return _each(regex, _one_regex)
    if json:
        return Grammar.json_object()
    return None


def _each(value: object, make: Any) -> Constraint:
    if isinstance(value, (list, tuple)):
        return tuple(None if v is None else make(v) for v in value)
    return make(value)  # type: ignore[no-any-return]


def _one_grammar(grammar: object) -> Grammar:
    if isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar(grammar)
    raise TypeError(f"grammar must be a GBNF or Lark str or a Grammar, got {describe(grammar)}")


def _one_regex(pattern: object) -> Grammar:
    if isinstance(pattern, str):
        return Grammar.from_regex(pattern)
    raise TypeError(f"regex must be a str, got {describe(pattern)}")


def grammar_for(constraint: Constraint, index: int, count: int) -> Grammar | None:
    """Prompt ``index``'s grammar (of ``count`` prompts)."""
    if isinstance(constraint, tuple):
        if len(constraint) != count:
            raise ValueError(f"{len(constraint)} grammars or schemas were given for {count} prompts")
        return constraint[index]
    return constraint
