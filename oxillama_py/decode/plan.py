"""What passes between the scheduler, the runner and the thread loop: a step's plan, its output, a task.

The scheduler decides (:class:`StepPlan`), the runner executes and reports
(:class:`StepOutput`), the scheduler takes the report (``update``). A
:class:`Task` is a function the thread loop runs between two steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .drafters import Draft
    from .reads import ReadJob
    from .sequence import ActiveSequence
    from .speculation import Placement

__all__ = ["StepOutput", "StepPlan", "Task"]


class Task:
    """A function to run on the decode thread between two steps (it owns the context)."""

    __slots__ = ("exclusive", "func", "future")

    def __init__(self, func: Callable[[], Any], *, exclusive: bool = False) -> None:
        self.func = func
        self.exclusive = exclusive
        self.future: Future[Any] = Future()

    def run(self) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.func())
            except BaseException as exc:
                self.future.set_exception(exc)

    def fail(self, error: BaseException) -> None:
        """Answer without running (the worker is closing)."""
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(error)


@dataclass(slots=True)
class StepPlan:
    """One turn of the loop: exclusive tasks whose turn has come, reads to advance, and one batch to decode.

    The batch: one row for each ``generating`` sequence, then each prompt
    ``chunk`` (prompts prefill in admission order, with what the generating
    rows leave of ``n_batch``), and the ``drafts`` the cost model found worth
    their rows.
    """

    generating: list[ActiveSequence]
    chunks: list[tuple[ActiveSequence, list[int]]]
    drafts: dict[ActiveSequence, Draft]
    exclusive: Sequence[Task] = ()
    reads: Sequence[ReadJob] = ()

    @property
    def decodes(self) -> bool:
        return bool(self.generating or self.chunks)


@dataclass(slots=True)
class StepOutput:
    """What the runner did with a plan's batch: each sampled sequence's :class:`Placement`, with its tokens."""

    sampled: list[tuple[ActiveSequence, Placement]]
    rows: int
    seconds: float
