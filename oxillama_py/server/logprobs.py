"""Log-probabilities in OpenAI's shapes: the request fields that ask for them, and the answers' objects.

Completions take ``logprobs: k`` (0 to 5) and answer, per choice,
``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``: each
``top_logprobs`` entry maps the ``k`` most likely tokens' texts to their
values, plus the chosen token (as OpenAI's legacy API and llama-cpp-python
do). With ``echo`` the prompt's tokens come first, the first of them with
``null`` values (nothing before it to predict it; a BOS the model adds is not
part of the prompt's text and is not listed), and ``max_tokens: 0`` scores
the prompt alone. Chat takes ``logprobs: true`` with ``top_logprobs`` (0 to
20) and answers ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}],
"refusal": null}``. A stream carries in each chunk the values of that chunk's
tokens. The values are the engine's (:class:`~oxillama_py.TokenLogprob`): the
model's raw distribution, before sampling filters and grammars.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from typing import Any

from ..engine import AsyncEngine
from ..options import GenerateKwargs
from ..results import CompletionResult, TokenLogprob
from .errors import bad_request

__all__ = [
    "CompletionScores",
    "chat_logprobs",
    "chat_object",
    "completion_object",
    "completion_logprobs",
    "listed_first_tokens",
    "logprob_options",
    "merge",
]

MAX_COMPLETION_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20


def chat_logprobs(fields: Mapping[str, Any]) -> int | None:
    """How many alternatives a chat's tokens come with (``logprobs: true``), or ``None`` (no log-probabilities)."""
    asked = fields.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise bad_request("'logprobs' must be a boolean", "logprobs")
    top = fields.get("top_logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad_request(f"'top_logprobs' must be an integer between 0 and {MAX_TOP_LOGPROBS}", "top_logprobs")
        if not asked:
            raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if asked else None


def completion_logprobs(fields: Mapping[str, Any], echo: bool, max_tokens: int | None) -> int | None:
    """A completion's ``logprobs`` (0 to 5 alternatives), or ``None``; ``max_tokens: 0`` needs ``echo``."""
    value = fields.get("logprobs")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COMPLETION_LOGPROBS
    ):
        raise bad_request(f"'logprobs' must be an integer between 0 and {MAX_COMPLETION_LOGPROBS}", "logprobs")
    if max_tokens == 0 and not echo:
        raise bad_request("'max_tokens' may be 0 only with 'echo': true (the prompt scored alone)", "max_tokens")
    return value


def logprob_options(logprobs: int | None, echo: bool, max_tokens: int | None) -> GenerateKwargs:
    """The engine options for a job's log-probabilities (the prompt's too when echoed, or when nothing is generated)."""
    options: GenerateKwargs = {}
    if logprobs is not None:
        options["logprobs"] = logprobs
    if echo and (logprobs is not None or max_tokens == 0):
        options["logprobs"] = logprobs or 0
        options["prompt_logprobs"] = True
    return options


async def listed_first_tokens(engine: AsyncEngine, prompts: Sequence[str]) -> list[str | None]:
    """Per prompt, the text of its first token when an echo lists it, or ``None`` when it is a BOS the model adds.

    The engine's prompt log-probabilities start with the first token, which
    has no value; an added BOS is not part of the prompt's text, so an echo
    starts after it.
    """
    if await engine.tokenize(""):  # the model adds a token of its own before any text
        return [None] * len(prompts)
    firsts: list[str | None] = []
    for prompt in prompts:
        tokens = await engine.tokenize(prompt)
        firsts.append(await engine.decode_token(tokens[0]) if tokens else "")
    return firsts


def chat_object(logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) ``logprobs``."""
    return {"content": [_chat_entry(lp) for lp in logprobs], "refusal": None}


def _chat_entry(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token_bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.token_bytes)} for t in lp.top_logprobs
        ],
    }


class CompletionScores:
    """One completion choice's ``logprobs`` objects, built as its tokens come (a stream sends one per chunk).

    ``text_offset`` counts characters of the choice's text: the prompt's tokens
    from 0, the generated ones from the prompt's length (as OpenAI counts them,
    echo or not).
    """

    def __init__(self, prompt: str) -> None:
        self._offset = len(prompt)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")

    def prompt(self, scores: Sequence[TokenLogprob | None], first: str | None) -> dict[str, Any]:
        """The echoed prompt's part: ``first`` is the first token's text, ``None`` when it is an added BOS."""
        listed = list(scores[1:])
        body = _empty()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        offset = 0
        if first is not None:
            _append(body, first, None, None, offset)
            offset += len(first)
        for i, lp in enumerate(listed):
            assert lp is not None
            if first is None and i == 0:  # the first listed token: OpenAI's null
                _append(body, lp.token, None, None, offset)
            else:
                _append(body, lp.token, lp.logprob, _top(lp), offset)
            offset += len(decoder.decode(lp.token_bytes))
        return body

    def tokens(self, logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
        """The part of these generated tokens (the next ones of the choice)."""
        body = _empty()
        for lp in logprobs:
            _append(body, lp.token, lp.logprob, _top(lp), self._offset)
            self._offset += len(self._decoder.decode(lp.token_bytes))
        return body


def completion_object(prompt: str, result: CompletionResult, first: str | None, echo: bool) -> dict[str, Any]:
    """A whole completion choice's ``logprobs`` (the prompt's part first with ``echo``)."""
    scores = CompletionScores(prompt)
    parts = [scores.prompt(result.prompt_logprobs or (), first)] if echo else []
    return merge(*parts, scores.tokens(result.logprobs or ()))


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Several parts of one choice's ``logprobs`` as one object."""
    body = _empty()
    for part in parts:
        for key, values in part.items():
            body[key].extend(values)
    return body


def _empty() -> dict[str, Any]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _append(body: dict[str, Any], token: str, logprob: float | None, top: dict[str, float] | None, offset: int) -> None:
    body["tokens"].append(token)
    body["token_logprobs"].append(logprob)
    body["top_logprobs"].append(top)
    body["text_offset"].append(offset)


def _top(lp: TokenLogprob) -> dict[str, float]:
    """The alternatives by text (the likelier one where two tokens share a text), and the chosen token."""
    top: dict[str, float] = {}
    for alternative in lp.top_logprobs:
        top.setdefault(alternative.token, alternative.logprob)
    top[lp.token] = lp.logprob
    return top
