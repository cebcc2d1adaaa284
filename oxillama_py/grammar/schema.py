"""JSON Schema → GBNF: a grammar whose every sentence is JSON that validates against the schema.

The grammar is *sound*, not complete: it may leave out valid documents (it
writes no extra properties, properties in the schema's order, compact
whitespace), but everything it allows validates. A keyword it cannot honour
raises :class:`~oxillama_py.errors.GrammarError` naming it, never a silently
looser grammar. Supported: ``type`` (one or a list), ``properties`` /
``required``, ``additionalProperties`` (no extra properties are written),
``items`` / ``minItems`` / ``maxItems``, ``enum``, ``const``, ``pattern`` /
``minLength`` / ``maxLength``, ``minimum`` / ``maximum`` /
``exclusiveMinimum`` / ``exclusiveMaximum``, ``anyOf``, ``allOf`` of one
schema, ``$ref`` to ``#/$defs/...`` or ``#/definitions/...``, and annotations
(``title``, ``description``, ``default``, ``examples``, ...).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import GrammarError
from .regex import JSON_CHAR, pattern_to_gbnf

__all__ = ["ANY_JSON_OBJECT", "schema_to_gbnf"]

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "additionalProperties",  # the grammar never writes properties the schema does not name
        "$defs",
        "definitions",
    }
)
_KEYWORDS = {
    "object": {"properties", "required"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"pattern", "minLength", "maxLength"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(),
    "null": set(),
}
_GENERIC = {"type", "enum", "const", "anyOf", "allOf", "$ref"}
_MAX_DIGITS = 15  # integer digits of a number the grammar writes; keeps float parsing exact

_PRIMITIVES = {
    "ws": '" "?',
    "char": JSON_CHAR,
    "string": '"\\"" char* "\\""',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "integer": '"-"? ( "0" | [1-9] [0-9]{0,14} )',
    "number": 'integer ( "." [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,2} )?',
    "value": "object-any | array-any | string | number | boolean | null",
    "object-any": '"{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? ws "}"',
    "array-any": '"[" ws ( value ( "," ws value )* )? ws "]"',
}

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def schema_to_gbnf(schema: object) -> str:
    """The GBNF grammar (root rule ``root``) of ``schema``; :class:`GrammarError` if it cannot be honoured."""
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, Mapping):
        raise GrammarError(f"a JSON Schema must be a dict, got {type(schema).__name__}")
    converter = _Converter(schema)
    root = converter.visit(schema, "root")
    converter.rules["root"] = root
    return converter.render()


class _Converter:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.rules: dict[str, str] = {}
        self.used: set[str] = set()
        self.refs: dict[str, str] = {}

    def render(self) -> str:
        lines = [f"root ::= {self.rules.pop('root')}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        needed = self._primitives_needed("\n".join(lines))
        lines += [f"{name} ::= {_PRIMITIVES[name]}" for name in _PRIMITIVES if name in needed]
        return "\n".join(lines) + "\n"

    def _primitives_needed(self, text: str) -> set[str]:
        needed: set[str] = set()
        frontier = text
        while True:
            found = {name for name in _PRIMITIVES if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", frontier)}
            new = found - needed
            if not new:
                return needed
            needed |= new
            frontier = "\n".join(_PRIMITIVES[name] for name in new)

    def rule(self, hint: str, body: str) -> str:
        """Name ``body`` as a rule (unique name from ``hint``) and return the name."""
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name in _PRIMITIVES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    # -- schemas --------------------------------------------------------------------------
    def visit(self, schema: object, hint: str) -> str:
        """A GBNF expression for ``schema``."""
        if schema is True or schema == {}:
            return "value"
        if not isinstance(schema, Mapping):
            raise GrammarError(f"a (sub)schema must be an object or a boolean, got {schema!r}")
        unknown = set(schema) - _ANNOTATIONS - _GENERIC - set().union(*_KEYWORDS.values())
        if unknown:
            raise GrammarError(f"unsupported JSON Schema keyword(s): {', '.join(sorted(unknown))}")
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise GrammarError("unsupported JSON Schema keyword: allOf (only allOf of a single schema)")
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self.visit({**parts[0], **rest} if isinstance(parts[0], Mapping) else parts[0], hint)
        if "anyOf" in schema:
            branches = schema["anyOf"]
            if not isinstance(branches, list) or not branches:
                raise GrammarError("'anyOf' must be a non-empty list of schemas")
            rest = {k: v for k, v in schema.items() if k not in ("anyOf",) and k not in _ANNOTATIONS}
            if rest:
                raise GrammarError(f"unsupported JSON Schema: anyOf beside {', '.join(sorted(rest))}")
            alternatives = [self.visit(b, f"{hint}-{i}") for i, b in enumerate(branches)]
            return "( " + " | ".join(alternatives) + " )"
        if "const" in schema:
            return _json_literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError("'enum' must be a non-empty list")
            return "( " + " | ".join(_json_literal(v) for v in values) + " )"
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise GrammarError("'type' must not be an empty list")
            alternatives = [self.visit({**schema, "type": k}, f"{hint}-{k}") for k in kind]
            return "( " + " | ".join(alternatives) + " )"
        if kind is None:
            inferred = [k for k, words in _KEYWORDS.items() if words & set(schema)]
            if len(inferred) > 1 and set(inferred) != {"integer", "number"}:
                raise GrammarError(f"a schema without 'type' mixes keywords of {', '.join(inferred)}")
            if not inferred:
                return "value"
            kind = "number" if "number" in inferred else inferred[0]
        if kind not in _KEYWORDS:
            raise GrammarError(f"unsupported JSON Schema type: {kind!r}")
        # Keywords of other types do not constrain this one (JSON Schema ignores them), e.g.
        # maxLength in {"type": ["string", "null"], "maxLength": 8} when the value is null.
        visit: Any = getattr(self, f"visit_{kind}")
        return str(visit(schema, hint))

    def ref(self, ref: object) -> str:
        if not isinstance(ref, str):
            raise GrammarError("'$ref' must be a string")
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
        if match is None:
            raise GrammarError(f"unsupported $ref {ref!r}: only '#/$defs/Name' and '#/definitions/Name'")
        if ref in self.refs:
            return self.refs[ref]
        defs = self.document.get(match.group(1))
        if not isinstance(defs, Mapping) or match.group(2) not in defs:
            raise GrammarError(f"$ref {ref!r} points to nothing in the schema")
        name = self.rule(f"def-{match.group(2)}", "")  # named first: a definition may refer to itself
        self.refs[ref] = name
        self.rules[name] = self.visit(defs[match.group(2)], name)
        return name

    def visit_null(self, schema: Mapping[str, Any], hint: str) -> str:
        return "null"

    def visit_boolean(self, schema: Mapping[str, Any], hint: str) -> str:
        return "boolean"

    def visit_string(self, schema: Mapping[str, Any], hint: str) -> str:
        low = _count(schema, "minLength", 0) or 0
        high = _count(schema, "maxLength", None)
        if high is not None and high < low:
            raise GrammarError(f"maxLength {high} < minLength {low}")
        if "pattern" in schema:
            if low or high is not None:
                raise GrammarError("unsupported JSON Schema: 'pattern' together with minLength/maxLength")
            return self.rule(f"{hint}-string", '"\\"" ' + pattern_to_gbnf(schema["pattern"]) + ' "\\""')
        if low == 0 and high is None:
            return "string"
        repeat = f"{{{low},{'' if high is None else high}}}"
        return self.rule(f"{hint}-string", f'"\\"" char{repeat} "\\""')

    def visit_integer(self, schema: Mapping[str, Any], hint: str) -> str:
        low, high = _bounds(schema, integer=True)
        if low is None and high is None:
            return "integer"
        if low is not None and high is not None and low > high:
            raise GrammarError(f"no integer lies within the bounds of {hint}")
        return self.rule(f"{hint}-int", _int_range(low, high))

    def visit_number(self, schema: Mapping[str, Any], hint: str) -> str:
        if not {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & set(schema):
            return "number"
        low, high = _number_limits(schema)
        whole_low, whole_high = _bounds(schema, integer=True)
        alternatives = []
        if whole_low is None or whole_high is None or whole_low <= whole_high:
            alternatives.append(_int_range(whole_low, whole_high))
        # k.f with a fraction that is never all zeros lies strictly between k and k + 1
        fraction = '"." [0-9]{0,14} [1-9]'
        pos_low = 0 if low is None else max(0, math.ceil(low))
        pos_high = None if high is None else math.floor(high) - 1
        if pos_high is None or pos_low <= pos_high:
            alternatives.append(f"( {_uint_range(pos_low, pos_high)} ) {fraction}")
        neg_low = 0 if high is None else max(0, math.ceil(-high))
        neg_high = None if low is None else math.floor(-low) - 1
        if neg_high is None or neg_low <= neg_high:
            alternatives.append(f'"-" ( {_uint_range(neg_low, neg_high)} ) {fraction}')
        if not alternatives:
            raise GrammarError(f"unsupported JSON Schema: bounds of {hint} too narrow for the grammar")
        return self.rule(f"{hint}-num", " | ".join(f"( {a} )" for a in alternatives))

    def visit_array(self, schema: Mapping[str, Any], hint: str) -> str:
        items = schema.get("items", True)
        if isinstance(items, list):
            raise GrammarError("unsupported JSON Schema: 'items' as a list (tuple validation)")
        item = self.visit(items, f"{hint}-item")
        low = _count(schema, "minItems", 0) or 0
        high = _count(schema, "maxItems", None)
        if high is not None and high < low:
            raise GrammarError(f"maxItems {high} < minItems {low}")
        if high == 0:
            return self.rule(f"{hint}-array", '"[" ws "]"')
        more = f'( "," ws {item} ){{{max(low - 1, 0)},{"" if high is None else high - 1}}}'
        body = f"{item} {more}"
        if low == 0:
            body = f"( {body} )?"
        return self.rule(f"{hint}-array", f'"[" ws {body} ws "]"')

    def visit_object(self, schema: Mapping[str, Any], hint: str) -> str:
        properties = schema.get("properties")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise GrammarError("'required' must be a list of property names")
        if properties is None:
            if required:
                raise GrammarError("unsupported JSON Schema: 'required' without 'properties'")
            return "object-any"
        if not isinstance(properties, Mapping):
            raise GrammarError("'properties' must be an object")
        missing = [r for r in required if r not in properties]
        if missing:
            raise GrammarError(f"'required' names properties the schema does not define: {', '.join(missing)}")
        pairs = {
            name: f'{_json_literal(name)} ":" ws {self.visit(sub, f"{hint}-{name}")}'
            for name, sub in properties.items()
        }
        must = [pairs[name] for name in properties if name in required]
        may = [pairs[name] for name in properties if name not in required]
        chain = self._optional_chain(may, hint)
        if must:
            body = ' "," ws '.join(must)
            if chain:
                body += f' ( "," ws {chain} )?'
        else:
            body = f"( {chain} )?" if chain else ""
        return self.rule(f"{hint}-object", f'"{{" ws {body} ws "}}"'.replace("ws  ws", "ws"))

    def _optional_chain(self, pairs: list[str], hint: str) -> str:
        """Any subset of ``pairs`` in order, comma-separated: chain(i) = p_i ("," chain(i+1))? | chain(i+1)."""
        following = ""
        for pair in reversed(pairs):
            if following:
                following = self.rule(f"{hint}-opt", f'{pair} ( "," ws {following} )? | {following}')
            else:
                following = self.rule(f"{hint}-opt", pair)
        return following


def _json_literal(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"a const/enum value is not JSON: {value!r}") from exc
    return json.dumps(text)  # a GBNF literal is written like a JSON string


def _count(schema: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = schema.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GrammarError(f"'{key}' must be a non-negative integer, got {value!r}")
    return value


def _number_limits(schema: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The real bounds (exclusive or not does not matter for the fraction rules)."""
    values = {}
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            value = schema[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise GrammarError(f"'{key}' must be a finite number, got {value!r}")
            values[key] = value
    lows = [values[k] for k in ("minimum", "exclusiveMinimum") if k in values]
    highs = [values[k] for k in ("maximum", "exclusiveMaximum") if k in values]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[int | None, int | None]:
    """The integers allowed: [low, high], either side open (None)."""
    _number_limits(schema)  # type checks
    low: int | None = None
    high: int | None = None
    if "minimum" in schema:
        low = math.ceil(schema["minimum"])
    if "exclusiveMinimum" in schema:
        bound = math.floor(schema["exclusiveMinimum"]) + 1
        low = bound if low is None else max(low, bound)
    if "maximum" in schema:
        high = math.floor(schema["maximum"])
    if "exclusiveMaximum" in schema:
        bound = math.ceil(schema["exclusiveMaximum"]) - 1
        high = bound if high is None else min(high, bound)
    limit = 10**_MAX_DIGITS - 1
    if (low is not None and abs(low) > limit) or (high is not None and abs(high) > limit):
        raise GrammarError(f"unsupported JSON Schema: bounds beyond {_MAX_DIGITS} digits")
    return low, high


def _int_range(low: int | None, high: int | None) -> str:
    """GBNF for the integers in [low, high] (None: unbounded), written without leading zeros."""
    alternatives = []
    if high is None or high >= 0:  # the non-negative ones
        alternatives.append(_uint_range(max(low or 0, 0) if low is not None else 0, high))
    if low is None or low < 0:  # the negative ones: "-" then a magnitude
        magnitude_high = None if low is None else -low
        magnitude_low = max(1, -high) if high is not None else 1
        if magnitude_high is None or magnitude_low <= magnitude_high:
            alternatives.append(f'"-" ( {_uint_range(magnitude_low, magnitude_high)} )')
    if not alternatives:
        raise GrammarError("no integer lies within the bounds")
    return " | ".join(f"( {a} )" for a in alternatives)


def _uint_range(low: int, high: int | None) -> str:
    """GBNF for the non-negative integers in [low, high] (high None: unbounded)."""
    alternatives = []
    top = high if high is not None else 10**_MAX_DIGITS - 1
    if low > top:
        raise GrammarError("no integer lies within the bounds")
    for width in range(len(str(low)), len(str(top)) + 1):
        first = max(low, 10 ** (width - 1) if width > 1 else 0)
        last = min(top, 10**width - 1)
        if first <= last:
            alternatives.append(_same_width(str(first), str(last)))
    return " | ".join(alternatives)


def _same_width(low: str, high: str) -> str:
    """GBNF for the digit strings of one width from ``low`` to ``high`` (inclusive)."""
    if low == high:
        return f'"{low}"'
    rest = len(low) - 1
    if low[0] == high[0]:
        return f'"{low[0]}" ( {_same_width(low[1:], high[1:])} )'
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return f"[{low[0]}-{high[0]}]" + (f" [0-9]{{{rest}}}" if rest else "")
    parts = []
    if rest == 0:
        return f"[{low[0]}-{high[0]}]"
    parts.append(f'"{low[0]}" ( {_same_width(low[1:], "9" * rest)} )')
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}] [0-9]{{{rest}}}")
    parts.append(f'"{high[0]}" ( {_same_width("0" * rest, high[1:])} )')
    return " | ".join(f"( {p} )" for p in parts)
