"""What a schema lets a model write, narrowed where the letter of JSON Schema would let it go wrong.

Everything written still validates against the schema as given; these rules
only narrow what may be written, and never make a schema unsatisfiable:

* **Objects are closed.** JSON Schema lets an object without
  ``additionalProperties`` carry any other property, so a grammar made to the
  letter lets a model ramble on with keys nobody asked for (a small model
  does, and never finishes). Like OpenAI's strict mode, an object that lists
  ``properties`` and says nothing about others is written with those (and
  the names ``required`` lists) only. An object that is joined with another
  schema stays open: one beside ``allOf``/``anyOf``/``oneOf``/``$ref``/``if``,
  a branch of such a join, and a definition that a join refers to, since
  closing one part would refuse the other parts' properties.
* **Dates are calendar dates.** ``format: date`` and ``date-time`` (without
  a ``pattern`` of their own) are written as days that exist (no 30th of
  February, a 29th only in leap years), in years 0001 to 9999, with seconds up
  to 59: what every validator takes (``jsonschema`` checks dates with
  Python's ``datetime``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["narrow"]

_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames", "unevaluatedItems")
_MAPS = ("properties", "patternProperties", "dependentSchemas")
_DEFS = ("$defs", "definitions")
_JOINS = ("allOf", "anyOf", "oneOf")
_JOINED_BY = (*_JOINS, "$ref", "if", "dependentSchemas")
_CONSTRAINING = ("properties", "required", "additionalProperties", "patternProperties", "$ref")
_ANNOTATIONS = {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment"}

_YEAR = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    rf"|02-(?:0[1-9]|1[0-9]|2[0-8]))|{_LEAP_YEAR}-02-29)"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_FORMATS = {"date": f"^{_DATE}$", "date-time": f"^{_DATE}T{_TIME}$"}


def narrow(schema: Any) -> Any:
    """``schema`` with its objects closed and its dates exact (see the module's docstring)."""
    joined_refs = {ref for node in _nodes(schema) for ref in _refs_in_joins(node)}
    return _narrow(schema, joined=False, joined_refs=joined_refs, path="#")


def _narrow(schema: Any, *, joined: bool, joined_refs: set[str], path: str) -> Any:
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    has_joins = any(key in out for key in _JOINED_BY)
    beside = joined or any(k in out for k in _CONSTRAINING)

    def sub(value: Any, where: str, *, in_join: bool = False) -> Any:
        return _narrow(value, joined=in_join, joined_refs=joined_refs, path=where)

    for key in _ONE:
        if isinstance(out.get(key), Mapping):
            out[key] = sub(out[key], f"{path}/{key}")
    for key in _MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {name: sub(value, f"{path}/{key}/{name}") for name, value in out[key].items()}
    for key in _DEFS:
        if isinstance(out.get(key), Mapping):
            out[key] = {
                name: sub(value, f"{path}/{key}/{name}", in_join=f"{path}/{key}/{name}" in joined_refs)
                for name, value in out[key].items()
            }
    for key in ("prefixItems", "items"):
        if isinstance(out.get(key), list):
            out[key] = [sub(value, f"{path}/{key}/{i}") for i, value in enumerate(out[key])]
    for key in _JOINS:
        if isinstance(out.get(key), list):
            members = out[key]
            in_join = beside if key != "allOf" else (beside or len(members) > 1)
            out[key] = [sub(value, f"{path}/{key}/{i}", in_join=in_join) for i, value in enumerate(members)]
    says_more = any(k in out for k in ("additionalProperties", "unevaluatedProperties", "patternProperties"))
    if isinstance(out.get("properties"), Mapping) and not says_more and not has_joins and not joined:
        required = out.get("required")
        names = required if isinstance(required, list) else []
        missing = [n for n in names if isinstance(n, str) and n not in out["properties"]]
        out["properties"] = {**out["properties"], **{name: {} for name in missing}}
        out["additionalProperties"] = False
    fmt = out.get("format")
    pattern = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    if pattern is not None and "pattern" not in out:
        del out["format"]
        out["pattern"] = pattern
    return out


def _nodes(schema: Any) -> Iterator[Mapping[str, Any]]:
    """Every object of the document (schemas and the rest: a superset is safe here)."""
    if isinstance(schema, Mapping):
        yield schema
        for value in schema.values():
            yield from _nodes(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _nodes(value)


def _refs_in_joins(node: Mapping[str, Any]) -> Iterator[str]:
    """The local ``$ref`` targets that ``node`` joins with something else."""
    ref = node.get("$ref")
    if isinstance(ref, str) and any(k != "$ref" and k not in _ANNOTATIONS and not k.startswith("x-") for k in node):
        yield ref  # a $ref beside other keywords (2019-09 and later): an intersection
    beside = any(k in node for k in _CONSTRAINING)
    for key in _JOINS:
        members = node.get(key)
        if isinstance(members, list) and (beside or (key == "allOf" and len(members) > 1)):
            for member in members:
                if isinstance(member, Mapping) and isinstance(member.get("$ref"), str):
                    yield member["$ref"]
