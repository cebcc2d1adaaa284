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
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import anyio

from ..bus import Finished, Step, Subscriber
from ..engine import AsyncEngine, Call
from ..progress import ProgressEvent
from ..results import CompletionResult, FinishReason, TokenLogprob
from .logprobs import listed_first_tokens
from .requests import Job

__all__ = ["End", "JobRun", "Piece", "PromptScores", "open_job"]

COMPLETION_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for completions."""


@dataclass(frozen=True, slots=True)
class Piece:
    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    """The log-probabilities of the tokens that released this text (a token releasing none waits for the next)."""


@dataclass(frozen=True, slots=True)
class PromptScores:
    """A choice's prompt log-probabilities, before any of its pieces."""

    choice: int
    logprobs: tuple[TokenLogprob | None, ...]


@dataclass(frozen=True, slots=True)
class End:
    choice: int
    reason: FinishReason


Item = Piece | PromptScores | End | ProgressEvent


class Relay(Subscriber):
    """Pieces, choice ends and progress events, in the order they happened."""

    def __init__(self) -> None:
        self.items: deque[Item] = deque()
        self._held: dict[int, list[TokenLogprob]] = {}

    async def on_step(self, step: Step) -> None:
        if step.prompt_logprobs is not None and step.tokens:
            self.items.append(PromptScores(step.tokens[0].sequence, step.prompt_logprobs))
        held = self._held
        for token in step.tokens:
            if token.logprob is not None:
                held.setdefault(token.sequence, []).append(token.logprob)
            if token.piece:
                self.items.append(Piece(token.sequence, token.piece, tuple(held.pop(token.sequence, ()))))

    async def on_finished(self, finished: Finished) -> None:
        if finished.prompt_logprobs is not None:
            self.items.append(PromptScores(finished.sequence, finished.prompt_logprobs))
        held = tuple(self._held.pop(finished.sequence, ()))
        if finished.tail or held:
            self.items.append(Piece(finished.sequence, finished.tail, held))
        self.items.append(End(finished.sequence, finished.reason))

    def progress(self, event: ProgressEvent) -> None:
        self.items.append(event)


@dataclass
class JobRun:
    """A prepared engine call for one job; not started until :meth:`results` or :meth:`events`."""

    job: Job
    call: Call
    relay: Relay
    first_tokens: list[str | None] | None = None
    """With ``echo`` and ``logprobs``: each choice's first listed prompt token (``None``: an added BOS, not listed)."""

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


async def open_job(
    engine: AsyncEngine, job: Job, chat_max_tokens: int, observers: Sequence[Subscriber] = (), order: int | None = None
) -> JobRun:
    """Render, tokenize and check the job's prompts (raises before any decoding).

    A chat without ``max_tokens`` gets ``chat_max_tokens``, capped by what
    its context leaves after the prompt, so a long conversation still fits.
    ``order``: the job's place in the engine's waiting line, taken when it was admitted.
    """
    relay = Relay()
    subscribers: list[Subscriber] = [relay, *observers]  # observers: the metrics, which only watch
    options = job.generate_options()
    if job.include_progress:
        options["progress"] = relay.progress
    if job.kind == "chat":
        max_tokens = job.max_tokens
        tools = job.tools.options()
        if max_tokens is None:
            used = await engine.count_chat_tokens(job.messages, **tools)
            max_tokens = max(1, min(chat_max_tokens, engine.config.n_ctx - used))
        call = await engine.prepare_chat(
            job.messages, max_tokens, n=job.n, subscribers=subscribers, order=order, **tools, **options
        )
    else:
        max_tokens = COMPLETION_MAX_TOKENS if job.max_tokens is None else job.max_tokens
        firsts = None
        if job.echo and job.logprobs is not None:  # before the call: nothing may wait after its display is made
            firsts = [first for first in await listed_first_tokens(engine, job.prompts) for _ in range(job.n)]
        call = await engine.prepare(job.prompts, max_tokens, n=job.n, subscribers=subscribers, order=order, **options)
        return JobRun(job, call, relay, firsts)
    return JobRun(job, call, relay)
