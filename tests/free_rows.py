"""Rows priced as free: for tests of how drafting works, which must not depend on this CPU's step costs.

How many tokens a sequence drafts is the cost model's choice (``decode/cost.py``),
from steps timed on the machine that runs the tests. A test that checks the
mechanics of drafting (how far the defaults reach, the acceptance rule, where
drafts stop) prices every row the same, as a memory-bound step would, so that
the plan drafts everything offered whatever the CPU. The plan itself is tested
with fixed curves in ``test_speculative.py``. The hook is public:
:func:`oxillama_py.testing.price_rows_as_free`.
"""

from __future__ import annotations

import pytest

from oxillama_py import AsyncEngine, Engine
from oxillama_py.testing import price_rows_as_free as _price_rows_as_free
from oxillama_py.testing import set_step_cost


def price_rows_as_free(engine: Engine | AsyncEngine, request: pytest.FixtureRequest | None = None) -> None:
    """Give a loaded, speculating engine the flat curve (until the test of ``request`` ends, if given)."""
    measured = _price_rows_as_free(engine)
    if request is not None:
        request.addfinalizer(lambda: set_step_cost(engine, measured))
