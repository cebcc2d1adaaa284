"""OpenAI's answers: completion bodies, stream chunks, usage, finish reasons.

The other half of the OpenAI shapes, the requests, is :mod:`.requests`;
how the chunks travel is :mod:`.sse`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import asdict
from typing import Any

from ..errors import OxiLlamaError
from ..progress import ProgressEvent
from ..results import CompletionResult
from .errors import APIError, server_error
from .jobs import End, JobRun, Piece, PromptScores
from .logprobs import CompletionScores, chat_object, completion_object
from .requests import Job
from .sse import DONE, event
from .tool_calls import ToolStream, assistant_message, tool_finish

__all__ = ["completion_body", "finish_reason", "stream_body", "usage"]

_log = logging.getLogger("oxillama_py.server")


def finish_reason(result: CompletionResult) -> str:
    """OpenAI's endings: a cancelled or failed choice never reaches a client as a result."""
    return tool_finish("length" if result.finish_reason == "length" else "stop", bool(result.tool_calls))


def usage(job: Job, results: list[CompletionResult]) -> dict[str, Any]:
    firsts = results[:: job.n]  # each prompt counts once, not once per choice
    prompt = sum(r.prompt_tokens for r in firsts)
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)},
    }


def envelope(job: Job, model: str, *, chunk: bool) -> dict[str, Any]:
    """The fields every body or chunk of one response shares (one id for all chunks of a stream)."""
    if job.kind == "chat":
        kind, prefix = ("chat.completion.chunk" if chunk else "chat.completion"), "chatcmpl-"
    else:
        kind, prefix = "text_completion", "cmpl-"
    return {
        "id": prefix + uuid.uuid4().hex,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }


def choice_logprobs(run: JobRun, index: int, result: CompletionResult) -> dict[str, Any] | None:
    """A whole choice's ``logprobs`` object, or ``None`` when the request did not ask."""
    job = run.job
    if job.logprobs is None:
        return None
    if job.kind == "chat":
        return chat_object(result.logprobs or ())
    first = run.first_tokens[index] if run.first_tokens else None
    return completion_object(run.prompts[index], result, first, job.echo)


def completion_body(run: JobRun, results: list[CompletionResult], model: str) -> dict[str, Any]:
    """The whole answer of a request that did not stream."""
    job = run.job
    if job.kind == "chat":
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": assistant_message(r),
                "finish_reason": finish_reason(r),
                "logprobs": choice_logprobs(run, i, r),
            }
            for i, r in enumerate(results)
        ]
    else:
        choices = [
            {
                "index": i,
                "text": (run.prompts[i] if job.echo else "") + r.text,
                "finish_reason": finish_reason(r),
                "logprobs": choice_logprobs(run, i, r),
            }
            for i, r in enumerate(results)
        ]
    return {**envelope(job, model, chunk=False), "choices": choices, "usage": usage(job, results)}


class _Chunks:
    """The chunks of one stream: one envelope, chat deltas or completion texts."""

    def __init__(self, job: Job, model: str, choices: int) -> None:
        self.job = job
        self.envelope = envelope(job, model, chunk=True)
        self.usage_field: dict[str, Any] = {"usage": None} if job.include_usage else {}
        self.tools = [ToolStream() for _ in range(choices)] if job.tools.constrains else None
        self.templates: dict[int, tuple[bytes, bytes]] = {}
        """Each choice's text chunk around its text: a chunk is then one ``json.dumps`` of a string."""

    def pieces(self, index: int, text: str, logprobs: dict[str, Any] | None = None) -> list[bytes]:
        """The chunks of a piece of text: itself, or what it adds to a tool-format answer."""
        if self.tools is None:
            return [self.choice(index, text, None, logprobs)]
        deltas = self.tools[index].deltas(text)
        if logprobs is not None and not deltas:  # a piece of the JSON frame: its tokens' values still go out
            deltas = [{}]
        return [self.delta(index, delta, None, logprobs if i == 0 else None) for i, delta in enumerate(deltas)]

    def end(self, index: int, reason: str) -> bytes:
        calls = self.tools is not None and self.tools[index].has_calls
        return self.choice(index, None, tool_finish(reason, calls))

    def choice(self, index: int, text: str | None, reason: str | None, logprobs: dict[str, Any] | None = None) -> bytes:
        if text is not None and reason is None and logprobs is None:  # a token's text: most chunks
            head, tail = self.templates.get(index) or self._template(index)
            return b"".join((head, json.dumps(text).encode(), tail))
        if self.job.kind == "chat":
            return self.delta(index, {} if text is None else {"content": text}, reason, logprobs)
        return self.chunk({"index": index, "text": text or "", "finish_reason": reason, "logprobs": logprobs})

    def _template(self, index: int) -> tuple[bytes, bytes]:
        """The bytes of choice ``index``'s text chunk before and after its text (built once, by the slow path)."""
        mark = "\x00text\x00"  # json.dumps writes it as \u0000text\u0000: no envelope field holds that
        if self.job.kind == "chat":
            whole = self.delta(index, {"content": mark}, None)
        else:
            whole = self.chunk({"index": index, "text": mark, "finish_reason": None, "logprobs": None})
        head, _, tail = whole.partition(json.dumps(mark).encode())
        self.templates[index] = head, tail
        return head, tail

    def delta(
        self, index: int, body: dict[str, Any], reason: str | None, logprobs: dict[str, Any] | None = None
    ) -> bytes:
        return self.chunk({"index": index, "delta": body, "finish_reason": reason, "logprobs": logprobs})

    def role(self, index: int) -> bytes:
        content = None if self.tools is not None else ""  # an answer that may be calls starts as OpenAI's do
        return self.chunk({"index": index, "delta": {"role": "assistant", "content": content}, "finish_reason": None})

    def chunk(self, choice: dict[str, Any]) -> bytes:
        return event({**self.envelope, "choices": [choice], **self.usage_field})

    def usage(self, results: list[CompletionResult]) -> bytes:
        return event({**self.envelope, "choices": [], "usage": usage(self.job, results)})


async def stream_body(run: JobRun, model: str) -> AsyncGenerator[bytes, None]:
    """The SSE body: OpenAI chunks (and progress events when asked), then ``[DONE]``.

    The headers are out before the first token, so a failure ends the stream
    with an ``error`` event instead of a status code.
    """
    job = run.job
    choices = len(run.prompts)
    chunks = _Chunks(job, model, choices)
    if job.kind == "chat":
        for index in range(choices):
            yield chunks.role(index)
    elif job.echo and job.logprobs is None:  # with log-probabilities: once the prompt is scored
        for index in range(choices):
            yield chunks.choice(index, run.prompts[index], None)
    scores = [CompletionScores(prompt) for prompt in run.prompts] if job.logprobs is not None else []
    ended: set[int] = set()
    try:
        async with aclosing(run.events()) as events:
            async for item in events:
                if isinstance(item, Piece):
                    logprobs = None
                    if scores:
                        logprobs = (
                            chat_object(item.logprobs)
                            if job.kind == "chat"
                            else scores[item.choice].tokens(item.logprobs)
                        )
                    for chunk in chunks.pieces(item.choice, item.text, logprobs):
                        yield chunk
                elif isinstance(item, PromptScores):
                    if job.echo and scores:
                        first = run.first_tokens[item.choice] if run.first_tokens else None
                        prompt = scores[item.choice].prompt(item.logprobs, first)
                        yield chunks.choice(item.choice, run.prompts[item.choice], None, prompt)
                elif isinstance(item, End):  # each choice's finish as it happens, as OpenAI sends it
                    if item.reason in ("stop", "length"):
                        ended.add(item.choice)
                        yield chunks.end(item.choice, item.reason)
                elif isinstance(item, ProgressEvent):
                    yield event(asdict(item), "progress")
        results = run.finished()
    except OxiLlamaError as exc:
        yield event(server_error(exc).body(), "error")
        return
    except Exception:  # a bug of ours
        _log.exception("streaming a response failed")
        yield event(APIError(500, "internal server error", type="server_error").body(), "error")
        return
    for index in range(choices):
        if index not in ended:
            yield chunks.choice(index, None, finish_reason(results[index]))
    if job.include_usage:
        yield chunks.usage(results)
    yield DONE
