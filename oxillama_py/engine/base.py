"""What every part of :class:`~oxillama_py.AsyncEngine` stands on: its config, its worker's lifetime, its facts.

The engine's surface is split by concept (generation and chat, model state,
reads) into classes that share this base; each reaches the decode worker only
through :meth:`EngineBase._ready` and its public methods.
"""

from __future__ import annotations

from typing import Any

from ..config import EngineConfig
from ..decode import DecodeWorker
from ..options import GenerateKwargs, GenerateOptions, resolve_options
from ..stats import EngineStats
from .files import NO_PICKLE
from .lifetime import Lifetime

__all__ = ["EngineBase", "decode_worker"]


class EngineBase:
    """The config and the worker's lifetime; loading and closing are the engine's own."""

    _life: Lifetime
    _speculating_engine: str | None
    """The name of an engine that speculates every request (its rules apply), else ``None``."""

    @property
    def config(self) -> EngineConfig:
        """The engine's configuration (fixed at construction)."""
        return self._life.config

    async def _ready(self) -> DecodeWorker:
        return await self._life.ready()

    def is_loaded(self) -> bool:
        """Whether the model is loaded (a method, as upstream oxillama-py has it)."""
        return self._life.worker is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` ran (the engine cannot be used again)."""
        return self._life.closed

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the decode worker's load (cheap; safe from any thread)."""
        worker = self._life.worker
        if worker is None:
            return EngineStats(loaded=False, slots=0, active=0, waiting=0, decode_steps=0)
        return worker.stats()

    def hidden_size(self) -> int | None:
        """The model's embedding width (``n_embd``); ``None`` until it is loaded."""
        worker = self._life.worker
        return None if worker is None else worker.model.n_embd

    def vocab_size(self) -> int | None:
        """How many token ids the vocabulary has; ``None`` until the model is loaded."""
        worker = self._life.worker
        return None if worker is None else worker.model.n_vocab

    def _options(self, max_tokens: int, options: GenerateKwargs) -> GenerateOptions:
        return resolve_options(self.config, max_tokens, options, speculating_engine=self._speculating_engine)

    def __reduce__(self) -> Any:
        raise TypeError(NO_PICKLE.format(type(self).__name__))

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(NO_PICKLE.format(type(self).__name__))


def decode_worker(engine: EngineBase) -> DecodeWorker:
    """The running decode worker of a loaded ``engine`` (for :mod:`oxillama_py.testing`); loads nothing."""
    worker = engine._life.worker
    if worker is None:
        raise RuntimeError("the engine's model is not loaded: call load_model() first")
    return worker
