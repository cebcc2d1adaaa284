"""How many prompt rows a step may carry beside the generating ones: the prefill budget (chunked prefill).

A prompt decodes in chunks of at most ``n_batch`` rows, and a chunk rides in
the same ``llama_decode`` as one row of every generating sequence. On a CPU a
prompt row costs a step about as much as a generating one, so a full 512-row
chunk makes that step ~20 times longer than a step of 8 generating rows:
every running stream freezes for the whole prefill of a pasted document. So
while any sequence generates, the prompt rows of a step are capped so that the
step takes about ``target`` (by default :data:`STALL` times what the
generating rows alone cost), as vLLM's chunked prefill and Sarathi-Serve's
stall-free batching do. The prompt pays for it: its rows cost more in small
chunks than in big ones, and each step also decodes the streams (see
:data:`STALL`). With nothing generating, a prompt takes the whole batch.

The costs are learned from the steps themselves (no start-up measurement):
:class:`~.cost.StepCost` for steps whose rows all have logits, and an
average cost per prompt row for steps that carry prompt chunks.
"""

from __future__ import annotations

from .cost import POINTS, StepCost

__all__ = ["MIN_CHUNK", "STALL", "PrefillPace"]

STALL = 2.2
"""By default a step with prompt rows may take this many times what its generating rows alone take.

Measured here (2 cores, Gemma 3 270M, ``benchmarks/mixed_load.py``): 8 streams
at ~47 ms a step; while a 3,500-token prompt prefills beside them, the
streams' p99 gap stays near 3 times their median (27 times with whole
512-row chunks). The price is the prompt's own time to first token: a row in
a chunk of ~40 costs ~1.5 times what it costs in a chunk of 512, and every
step also decodes the streams, so it is ~2.3 times its time on an idle engine
(1.2 times with whole chunks). ``step_target_ms`` moves that trade-off."""
MIN_CHUNK = 16
"""Prompt rows a step takes whatever the target: a waiting prompt always moves."""
_LEARN = 0.2
"""How far each step of generating rows moves their cost curve."""
_STRIDE = 0.3
"""How far (in a ratio's exponent) each step with prompt rows moves the cost of a row: from 10 times off in
about six steps, and a single outlier (clipped to 4 times) moves it by less than half."""


class PrefillPace:
    """The prompt-row budget of the next step, from what recent steps cost."""

    __slots__ = ("_row", "generating", "target")

    def __init__(self, target_ms: float | None = None) -> None:
        self.target = None if target_ms is None else target_ms / 1000.0
        """Seconds a step with prompt rows aims at; ``None``: :data:`STALL` times its generating rows' cost."""
        guess = StepCost.guess()
        self.generating = StepCost({n: guess(n) for n in POINTS}, _LEARN)
        """What a step of ``n`` rows with logits costs (the generating rows, and drafts)."""
        self._row = self.generating(64) / 64
        """Seconds one prompt row adds to a step (a first guess until a chunk has been decoded)."""

    def budget(self, generating: int, room: int) -> int:
        """Prompt rows the next step may take, of the ``room`` the batch leaves, beside ``generating`` rows."""
        if generating <= 0:  # nothing to stall: a lone prompt prefills at full speed
            return room
        base = self.generating(generating)
        target = self.target if self.target is not None else STALL * base
        rows = int((target - base) / self._row)
        return max(0, min(room, max(MIN_CHUNK, rows)))

    def observe(self, logit_rows: int, prompt_rows: int, seconds: float) -> None:
        """Learn from a decoded step: ``logit_rows`` rows with logits, ``prompt_rows`` without.

        One step moves an estimate by at most :data:`_STRIDE` (in a ratio): the first decode of a
        context (its buffers are allocated) or a step the machine stalled must not blow the budget.
        """
        if seconds <= 0:
            return
        if prompt_rows <= 0:
            expected = self.generating(logit_rows)
            self.generating.observe(logit_rows, min(max(seconds, expected / 4), expected * 4))
            return
        row = (seconds - self.generating(max(logit_rows, 1))) / prompt_rows
        if row > 0:
            self._row *= min(max(row / self._row, 1 / 4), 4.0) ** _STRIDE

    @property
    def row_seconds(self) -> float:
        return self._row
