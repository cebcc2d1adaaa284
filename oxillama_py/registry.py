"""Models by name: which engine serves a name, when it loads, and which idle one is unloaded for room.

A :class:`ModelRegistry` maps names to engine configs (a model, or a model
with LoRA adapters) and loads each name's :class:`~oxillama_py.AsyncEngine`
on its first :meth:`~ModelRegistry.use`. With ``max_loaded`` it keeps at most
that many engines loaded: a name that needs room unloads the least recently
used engine no ``use`` holds, or queues (first come, first served) until one
is released. Engines of the same model file share its weights (see the
binding layer's ``weights.py``), so an adapter served as a name costs one
context, not a second copy of the model.

All state lives on the event loop that uses the registry (anyio: asyncio,
uvloop or trio); the blocking loads and closes run in worker threads.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from types import TracebackType

import anyio

from .checks import check_int, check_type, describe
from .config import EngineConfig
from .engine import AsyncEngine
from .errors import GenerateError, LoadError, UnknownModelError
from .lora import check_lora_path, check_scale

__all__ = ["ModelRegistry"]


class _State(Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    CLOSING = "closing"


@dataclass(eq=False)
class _Entry:
    name: str
    config: EngineConfig
    parent: str | None
    state: _State = _State.UNLOADED
    engine: AsyncEngine | None = None
    holders: int = 0
    last_used: int = 0
    load: int = 0
    """The number of the latest load (waiters on a load tell its failure from a later one's)."""
    failure: tuple[int, BaseException] | None = field(default=None, repr=False)


class ModelRegistry:
    """Named models, loaded on first use, at most ``max_loaded`` at a time (``None``: no limit).

    ``engine_factory`` builds a name's engine from its config (the default:
    :class:`~oxillama_py.AsyncEngine`); tests may pass a fake.
    """

    def __init__(
        self,
        max_loaded: int | None = None,
        *,
        engine_factory: Callable[[EngineConfig], AsyncEngine] = AsyncEngine,
    ) -> None:
        if max_loaded is not None:
            check_int("max_loaded", max_loaded, low=1)
        self.max_loaded = max_loaded
        self._factory = engine_factory
        self._entries: dict[str, _Entry] = {}
        self._clock = itertools.count(1)
        self._queue: deque[object] = deque()  # tickets of the uses waiting for room, first come first
        self._changed: anyio.Event | None = None
        self._closed = False

    # -- names -------------------------------------------------------------------------
    def add(self, name: str, config: EngineConfig) -> None:
        """Serve ``config``'s model as ``name`` (loaded on first use)."""
        self._add(self._new_name(name), check_type("config", config, EngineConfig, "an EngineConfig"), None)

    def add_lora(self, name: str, *, base: str, path: str | os.PathLike[str], scale: float = 1.0) -> None:
        """Serve ``base``'s model with the LoRA adapter at ``path`` (scaled by ``scale``) as ``name``.

        Its engine is ``base``'s config plus the adapter, over the same
        weights as ``base``'s engine: one more context, not another model.
        """
        name = self._new_name(name)
        parent = self._entry(check_type("base", base, str, "a model name (str)"))
        where, factor = check_lora_path(path), check_scale(scale)
        config = replace(parent.config, lora=(*parent.config.lora, (str(where), factor)))
        self._add(name, config, parent.name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name, in the order added."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The names whose engines are loaded now, least recently used first."""
        ready = [e for e in self._entries.values() if e.state is _State.LOADED]
        return tuple(e.name for e in sorted(ready, key=lambda e: e.last_used))

    def config(self, name: str) -> EngineConfig:
        """The config ``name``'s engine is built from (an adapter's includes its ``lora``)."""
        return self._entry(name).config

    def parent(self, name: str) -> str | None:
        """The base model's name of an adapter added with :meth:`add_lora`; ``None`` for a model."""
        return self._entry(name).parent

    def engine(self, name: str) -> AsyncEngine | None:
        """``name``'s engine if it is loaded now (for its stats: use it inside :meth:`use` only)."""
        entry = self._entry(name)
        return entry.engine if entry.state is _State.LOADED else None

    # -- use ---------------------------------------------------------------------------
    def use(self, name: str) -> AbstractAsyncContextManager[AsyncEngine]:
        """``async with registry.use(name) as engine``: ``name``'s loaded engine, held for the block.

        An unknown name raises :class:`~oxillama_py.UnknownModelError` here,
        before any work. Entering loads the engine unless it is loaded (one
        load however many wait for it; a failed load raises in each of them,
        and the next use tries again), making room first when ``max_loaded``
        engines are loaded. A held engine is never unloaded.
        """
        return self._using(self._entry(name))

    @asynccontextmanager
    async def _using(self, entry: _Entry) -> AsyncIterator[AsyncEngine]:
        engine = await self._acquire(entry)
        try:
            yield engine
        finally:
            entry.holders -= 1
            entry.last_used = next(self._clock)
            self._notify()

    async def _acquire(self, entry: _Entry) -> AsyncEngine:
        ticket: object | None = None
        try:
            while True:
                self._check_open()
                if ticket is not None and entry.state is not _State.UNLOADED:  # loaded by another use meanwhile
                    self._queue.remove(ticket)
                    ticket = None
                    self._notify()
                if entry.state is _State.LOADED:
                    assert entry.engine is not None
                    entry.holders += 1
                    entry.last_used = next(self._clock)
                    return entry.engine
                if entry.state is _State.LOADING:
                    await self._wait_for_load(entry)
                    continue
                if entry.state is _State.CLOSING:
                    await self._wait()
                    continue
                if ticket is None:
                    ticket = object()
                    self._queue.append(ticket)
                if self._queue[0] is ticket:  # first in line for room
                    if self._has_room():
                        self._queue.popleft()
                        ticket = None
                        return await self._load(entry)
                    victim = self._least_recently_used_idle()
                    if victim is not None:
                        await self._unload(victim)
                        continue
                await self._wait()
        finally:
            if ticket is not None:
                self._queue.remove(ticket)
                self._notify()

    async def _wait_for_load(self, entry: _Entry) -> None:
        load = entry.load
        while entry.state is _State.LOADING and entry.load == load:
            await self._wait()
        if entry.failure is not None and entry.failure[0] == load:
            error = entry.failure[1]
            raise LoadError(f"model {entry.name!r} could not be loaded: {error}") from error

    async def _load(self, entry: _Entry) -> AsyncEngine:
        """Load ``entry``'s engine (it has room); the caller holds it."""
        entry.state = _State.LOADING
        entry.load += 1
        entry.failure = None
        engine: AsyncEngine | None = None
        try:
            with anyio.CancelScope(shield=True):  # it serves every waiter: the first one's cancel must not stop it
                engine = self._factory(entry.config)
                await engine.load_model()
                if self._closed:
                    raise GenerateError("the model registry was closed while the model loaded")
        except BaseException as exc:
            entry.failure = (entry.load, exc)
            entry.state = _State.UNLOADED
            if engine is not None:
                with anyio.CancelScope(shield=True):
                    await engine.aclose()
            self._notify()
            raise
        assert engine is not None
        entry.engine = engine
        entry.state = _State.LOADED
        entry.holders += 1
        entry.last_used = next(self._clock)
        self._notify()
        return engine

    async def _unload(self, entry: _Entry) -> None:
        engine, entry.engine = entry.engine, None
        entry.state = _State.CLOSING
        try:
            with anyio.CancelScope(shield=True):
                if engine is not None:
                    await engine.aclose()
        finally:
            entry.state = _State.UNLOADED
            self._notify()

    def _has_room(self) -> bool:
        if self.max_loaded is None:
            return True
        taken = sum(e.state is not _State.UNLOADED for e in self._entries.values())
        return taken < self.max_loaded

    def _least_recently_used_idle(self) -> _Entry | None:
        idle = [e for e in self._entries.values() if e.state is _State.LOADED and not e.holders]
        return min(idle, key=lambda e: e.last_used, default=None)

    async def _wait(self) -> None:
        """Until the registry's state changes (a load, a release, an unload)."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    # -- closing -----------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close every loaded engine (generations still running fail); later uses raise ``GenerateError``."""
        self._closed = True
        self._notify()
        for entry in self._entries.values():
            if entry.state is _State.LOADED:
                await self._unload(entry)

    async def __aenter__(self) -> ModelRegistry:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    def __repr__(self) -> str:
        return f"ModelRegistry(names={self.names!r}, loaded={self.loaded!r}, max_loaded={self.max_loaded!r})"

    # -- helpers -----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise GenerateError("the model registry is closed")

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            known = ", ".join(repr(n) for n in self._entries) or "none"
            raise UnknownModelError(f"unknown model {name!r}; the models are: {known}")
        return entry

    def _new_name(self, name: object) -> str:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {describe(name)}")
        if not name:
            raise ValueError("name must not be empty")
        if name in self._entries:
            raise ValueError(f"the model name {name!r} is taken")
        return name

    def _add(self, name: str, config: EngineConfig, parent: str | None) -> None:
        self._entries[name] = _Entry(name, config, parent)
