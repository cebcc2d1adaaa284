"""The KV budget: the context's cells as one pool that every sequence draws from, and who yields when it runs dry.

llama.cpp's KV cache is one store of ``n_ctx`` cells (``kv_unified``): a
sequence takes cells as it grows, whatever its slot, and the prefix cache
shares cells between sequences. So no request has a fixed share: one may use
the whole context while nothing else runs. The policy, all of it here:

- **Refusal.** A request whose prompt plus ``max_tokens`` exceeds ``n_ctx``
  could never fit: it is refused before any work (:func:`fits_context`).
- **Admission.** The head of the waiting line starts once its prompt (for a
  preempted sequence: its prompt and the tokens it generated) plus a reserve
  fits the free cells. The reserve is what the running sequences were promised
  (the rest of the prompts they prefill, or the next turn's new cells if
  more) and a watermark (:data:`WATERMARK` of ``n_ctx``, at least
  :data:`MIN_WATERMARK` cells). Cells of unpinned prefix-cache entries count
  as free: they are evicted as needed. With nothing running the head always
  starts (it fits alone). First come, first served: the head waits rather
  than being overtaken.
- **Preemption.** Before each step, when its new cells (one per generating
  row, the prompt chunks, the drafts, the reads' next tokens) do not fit the
  free cells, the newest running sequence (the one submitted last) is
  preempted, as vLLM's scheduler does: the prefix cache may keep its cells,
  the rest are freed, its slot goes back, and it waits at the front of the
  line. Re-admitted, it prefills its prompt and generated tokens again and
  goes on with its sampler, grammar, stop strings and text as they were: its
  consumer sees a pause. The last running sequence is never preempted (alone
  it fits). A batch that ``llama_decode`` refuses for want of cells is
  treated the same way: the newest sequence is preempted and the step retried.

Pure arithmetic on cell counts, no llama.cpp: the scheduler asks, and acts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .cells import Run, distinct_cells

if TYPE_CHECKING:
    from .reads import ReadJob
    from .sequence import ActiveSequence

__all__ = ["MIN_WATERMARK", "WATERMARK", "KvBudget", "fits_context"]

WATERMARK = 0.01
"""Share of ``n_ctx`` kept free when a request is admitted (vLLM keeps 1% of its blocks)."""
MIN_WATERMARK = 8
"""The fewest cells kept free when a request is admitted."""


def fits_context(n_ctx: int, prompt_tokens: int, max_tokens: int) -> bool:
    """Whether a request could ever run: its prompt and all its tokens fit the whole context.

    A speculative step drafts at most ``max_tokens - 1`` past the text, so its drafts fit too.
    """
    return prompt_tokens + max_tokens <= n_ctx


class KvBudget:
    """The cell ledger of one context: what is free, what a step needs, whether a request may start."""

    def __init__(self, n_ctx: int, n_batch: int) -> None:
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.watermark = max(MIN_WATERMARK, int(n_ctx * WATERMARK))

    def free(self, running: Iterable[ActiveSequence], pinned: Iterable[Run], reads: Iterable[ReadJob]) -> int:
        """Cells not held by a running sequence, a pinned prefix or a read (unpinned cache entries count as free)."""
        held = distinct_cells(itertools.chain((r for seq in running for r in seq.runs()), pinned))
        return self.n_ctx - held - sum(job.cells()[0] for job in reads)

    def step_cells(
        self,
        running: Iterable[ActiveSequence],
        max_draft: int,
        reads: Iterable[ReadJob],
        prompt_budget: Callable[[int, int], int] | None = None,
    ) -> int:
        """The most new cells the next turn takes: generating rows, prompt chunks and drafts, the reads' tokens.

        ``prompt_budget(generating, room)`` is the prefill budget's cap on the
        step's prompt rows (:meth:`.pace.PrefillPace.budget`): a long prompt
        beside streams takes that much, not all the room, so a full context
        need not preempt anyone for rows the step would not take.
        """
        generating = prompts = drafts = 0
        for seq in running:
            if seq.prefilling:
                prompts += len(seq.prompt) - seq.n_prefilled
            else:
                generating += 1
            if seq.spec is not None:
                drafts += max_draft
        room = max(0, self.n_batch - generating)  # chunks and drafts share what the generating rows leave
        if prompt_budget is not None:
            prompts = min(prompts, prompt_budget(generating, room))
        read = min(self.n_batch, sum(job.cells()[1] for job in reads))
        return generating + min(room, prompts + drafts) + read

    def reserve(
        self,
        running: Iterable[ActiveSequence],
        max_draft: int,
        reads: Iterable[ReadJob],
        prompt_budget: Callable[[int, int], int] | None = None,
    ) -> int:
        """Cells the running work is promised: the rest of every prompt being prefilled, and the next turn's cells."""
        running = list(running)
        promised = sum(len(seq.prompt) - seq.n_prefilled if seq.prefilling else 1 for seq in running)
        return max(promised, self.step_cells(running, max_draft, reads, prompt_budget))

    def admits(self, n_tokens: int, reserve: int, free: int) -> bool:
        """Whether a sequence of ``n_tokens`` to prefill may start beside work that was promised ``reserve`` cells."""
        return n_tokens + reserve + self.watermark <= free
