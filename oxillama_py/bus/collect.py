"""The result collector: one subscriber that assembles every request's result."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ..results import CompletionResult, Timings, TokenLogprob
from .events import Finished, Step
from .subscriber import Subscriber

__all__ = ["Collector"]


class Collector(Subscriber):
    """Joins pieces and token ids per request; builds the results once all finished."""

    def __init__(
        self,
        count: int,
        on_complete: Callable[[int, CompletionResult], object] | None = None,
        *,
        logprobs: bool = False,
    ) -> None:
        self._pieces: list[list[str]] = [[] for _ in range(count)]
        self._ids: list[list[int]] = [[] for _ in range(count)]
        self._logprobs: list[list[TokenLogprob]] | None = [[] for _ in range(count)] if logprobs else None
        self._prompt: list[tuple[TokenLogprob | None, ...] | None] = [None] * count
        self._on_complete = on_complete

    async def on_step(self, step: Step) -> None:
        logprobs = self._logprobs
        for token in step.tokens:
            self._pieces[token.sequence].append(token.piece)
            self._ids[token.sequence].append(token.token_id)
            if logprobs is not None and token.logprob is not None:
                logprobs[token.sequence].append(token.logprob)
        if step.prompt_logprobs is not None and step.tokens:
            self._prompt[step.tokens[0].sequence] = step.prompt_logprobs

    async def on_finished(self, finished: Finished) -> None:
        if finished.prompt_logprobs is not None:
            self._prompt[finished.sequence] = finished.prompt_logprobs
        if self._on_complete is not None and finished.reason in ("stop", "length"):
            outcome = self._on_complete(finished.sequence, self.result(finished))
            if inspect.isawaitable(outcome):
                await outcome

    def result(self, finished: Finished) -> CompletionResult:
        index = finished.sequence
        ids = self._ids[index]
        end = finished.time
        admitted = finished.admitted if finished.admitted is not None else end
        first = finished.first_token if finished.first_token is not None else end
        return CompletionResult(
            text="".join(self._pieces[index]) + finished.tail,
            token_ids=tuple(ids),
            finish_reason=finished.reason,
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=len(ids),
            timings=Timings(
                queued_secs=max(0.0, admitted - finished.submitted),
                prompt_secs=max(0.0, first - admitted),
                generation_secs=max(0.0, end - first),
                total_secs=max(0.0, end - finished.submitted),
            ),
            speculative=finished.speculative,
            cached_tokens=finished.cached_tokens,
            logprobs=tuple(self._logprobs[index]) if self._logprobs is not None else None,
            prompt_logprobs=self._prompt[index],
        )
