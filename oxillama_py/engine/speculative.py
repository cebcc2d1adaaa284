"""``SpeculativeEngine`` and ``AsyncSpeculativeEngine``: the engines, configured to speculate every request.

They are :class:`~oxillama_py.AsyncEngine` and :class:`~oxillama_py.Engine`
with the target's config, ``speculative=`` the draft (and
``speculative_tokens=`` the cap) and one slot; every request speculates, so
the options' one rule for asked-for speculation applies to all of them
(mirostat is refused: :func:`~oxillama_py.options.resolve_options`; a grammar
speculates, its drafts checked against it).
The decode worker is the same (see :mod:`oxillama_py.decode.speculation`);
each result carries its draft statistics in ``result.speculative``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from ..checks import check_type
from ..config import SpeculativeConfig
from ..decode import DecodeWorker
from .async_engine import AsyncEngine
from .lifetime import Lifetime
from .sync import Backend, Engine

__all__ = ["AsyncSpeculativeEngine", "SpeculativeEngine"]


class AsyncSpeculativeEngine(AsyncEngine):
    """An :class:`AsyncEngine` whose worker drafts tokens and verifies them in one target decode.

    Greedy output is the target's own choice at every token; sampled output
    follows the target's distribution (speculative sampling). Requests are
    decoded one at a time, in arrival order. Mirostat is not supported.
    """

    def __init__(self, config: SpeculativeConfig) -> None:
        check_type("config", config, SpeculativeConfig, "a SpeculativeConfig")
        target = config.target
        seed = target.seed if target.seed is not None else config.seed
        super().__init__(
            replace(
                target,
                max_concurrency=1,
                seed=seed,
                speculative=config.draft,
                speculative_tokens=config.max_draft,
            )
        )
        self.speculative_config = config
        self._speculating_engine = "SpeculativeEngine"
        self._life = Lifetime(self._life.config, partial(DecodeWorker, name="oxillama-speculative", trace=config.trace))


class SpeculativeEngine(Engine):
    """The blocking facade over :class:`AsyncSpeculativeEngine`, like :class:`Engine` over :class:`AsyncEngine`."""

    def __init__(
        self,
        config: SpeculativeConfig,
        *,
        backend: Backend = "asyncio",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(AsyncSpeculativeEngine(config), backend=backend, backend_options=backend_options)

    def async_engine(self) -> AsyncSpeculativeEngine:
        engine = super().async_engine()
        assert isinstance(engine, AsyncSpeculativeEngine)
        return engine

    def __enter__(self) -> SpeculativeEngine:
        return self
