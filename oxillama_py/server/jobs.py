"""One validated :class:`~.requests.Job` turned into one engine call, and its events.

Built only on the engine's public prepared calls
(:meth:`~oxillama_py.AsyncEngine.prepare`,
:meth:`~oxillama_py.AsyncEngine.prepare_chat`): every choice of a request
(``n`` of them, per prompt) is a request of the same engine call, so they
decode together in one batch and share one progress display. A :class:`Relay`
subscriber collects what the worker publishes, with the choice it belongs to;
streaming responses drain it from the client's own task (the engine's pull
mode: no task group inside the response's iterator).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import anyio

from ..bus import Finished, Step, Subscriber
from ..engine import AsyncEngine, Call
from ..progress import ProgressEvent
from ..results import CompletionResult, FinishReason
from .requests import Job

__all__ = ["End", "JobRun", "Piece", "open_job"]

COMPLETION_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for completions."""


@dataclass(frozen=True, slots=True)
class Piece:
    choice: int
    text: str


@dataclass(frozen=True, slots=True)
class End:
    choice: int
    reason: FinishReason


Item = Piece | End | ProgressEvent


class Relay(Subscriber):
    """Pieces, choice ends and progress events, in the order they happened."""

    def __init__(self) -> None:
        self.items: deque[Item] = deque()

    async def on_step(self, step: Step) -> None:
        self.items.extend(Piece(token.sequence, token.piece) for token in step.tokens if token.piece)

    async def on_finished(self, finished: Finished) -> None:
        if finished.tail:
            self.items.append(Piece(finished.sequence, finished.tail))
        self.items.append(End(finished.sequence, finished.reason))

    def progress(self, event: ProgressEvent) -> None:
        self.items.append(event)


@dataclass
class JobRun:
    """A prepared engine call for one job; not started until :meth:`results` or :meth:`events`."""

    job: Job
    call: Call
    relay: Relay

    @property
    def prompts(self) -> tuple[str, ...]:
        """The text each choice continues (a chat's rendered prompt), in choice order."""
        return self.call.prompts

    async def results(self) -> list[CompletionResult]:
        """Decode every choice to its end (the caller's cancel scope cancels it)."""
        return await self.call.run()

    async def events(self) -> AsyncGenerator[Item, None]:
        """Everything that happens, as it happens; the results come from :meth:`finished`.

        Leaving early (the client went away) cancels the call and waits until the
        worker has freed its slots and every subscriber is finalised.
        """
        generation = self.call.generation
        items = self.relay.items
        generation.start()
        try:
            while await generation.pump():
                while items:
                    yield items.popleft()
        finally:
            with anyio.CancelScope(shield=True):
                await generation.aclose()
        while items:  # the final progress event comes with the finalisation
            yield items.popleft()

    def finished(self) -> list[CompletionResult]:
        """The results after :meth:`events` ended, or the error that ended the call."""
        return self.call.results()


async def open_job(engine: AsyncEngine, job: Job, chat_max_tokens: int) -> JobRun:
    """Render, tokenize and check the job's prompts (raises before any decoding).

    A chat without ``max_tokens`` gets ``chat_max_tokens``, capped by what
    its context leaves after the prompt, so a long conversation still fits.
    """
    relay = Relay()
    options = job.generate_options()
    if job.include_progress:
        options["progress"] = relay.progress
    if job.kind == "chat":
        max_tokens = job.max_tokens
        tools = job.tools.options()
        if max_tokens is None:
            used = await engine.count_chat_tokens(job.messages, **tools)
            max_tokens = max(1, min(chat_max_tokens, engine.config.slot_ctx - used))
        call = await engine.prepare_chat(job.messages, max_tokens, n=job.n, subscribers=[relay], **tools, **options)
    else:
        max_tokens = COMPLETION_MAX_TOKENS if job.max_tokens is None else job.max_tokens
        call = await engine.prepare(job.prompts, max_tokens, n=job.n, subscribers=[relay], **options)
    return JobRun(job, call, relay)
