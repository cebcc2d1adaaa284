"""What the server answers about texts rather than generations: ``/v1/embeddings``, ``/tokenize``, ``/detokenize``.

Embeddings take OpenAI's request and answer in its shape (floats, or
base64 of little-endian ``float32`` as the openai client asks by default);
the inputs are tokenized here, so ``usage`` counts them, and embedded together
by the engine between the steps of the generations it runs. The tokenizer's
endpoints are shaped as llama.cpp's server shapes them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..engine import AsyncEngine
from ..errors import KvCacheFullError, OxiLlamaError, TokenizerError
from .errors import APIError, bad_request, server_error

__all__ = ["detokenize_answer", "embeddings_answer", "tokenize_answer"]

MAX_INPUTS = 2048
"""OpenAI's limit on the inputs of one embeddings request."""

_EMBEDDING_FIELDS = frozenset({"input", "model", "encoding_format", "dimensions", "user"})


async def embeddings_answer(engine: AsyncEngine, body: object, model_name: str) -> dict[str, Any]:
    """The answer to one ``POST /v1/embeddings`` body."""
    fields = _fields(body, _EMBEDDING_FIELDS)
    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    if model is not None and model != model_name:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {model_name!r}",
            param="model",
            code="model_not_found",
        )
    encoding = fields.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    size = engine.hidden_size()
    dimensions = fields.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != size):
        raise bad_request(
            f"'dimensions' cannot be changed: this model's embeddings have {size} dimensions", "dimensions"
        )
    if fields.get("user") is not None and not isinstance(fields.get("user"), str):
        raise bad_request("'user' must be a string", "user")
    texts, token_lists = _inputs(fields.get("input"))
    try:
        vocab = engine.vocab_size() or 0
        for index, tokens in enumerate(token_lists):
            if any(not 0 <= t < vocab for t in tokens):
                raise bad_request(f"input[{index}] has a token id outside the vocabulary (0..{vocab - 1})", "input")
        for text in texts:
            token_lists.append(await engine.tokenize(text))
        rows = await engine.embed_tokens_numpy(token_lists)
    except KvCacheFullError as exc:
        raise APIError(400, str(exc), param="input", code="context_length_exceeded") from None
    except (ValueError, TypeError, TokenizerError) as exc:
        raise bad_request(str(exc), "input") from None
    except OxiLlamaError as exc:
        raise server_error(exc) from None
    data = [{"object": "embedding", "index": i, "embedding": _encode(row, encoding)} for i, row in enumerate(rows)]
    used = sum(len(tokens) for tokens in token_lists)
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }


def _inputs(value: object) -> tuple[list[str], list[list[int]]]:
    """Texts, or token-id lists (already in order): one of the two is empty."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise bad_request(
            "'input' must be a non-empty string, an array of strings, an array of token ids or an array of them",
            "input",
        )
    if len(value) > MAX_INPUTS:
        raise bad_request(f"'input' may hold at most {MAX_INPUTS} inputs, got {len(value)}", "input")
    if all(isinstance(item, str) for item in value):
        for index, text in enumerate(value):
            if not text:
                raise bad_request(f"input[{index}] is an empty string", "input")
        return list(value), []
    if all(_is_token(item) for item in value):
        return [], [list(value)]
    if all(isinstance(item, list) for item in value):
        for index, tokens in enumerate(value):
            if not tokens or not all(_is_token(t) for t in tokens):
                raise bad_request(f"input[{index}] must be a non-empty array of token ids", "input")
        return [], [list(tokens) for tokens in value]
    raise bad_request("'input' mixes strings, token ids and arrays; send one kind", "input")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encode(row: np.ndarray[Any, Any], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    values: list[float] = row.tolist()
    return values


async def tokenize_answer(engine: AsyncEngine, body: object) -> dict[str, Any]:
    """llama.cpp's ``/tokenize``: ``{"content", "add_special", "parse_special", "with_pieces"}`` → ``{"tokens"}``.

    ``model`` (the server picked the engine by it) is accepted too.
    """
    fields = _fields(body, frozenset({"content", "add_special", "parse_special", "with_pieces", "model"}))
    content = fields.get("content")
    if not isinstance(content, str):
        raise bad_request("'content' must be a string", "content")
    add_special = _flag(fields, "add_special", False)
    parse_special = _flag(fields, "parse_special", True)
    with_pieces = _flag(fields, "with_pieces", False)
    try:
        tokens = await engine.tokenize(content, add_special=add_special, parse_special=parse_special) if content else []
        if not with_pieces:
            return {"tokens": tokens}
        return {"tokens": [{"id": t, "piece": await engine.decode_token(t)} for t in tokens]}
    except (ValueError, TypeError, TokenizerError) as exc:
        raise bad_request(str(exc), "content") from None
    except OxiLlamaError as exc:
        raise server_error(exc) from None


async def detokenize_answer(engine: AsyncEngine, body: object) -> dict[str, Any]:
    """llama.cpp's ``/detokenize``: ``{"tokens": [ids]}`` → ``{"content": str}``."""
    fields = _fields(body, frozenset({"tokens", "model"}))
    tokens = fields.get("tokens")
    if not isinstance(tokens, list) or not all(_is_token(t) for t in tokens):
        raise bad_request("'tokens' must be an array of token ids", "tokens")
    vocab = engine.vocab_size() or 0
    if any(not 0 <= t < vocab for t in tokens):
        raise bad_request(f"'tokens' holds an id outside the vocabulary (0..{vocab - 1})", "tokens")
    try:
        return {"content": await engine.detokenize(tokens) if tokens else ""}
    except OxiLlamaError as exc:
        raise server_error(exc) from None


def _fields(body: object, known: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name in body:
        if name not in known:
            raise bad_request(f"unrecognized request argument supplied: {name}", name)
    return body


def _flag(fields: Mapping[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean", name)
    return value
