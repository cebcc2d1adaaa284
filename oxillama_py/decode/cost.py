"""How many tokens each sequence drafts in a step: the cost of a step, each sequence's acceptance, and the plan.

On a CPU a decode step with one sequence is bound by reading the weights, so
verifying a few drafted tokens with it costs little; a step of eight
sequences already computes, and every drafted token costs its share. So the
worker measures what a step of ``n`` tokens costs (:class:`StepCost`: at
start-up, then from every step it decodes), keeps each sequence's recent
acceptance rate (:class:`Acceptance`), and gives the drafts to the sequences
where they pay: :func:`plan` maximises the expected tokens per second of the
whole step. Many sequences with low acceptance get no drafts at all, which is
plain continuous batching.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

__all__ = ["Acceptance", "StepCost", "plan"]

POINTS = (1, 2, 4, 8, 16, 32, 64)
"""Token counts measured at start-up; costs in between are interpolated."""
_LEARN = 0.05
"""How far each observed step moves the estimate (an exponential moving average)."""


class StepCost:
    """Seconds of one ``llama_decode`` of ``n`` tokens (every row with logits), as a piecewise-linear curve."""

    def __init__(self, seconds: dict[int, float], learn: float = _LEARN) -> None:
        self._learn = learn
        """How far each observed step moves the curve (an exponential moving average's weight)."""
        self._n = sorted(seconds)
        self._s = [max(seconds[n], 1e-6) for n in self._n]
        self._monotone()

    @classmethod
    def measure(cls, decode: Callable[[int], float], points: Sequence[int] = POINTS) -> StepCost:
        """Time ``decode(n)`` (which returns its seconds) twice for each point; keep the faster."""
        decode(points[0])  # warm-up: the first decode of a context allocates its buffers
        return cls({n: min(decode(n), decode(n)) for n in points})

    def __call__(self, n: int) -> float:
        xs, ys = self._n, self._s
        if n <= xs[0]:
            return ys[0]
        i = bisect.bisect_left(xs, n)
        if i == len(xs):  # beyond the last point: extend the last segment's slope
            i -= 1
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)

    def observe(self, n: int, seconds: float) -> None:
        """Move the curve toward a measured step: the points around ``n`` take its share of the difference."""
        xs = self._n
        if n <= 0 or seconds <= 0:
            return
        ratio = seconds / self(n)
        i = bisect.bisect_left(xs, n)
        around = [i] if i < len(xs) and xs[i] == n else [j for j in (i - 1, i) if 0 <= j < len(xs)]
        for j in around:
            self._s[j] *= 1.0 + self._learn * (ratio - 1.0)
        self._monotone()

    def _monotone(self) -> None:
        for j in range(1, len(self._s)):
            self._s[j] = max(self._s[j], self._s[j - 1])

    def points(self) -> dict[int, float]:
        return dict(zip(self._n, self._s, strict=True))

    @classmethod
    def guess(cls, learn: float = _LEARN) -> StepCost:
        """A stand-in when nothing could be measured (the steps then correct it): weights read once, rows cheap."""
        return cls({1: 0.02, 64: 0.02 + 64 * 0.0015}, learn)


class Acceptance:
    """The chance that a drafted token is accepted, given the ones before it were (recent steps weigh more)."""

    __slots__ = ("_accepted", "_tried")

    DECAY = 0.7
    """Per token tried: the last dozen or so tokens drafted decide."""

    def __init__(self, prior: float, weight: float = 1.0) -> None:
        self._accepted = prior * weight
        self._tried = weight

    @property
    def rate(self) -> float:
        return min(0.98, max(0.0, self._accepted / self._tried))

    def update(self, drafted: int, accepted: int) -> None:
        """A verified draft: ``accepted`` tokens passed, then one failed (unless all passed)."""
        if drafted <= 0:
            return
        tried = accepted + (1 if accepted < drafted else 0)
        decay = self.DECAY**tried
        self._accepted = self._accepted * decay + accepted
        self._tried = self._tried * decay + tried


def plan(
    cost: Callable[[int], float],
    fixed: int,
    offers: Sequence[tuple[float, int]],
    draft_cost: float = 0.0,
    *,
    limit: int | None = None,
    weights: Sequence[float] | None = None,
) -> list[int]:
    """Drafts per sequence that maximise the step's expected tokens per second.

    ``fixed`` tokens are decoded anyway (one per generating sequence, and any
    prompt chunks); ``offers[i]`` is sequence ``i``'s acceptance rate and the
    most drafts it can take. Each generating sequence yields one token; its
    ``j``-th draft adds one more with probability ``rate ** j``. Drafting
    itself costs ``draft_cost`` seconds a token (a draft model's decodes).
    Marginal gains fall with ``j``, so the best plan of ``m`` drafts takes the
    ``m`` largest; every ``m`` up to ``limit`` (the rows left in the batch) is tried.
    ``weights[i]`` scales what sequence ``i``'s tokens are worth (default 1).
    """
    worth = [1.0] * len(offers) if weights is None else list(weights)
    gains = sorted(
        (
            (worth[i] * rate**j, i)
            for i, (rate, most) in enumerate(offers)
            for j in range(1, most + 1)
            if rate > 0 and worth[i] > 0
        ),
        reverse=True,
    )
    expected = float(sum(worth))
    best_m, best = 0, expected / cost(fixed)
    if limit is not None:
        gains = gains[: max(0, limit)]
    for m, (gain, _) in enumerate(gains, 1):
        expected += gain
        rate = expected / (cost(fixed + m) + draft_cost * m)
        if rate > best:
            best_m, best = m, rate
    counts = [0] * len(offers)
    for _, i in gains[:best_m]:
        counts[i] += 1
    return counts
