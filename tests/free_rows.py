"""Rows priced as free: for tests of how drafting works, which must not depend on this CPU's step costs.

How many tokens a sequence drafts is the cost model's choice (``decode/cost.py``),
from steps timed on the machine that runs the tests. A test that checks the
mechanics of drafting (how far the defaults reach, the acceptance rule, where
drafts stop) prices every row the same, as a memory-bound step would, so that
the plan drafts everything offered whatever the CPU. The plan itself is tested
with fixed curves in ``test_speculative.py``.
"""

from __future__ import annotations

import pytest

from oxillama_py import AsyncEngine, Engine
from oxillama_py.decode.cost import StepCost


class FreeRows(StepCost):
    """A flat curve that stays flat: observed steps do not move it."""

    def __init__(self) -> None:
        super().__init__({1: 1.0, 64: 1.0})

    def observe(self, n: int, seconds: float) -> None:
        pass


def price_rows_as_free(engine: Engine | AsyncEngine, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Give a loaded, speculating engine's worker the flat curve (until ``monkeypatch`` undoes it, if given)."""
    target = engine.async_engine() if isinstance(engine, Engine) else engine
    worker = target._life.worker
    assert worker is not None and worker.speculator is not None, "load a speculating engine first"
    if monkeypatch is None:
        worker.speculator.cost = FreeRows()
    else:
        monkeypatch.setattr(worker.speculator, "cost", FreeRows())
