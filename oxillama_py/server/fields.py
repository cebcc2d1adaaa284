"""Every field of OpenAI's chat-completions and completions request bodies, and what this server does with it.

A field is *honoured* (it changes the answer as OpenAI documents, or as the
extension documents), a *no-op* (it means nothing to a local server, such as
``user`` or ``store``: accepted, type-checked, ignored) or *refused* (a 400 that
names it, because honouring it is not possible here). A field that is none of
these, a typo or a field of another API, is a 400 naming it, as OpenAI
answers: nothing is silently ignored. ``docs/server.rst``'s field table lists
the same rows (a test reads it back and checks the server against it).

The sampler fields that OpenAI's bodies share with llama.cpp's samplers
(``logit_bias``, the penalties) and the common extensions (``top_k``,
``min_p``, ``repetition_penalty``) are read here too, into the engine's
keyword options.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, Literal

from ..options import GenerateKwargs
from .errors import bad_request

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "JSON_SCHEMA_FIELDS",
    "RESPONSE_FORMAT_FIELDS",
    "STREAM_OPTIONS_FIELDS",
    "check_fields",
    "check_vocabulary",
    "number",
    "sampler_options",
]

Status = Literal["honoured", "no-op", "refused"]

_COMMON: dict[str, Status] = {
    "model": "honoured",
    "frequency_penalty": "honoured",
    "presence_penalty": "honoured",
    "logit_bias": "honoured",
    "logprobs": "honoured",
    "max_tokens": "honoured",
    "n": "honoured",
    "seed": "honoured",
    "stop": "honoured",
    "stream": "honoured",
    "stream_options": "honoured",
    "temperature": "honoured",
    "top_p": "honoured",
    "user": "no-op",
    # Extensions, as llama.cpp's server and vLLM take them.
    "top_k": "honoured",
    "min_p": "honoured",
    "repetition_penalty": "honoured",
}

CHAT_FIELDS: dict[str, Status] = {
    **_COMMON,
    "messages": "honoured",
    "max_completion_tokens": "honoured",
    "response_format": "honoured",
    "tools": "honoured",
    "tool_choice": "honoured",
    "parallel_tool_calls": "honoured",
    "top_logprobs": "honoured",
    "modalities": "honoured",  # ["text"] only: anything else is refused
    "metadata": "no-op",
    "store": "no-op",
    "service_tier": "no-op",
    "prompt_cache_key": "no-op",
    "prompt_cache_options": "no-op",
    "prompt_cache_retention": "no-op",
    "safety_identifier": "no-op",
    "prediction": "no-op",
    "audio": "refused",
    "functions": "refused",
    "function_call": "refused",
    "moderation": "refused",
    "reasoning_effort": "refused",
    "verbosity": "refused",
    "web_search_options": "refused",
}
"""OpenAI's chat-completions body (openai-python 3.3's ``CompletionCreateParams``) and our extensions."""

COMPLETION_FIELDS: dict[str, Status] = {
    **_COMMON,
    "prompt": "honoured",
    "response_format": "honoured",  # an extension here: constrained completions
    "echo": "honoured",
    "best_of": "honoured",  # equal to n only: more candidates than choices is refused
    "suffix": "refused",
}
"""OpenAI's (legacy) completions body and our extensions."""

STREAM_OPTIONS_FIELDS: dict[str, Status] = {
    "include_usage": "honoured",
    "include_progress": "honoured",
    "include_obfuscation": "no-op",
}
RESPONSE_FORMAT_FIELDS = frozenset({"type", "json_schema"})
JSON_SCHEMA_FIELDS = frozenset({"name", "description", "schema", "strict"})

# The no-ops' types: accepted and ignored, but a wrong type is still the client's mistake.
_NO_OP_TYPES: dict[str, tuple[type, ...]] = {
    "user": (str,),
    "metadata": (dict,),
    "store": (bool,),
    "service_tier": (str,),
    "prompt_cache_key": (str,),
    "prompt_cache_options": (dict,),
    "prompt_cache_retention": (str,),
    "safety_identifier": (str,),
    "prediction": (dict,),
    "include_obfuscation": (bool,),
}

# Refused fields that this module owns (the others are read in .requests); the values they may take.
_REFUSED_UNLESS: dict[str, tuple[object, ...]] = {
    "audio": (),
    "moderation": (),
    "reasoning_effort": ("none",),
    "verbosity": (),
    "web_search_options": (),
}
_WHY = {
    "audio": "this server answers in text only",
    "moderation": "this server runs no moderation",
    "reasoning_effort": "the model does not reason before answering",
    "verbosity": "the model takes no verbosity setting",
    "web_search_options": "this server does not search the web",
}


def check_fields(fields: Mapping[str, Any], table: Mapping[str, Status]) -> None:
    """400 for an unknown field (top level or nested), a refused field given, or a no-op of the wrong type."""
    for name in fields:
        if name not in table:
            raise bad_request(f"Unrecognized request argument supplied: {name}", name)
    for name, allowed in _REFUSED_UNLESS.items():
        value = fields.get(name)
        if name in fields and value is not None and value not in allowed:
            raise bad_request(f"'{name}' is not supported by this server: {_WHY[name]}", name)
    modalities = fields.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise bad_request("'modalities' may only be [\"text\"]: this server answers in text only", "modalities")
    _check_no_ops(fields, "")
    options = fields.get("stream_options")
    if isinstance(options, dict):
        _known(options, STREAM_OPTIONS_FIELDS, "stream_options.")
        _check_no_ops(options, "stream_options.")
    response_format = fields.get("response_format")
    if isinstance(response_format, dict):
        _known(response_format, RESPONSE_FORMAT_FIELDS, "response_format.")
        spec = response_format.get("json_schema")
        if isinstance(spec, dict):
            _known(spec, JSON_SCHEMA_FIELDS, "response_format.json_schema.")


def _known(fields: Mapping[str, Any], names: Mapping[str, Any] | frozenset[str], prefix: str) -> None:
    for name in fields:
        if name not in names:
            param = prefix + name
            raise bad_request(f"Unrecognized request argument supplied: {param}", param)


def _check_no_ops(fields: Mapping[str, Any], prefix: str) -> None:
    for name, value in fields.items():
        types = _NO_OP_TYPES.get(name)
        if types is not None and value is not None and (not isinstance(value, types) or _is_bool_number(value, types)):
            kind = {str: "a string", dict: "an object", bool: "a boolean"}[types[0]]
            raise bad_request(f"'{prefix}{name}' must be {kind}", prefix + name)


def _is_bool_number(value: object, types: tuple[type, ...]) -> bool:
    return isinstance(value, bool) and bool not in types


def sampler_options(fields: Mapping[str, Any]) -> GenerateKwargs:
    """The sampler fields of a body as the engine's keyword options (only those given)."""
    options: GenerateKwargs = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = number(fields, name, -2.0, 2.0)
        if value is not None:
            options[name] = value
    top_k = fields.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise bad_request("'top_k' must be an integer", "top_k")
        if not -1 <= top_k < 2**31:
            raise bad_request(f"'top_k' must be in [0, 2147483647] (or -1: off), got {top_k}", "top_k")
        options["top_k"] = max(top_k, 0)  # vLLM's -1 and llama.cpp's 0 both mean no top-k
    min_p = number(fields, "min_p", 0.0, 1.0)
    if min_p is not None:
        options["min_p"] = min_p
    repetition = number(fields, "repetition_penalty", 0.0, math.inf, low_open=True)
    if repetition is not None:
        options["repeat_penalty"] = repetition
    bias = fields.get("logit_bias")
    if bias is not None:
        options["logit_bias"] = _logit_bias(bias)
    return options


def check_vocabulary(options: GenerateKwargs, n_vocab: int | None) -> None:
    """A ``logit_bias`` token id outside the model's vocabulary is the client's mistake: a 400 naming the field."""
    bias = options.get("logit_bias")
    if bias and n_vocab is not None:
        outside = [token for token in bias if token >= n_vocab]
        if outside:
            message = f"'logit_bias' token id {outside[0]} is not in the model's vocabulary of {n_vocab} tokens"
            raise bad_request(message, "logit_bias")


def _logit_bias(value: object) -> dict[int, float]:
    """OpenAI's ``logit_bias``: token ids (as JSON object keys, so strings) to a bias in [-100, 100]."""
    if not isinstance(value, dict):
        raise bad_request("'logit_bias' must be an object mapping token ids to biases", "logit_bias")
    biases: dict[int, float] = {}
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise bad_request(f"'logit_bias' key {key!r} is not a token id", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad_request(f"'logit_bias' value for token {key} must be a number in [-100, 100]", "logit_bias")
        biases[int(key)] = float(bias)
    return biases


def number(fields: Mapping[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    """A finite number field in ``[low, high]`` (``(low, high]`` when ``low_open``), or ``None`` when left out."""
    value = fields.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise bad_request(f"'{name}' must be a number", name)
    # an int beyond a float (10**400) compares exactly with the bounds below, and no bound lets it through
    if value < low or value > high or (low_open and value == low):
        opening = "(" if low_open else "["
        bound = f"> {low}" if math.isinf(high) else f"in {opening}{low}, {high}]"
        raise bad_request(f"'{name}' must be {bound}, got {value}", name)
    if value > sys.float_info.max:  # an int past every float, where the upper bound is open
        raise bad_request(f"'{name}' is too large", name)
    return float(value)
