"""When a sequence drafts: exponential back-off on drafts that miss, so text that does not repeat costs nothing.

The cost model (:mod:`.cost`) sizes each draft from the sequence's acceptance,
but an estimate only moves when drafts are tried, and on free text the lookup
keeps finding some n-gram whose continuation the target then rejects: each
such draft adds rows (a longer, slower step) and gives nothing. So every
speculating sequence keeps a :class:`DraftBackoff`:

* a *miss* is a draft that the target did not take whole (a *hit* passed
  every token): in a batch a partly taken draft rarely pays for its rows, since
  the batch lasts as long as its slowest sequence (measured: text that repeats
  now and then, 68% of drafted tokens taken, ran at 0.89x plain with 8 requests
  when such drafts counted as hits);
* after ``m`` misses in a row the sequence does not draft for
  ``2 ** (m - 1)`` steps (capped at :data:`MAX_WAIT`): no n-gram search, no
  place in the plan, exactly the work of plain greedy decoding;
* when the wait is over it *probes*: a short draft (at most
  :data:`PROBE_TOKENS`, offered at an acceptance of at least :data:`PROBE_RATE`
  so that a stale, low estimate cannot keep it from ever trying again);
* a hit resets it: the next step drafts as long as the cost model likes.

Free text thus drafts a handful of times in a hundred tokens, each probe a row
or two; text that starts to repeat (a quotation, code being edited) is found
again within at most :data:`MAX_WAIT` steps.

No llama.cpp here: tests drive it with numbers.
"""

from __future__ import annotations

__all__ = ["MAX_WAIT", "PROBE_RATE", "PROBE_TOKENS", "DraftBackoff"]

MAX_WAIT = 64
"""The most steps a sequence goes without drafting after misses (then it probes)."""
PROBE_TOKENS = 2
"""The most tokens a probe drafts: a row or two, cheap even in a full batch."""
PROBE_RATE = 0.5
"""The acceptance a probe is planned with at least (its own estimate may have decayed to nothing)."""


class DraftBackoff:
    """One sequence's drafting schedule: ready, waiting after misses, or probing; see the module docstring."""

    __slots__ = ("misses", "skipped", "wait")

    def __init__(self) -> None:
        self.misses = 0
        """Drafts in a row that missed."""
        self.wait = 0
        """Steps left before this sequence may draft again."""
        self.skipped = 0
        """Steps it did not draft because of the back-off (for stats and tests)."""

    @property
    def ready(self) -> bool:
        """May draft this step."""
        return self.wait == 0

    @property
    def probing(self) -> bool:
        """Its next draft is a probe: short, after misses."""
        return self.misses > 0

    def limit(self, most: int) -> int:
        """The most tokens its next draft may have, of ``most`` offered."""
        return min(most, PROBE_TOKENS) if self.probing else most

    def rate(self, estimate: float) -> float:
        """The acceptance its next draft is planned with."""
        return max(estimate, PROBE_RATE) if self.probing else estimate

    def observe(self, drafted: int, accepted: int) -> None:
        """A step verified: ``drafted`` tokens were drafted (0: none) and ``accepted`` of them passed."""
        if drafted <= 0:
            if self.wait:
                self.wait -= 1
                self.skipped += 1
            return
        if accepted >= drafted:
            self.misses = self.wait = 0
            return
        self.misses += 1
        self.wait = min(MAX_WAIT, 1 << (self.misses - 1))
