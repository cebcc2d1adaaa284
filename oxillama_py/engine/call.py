"""A prepared call: one generation, its result collector and display, and how its ending becomes results.

What :meth:`AsyncEngine.prepare` returns, as httpx's ``build_request`` returns
a request: every ``generate*`` call, ``stream()``, the server and the Ray
deployment run one. Its ending is read in one place (:meth:`Call.results`), so
end of sequence, cancellation and errors are turned into results or exceptions
the same way whoever drives the generation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bus import Finished, Generation
from ..bus.collect import Collector
from ..errors import GenerateError, GenerationCancelled, OxiLlamaError
from ..progress import ProgressSubscriber
from ..results import CompletionResult
from ..tools import ToolPlan, read_answer

__all__ = ["Call"]


@dataclass(frozen=True)
class Call:
    """One prepared generation; nothing decodes until :meth:`run`, or until its generation is started."""

    generation: Generation
    """Driven by :meth:`run` (a task per subscriber), or by its consumer: ``start()``, ``pump()``, ``aclose()``."""
    collector: Collector
    progress: ProgressSubscriber | None
    strict_progress: bool
    prompts: tuple[str, ...] = ()
    """The text each request continues, in request order (a chat's rendered prompt)."""
    tools: ToolPlan | None = None
    """A chat's tools: when they constrain the answer, its results are read as the tool format
    (text unwrapped, calls in ``tool_calls``)."""

    async def run(self) -> list[CompletionResult]:
        """Decode every request to its end (the caller's cancel scope cancels them)."""
        await self.generation.run()
        return self.results()

    def results(self) -> list[CompletionResult]:
        """Each request's result once the generation ended, or the error that ended it."""
        finished = self.generation.terminals()
        _raise_for(finished)
        progress = self.progress
        if progress is not None and self.strict_progress and progress.error is not None:
            raise progress.error
        results = [self.collector.result(f) for f in finished]
        if self.tools is not None and self.tools.constrains:
            return [read_answer(result) for result in results]
        return results


def _raise_for(finished: list[Finished]) -> None:
    for item in finished:
        if item.reason == "error":
            error = item.error
            if isinstance(error, OxiLlamaError):
                raise error
            raise GenerateError(f"generation failed: {error}") from error
    if any(item.reason == "cancelled" for item in finished):
        raise GenerationCancelled("the generation was cancelled")
