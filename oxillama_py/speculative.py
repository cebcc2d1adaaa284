"""``SpeculativeEngine`` and ``AsyncSpeculativeEngine``: the engines, with speculative decoding.

They are :class:`~oxillama_py.AsyncEngine` and :class:`~oxillama_py.Engine`
configured to speculate: the target's config with ``speculative=`` the draft
(and ``speculative_tokens=`` the cap), one slot, and every request
speculating. The decode worker is the same (see
:mod:`oxillama_py.decode.speculation`); each result carries its draft
statistics in ``result.speculative``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import SpeculativeConfig
from .decode import DecodeWorker
from .engine import AsyncEngine, Backend, Engine
from .errors import GrammarError
from .options import GenerateOptions

__all__ = ["AsyncSpeculativeEngine", "SpeculativeEngine"]


class AsyncSpeculativeEngine(AsyncEngine):
    """An :class:`AsyncEngine` whose worker drafts tokens and verifies them in one target decode.

    Greedy output is the target's own choice at every token; sampled output
    follows the target's distribution (speculative sampling). Requests are
    decoded one at a time, in arrival order. Mirostat is not supported.
    """

    def __init__(self, config: SpeculativeConfig) -> None:
        if not isinstance(config, SpeculativeConfig):
            raise TypeError(f"config must be a SpeculativeConfig, got {type(config).__name__}")
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

    def _make_worker(self, path: Path) -> DecodeWorker:
        return DecodeWorker(self.config, path, "oxillama-speculative", trace=self.speculative_config.trace)

    def _check_options(self, opts: GenerateOptions) -> None:
        if opts.sampler.mirostat:
            raise ValueError("SpeculativeEngine does not support mirostat sampling; use temperature/top-k/top-p")
        if opts.grammar is not None:
            raise GrammarError(
                "SpeculativeEngine does not constrain output with a grammar or JSON Schema; "
                "use Engine or AsyncEngine for grammar=, json_schema= or json="
            )


class SpeculativeEngine(Engine):
    """The blocking facade over :class:`AsyncSpeculativeEngine`, like :class:`Engine` over :class:`AsyncEngine`."""

    def __init__(
        self,
        config: SpeculativeConfig,
        *,
        backend: Backend = "asyncio",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self._speculative_config = config
        super().__init__(None, backend=backend, backend_options=backend_options)

    def _make_async(self, config: object) -> AsyncEngine:
        return AsyncSpeculativeEngine(self._speculative_config)

    def async_engine(self) -> AsyncSpeculativeEngine:
        engine = super().async_engine()
        assert isinstance(engine, AsyncSpeculativeEngine)
        return engine

    def __enter__(self) -> SpeculativeEngine:
        return self
