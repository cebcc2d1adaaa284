"""How many prompt rows a step may carry beside the generating ones: the prefill budget (chunked prefill).

A prompt decodes in chunks of at most ``n_batch`` rows, and a chunk rides in
the same ``llama_decode`` as one row of every generating sequence. On a CPU a
prompt row costs about as much as a generating one (~3 ms here), so a full
512-row chunk makes that step ~40 times longer than a step of 8 generating rows:
every running stream freezes for the whole prefill of a pasted document. So
while any sequence generates, the prompt rows of a step are capped so that the
step takes about ``target`` (by default :data:`STALL` times what the
generating rows alone cost), as vLLM's chunked prefill and Sarathi-Serve's
stall-free batching do. Prompt rows cost about the same in small chunks as in
big ones, so the prompt's own time to first token barely moves. With nothing
generating, a prompt takes the whole batch.

The costs are learned from the steps themselves (no start-up measurement):
:class:`~.cost.StepCost` for steps whose rows all have logits, and an
average cost per prompt row for steps that carry prompt chunks.
"""

from __future__ import annotations

from .cost import POINTS, StepCost

__all__ = ["MIN_CHUNK", "STALL", "PrefillPace"]

STALL = 2.5
"""By default a step with prompt rows may take this many times what its generating rows alone take.

Measured here (2 cores, Gemma 3 270M): 8 streams at ~50 ms a step; a step with
a 32-row chunk ~115 ms; the streams' p99 gap stays under 3 times their median while a
3,500-token prompt prefills, and that prompt's first token comes within ~10%
of its time on an idle engine (``benchmarks/mixed_load.py``)."""
MIN_CHUNK = 16
"""Prompt rows a step takes whatever the target: a waiting prompt always moves."""
_LEARN = 0.2
"""How far each step moves the average cost of a prompt row."""


class PrefillPace:
    """The prompt-row budget of the next step, from what recent steps cost."""

    __slots__ = ("_row", "_seen", "generating", "target")

    def __init__(self, target_ms: float | None = None) -> None:
        self.target = None if target_ms is None else target_ms / 1000.0
        """Seconds a step with prompt rows aims at; ``None``: :data:`STALL` times its generating rows' cost."""
        guess = StepCost.guess()
        self.generating = StepCost({n: guess(n) for n in POINTS}, _LEARN)
        """What a step of ``n`` rows with logits costs (the generating rows, and drafts)."""
        self._row = self.generating(64) / 64
        """Seconds one prompt row adds to a step (a first guess until a chunk has been decoded)."""
        self._seen = False

    def budget(self, generating: int, room: int) -> int:
        """Prompt rows the next step may take, of the ``room`` the batch leaves, beside ``generating`` rows."""
        if generating <= 0:  # nothing to stall: a lone prompt prefills at full speed
            return room
        base = self.generating(generating)
        target = self.target if self.target is not None else STALL * base
        rows = int((target - base) / self._row)
        return max(0, min(room, max(MIN_CHUNK, rows)))

    def observe(self, logit_rows: int, prompt_rows: int, seconds: float) -> None:
        """Learn from a decoded step: ``logit_rows`` rows with logits, ``prompt_rows`` without."""
        if seconds <= 0:
            return
        if prompt_rows <= 0:
            self.generating.observe(logit_rows, seconds)
            return
        row = (seconds - self.generating(max(logit_rows, 1))) / prompt_rows
        if row > 0:  # the first measured chunk replaces the guess; later ones move the average
            self._row = row if not self._seen else self._row + _LEARN * (row - self._row)
            self._seen = True

    @property
    def row_seconds(self) -> float:
        return self._row
