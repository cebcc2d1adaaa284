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

import os
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from ..checks import check_type
from ..config import EngineConfig, SpeculativeConfig
from ..decode import DecodeWorker
from .async_engine import AsyncEngine
from .files import Restore, plan_speculative_restore
from .lifetime import Lifetime
from .sync import Backend, Engine

__all__ = ["AsyncSpeculativeEngine", "SpeculativeEngine", "speculative_config"]


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

    @classmethod
    async def restore(
        cls,
        path: str | os.PathLike[str] | bytes,
        target_model: str | os.PathLike[str] | None = None,
        draft_model: str | os.PathLike[str] | None = None,
        *,
        model_path: str | os.PathLike[str] | None = None,
    ) -> AsyncSpeculativeEngine:
        """A loaded speculating engine from its snapshot (upstream's ``restore(path, target_model, draft_model)``).

        ``target_model`` (or ``model_path``) and ``draft_model`` stand for the
        files the snapshot records, moved; the target's fingerprint is checked
        as :meth:`AsyncEngine.restore` checks it.
        """
        target = _target(target_model, model_path)
        plan = await anyio.to_thread.run_sync(plan_speculative_restore, path, target, draft_model)
        engine = AsyncSpeculativeEngine(speculative_config(plan))
        try:
            await engine._adopt(plan)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await engine.aclose()
            raise
        return engine


def _target(target_model: object, model_path: object) -> object:
    """Upstream's ``target_model`` or this library's ``model_path``: one of them."""
    if target_model is not None and model_path is not None:
        raise TypeError("give target_model or model_path, not both")
    return model_path if target_model is None else target_model


def speculative_config(plan: Restore) -> SpeculativeConfig:
    """The :class:`SpeculativeConfig` a speculating engine's snapshot config was built from."""
    config = plan.config
    assert config.speculative is not None, "plan_speculative_restore refuses a snapshot that does not speculate"
    target: EngineConfig = replace(config, speculative=None, speculative_tokens=None)
    return SpeculativeConfig(target, config.speculative, num_speculative=config.speculative_tokens)


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

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str] | bytes,
        target_model: str | os.PathLike[str] | None = None,
        draft_model: str | os.PathLike[str] | None = None,
        *,
        model_path: str | os.PathLike[str] | None = None,
    ) -> SpeculativeEngine:
        """See :meth:`AsyncSpeculativeEngine.restore`."""
        plan = plan_speculative_restore(path, _target(target_model, model_path), draft_model)
        engine = SpeculativeEngine(speculative_config(plan))
        try:
            engine._call(engine.async_engine()._adopt, plan)
        except BaseException:
            engine.close()
            raise
        return engine

    def async_engine(self) -> AsyncSpeculativeEngine:
        engine = super().async_engine()
        assert isinstance(engine, AsyncSpeculativeEngine)
        return engine

    def __enter__(self) -> SpeculativeEngine:
        return self
