"""Constrained output: a GBNF grammar, or one made from a JSON Schema, for one request.

:class:`Grammar` is pure data (it is checked against the model's vocabulary by
llama.cpp when a request is prepared, before any decoding); the sampler side
lives in :mod:`oxillama_py.llama.sampling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_bool, describe
from ..errors import GrammarError
from .schema import ANY_JSON_OBJECT, schema_to_gbnf

__all__ = ["Constraint", "Grammar", "GrammarError", "grammar_for", "resolve_grammar"]


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar (llama.cpp's format) whose start rule is ``root``.

    Build one from GBNF text, from a JSON Schema (:meth:`from_json_schema`, a
    dict or a pydantic model class), or for any JSON object (:meth:`json_object`).
    """

    gbnf: str
    root: str = "root"
    schema: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The JSON Schema this grammar was made from, if any."""

    def __post_init__(self) -> None:
        if not isinstance(self.gbnf, str) or not self.gbnf.strip():
            raise GrammarError("a grammar must be a non-empty GBNF string")
        if not isinstance(self.root, str) or not self.root:
            raise GrammarError("a grammar's root must be a rule name")
        if "\x00" in self.gbnf:
            raise GrammarError("a grammar must not contain NUL characters")

    @classmethod
    def from_json_schema(cls, schema: object) -> Grammar:
        """Output that is JSON valid against ``schema``; :class:`GrammarError` names what cannot be honoured."""
        document = _schema_document(schema)
        return cls(schema_to_gbnf(document), schema=document)

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object."""
        return cls.from_json_schema(ANY_JSON_OBJECT)


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


def resolve_grammar(grammar: object, json_schema: object, json: object) -> Constraint:
    """The constraint of a call, from its ``grammar`` / ``json_schema`` / ``json`` options.

    ``grammar`` and ``json_schema`` may be lists (one entry per prompt, ``None``
    for an unconstrained one): a batch whose prompts each have their own.
    """
    check_bool("json", json)
    given = [name for name, value in (("grammar", grammar), ("json_schema", json_schema)) if value is not None]
    if json:
        given.append("json")
    if len(given) > 1:
        raise ValueError(f"give at most one of grammar, json_schema and json (got {', '.join(given)})")
    if grammar is not None:
        if isinstance(grammar, (list, tuple)):
            return tuple(None if g is None else _one_grammar(g) for g in grammar)
        return _one_grammar(grammar)
    if json_schema is not None:
        if isinstance(json_schema, (list, tuple)):
            return tuple(None if s is None else Grammar.from_json_schema(s) for s in json_schema)
        return Grammar.from_json_schema(json_schema)
    if json:
        return Grammar.json_object()
    return None


def _one_grammar(grammar: object) -> Grammar:
    if isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar(grammar)
    raise TypeError(f"grammar must be a GBNF str or a Grammar, got {describe(grammar)}")


def grammar_for(constraint: Constraint, index: int, count: int) -> Grammar | None:
    """Prompt ``index``'s grammar (of ``count`` prompts)."""
    if isinstance(constraint, tuple):
        if len(constraint) != count:
            raise ValueError(f"{len(constraint)} grammars or schemas were given for {count} prompts")
        return constraint[index]
    return constraint
