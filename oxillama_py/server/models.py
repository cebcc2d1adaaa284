"""Which engine answers a request: the names an app serves, and the hold a request keeps on its model.

An app serves one engine (:class:`OneModel`: today's server, loaded at
startup) or a :class:`~oxillama_py.ModelRegistry` (:class:`RegistryModels`:
each name loaded on its first request, unloaded by the registry when it keeps
too many). A request names its model (omitted: the first one);
:meth:`Models.pick` answers 404 for a name nobody serves before any work, and
:meth:`Models.use` holds the model for the request's whole life (a stream's
too: :class:`~.sse.EventStream` releases it once the response ended, however
it ended). Names, loading and eviction are the registry's; this module only
maps requests to it, and counts and reports per model (``/health``,
``/v1/models``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ..config import EngineConfig
from ..engine import AsyncEngine
from ..errors import GenerateError, OxiLlamaError
from ..registry import ModelRegistry
from ..stats import EngineStats, PrefixCacheStats
from .admission import Admission
from .errors import APIError, bad_request, shutting_down
from .metrics import ModelGauges

__all__ = ["Models", "OneModel", "RegistryModels", "Served"]

_log = logging.getLogger("oxillama_py.server")


class Served:
    """What the app keeps for one name: its base model (an adapter's), its admission counter."""

    def __init__(self, name: str, parent: str | None, capacity: int) -> None:
        self.name = name
        self.parent = parent
        self.admission = Admission(capacity)


class Models:
    """The names an app serves (the first one answers requests that name none), and their engines."""

    def __init__(self, names: tuple[str, ...], parents: dict[str, str], max_queue: int) -> None:
        self.names = names
        self.served = {
            name: Served(name, parents.get(name), self.config(name).max_concurrency + max_queue) for name in names
        }

    @property
    def default(self) -> str:
        return self.names[0]

    def pick(self, model: object) -> Served:
        """The served name a request's ``model`` asks for (``None``: the first): 404 for one nobody serves."""
        if model is None:
            return self.served[self.default]
        if not isinstance(model, str):
            raise bad_request("'model' must be a string", "model")
        served = self.served.get(model)
        if served is None:
            known = ", ".join(repr(name) for name in self.names[:20])
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {known}",
                param="model",
                code="model_not_found",
            )
        return served

    def config(self, name: str) -> EngineConfig:
        raise NotImplementedError

    def use(self, name: str) -> AbstractAsyncContextManager[AsyncEngine]:
        """Hold ``name``'s engine (loading it first if need be) until the block ends."""
        raise NotImplementedError

    def engine_now(self, name: str) -> AsyncEngine | None:
        """``name``'s engine while it is loaded (for its numbers), else ``None``."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        """What the app's lifespan does first."""

    async def close(self) -> None:
        """What the app's lifespan does last (only for models the app built itself)."""

    def stats(self, name: str) -> EngineStats:
        engine = self.engine_now(name)
        if engine is None:
            return EngineStats(loaded=False, slots=0, active=0, waiting=0, decode_steps=0)
        return engine.stats

    def gauges(self) -> list[ModelGauges]:
        """Each model's state for ``/metrics``."""
        out = []
        for name in self.names:
            stats = self.stats(name)
            slots = stats.slots or self.config(name).max_concurrency
            out.append(ModelGauges(name, stats.loaded, stats.active, stats.waiting, slots))
        return out

    def health(self) -> dict[str, Any]:
        """``/health``'s numbers: the server's totals (the first model's name), and ``models`` by name."""
        each = {name: self._one(name) for name in self.names}
        first = each[self.default]
        totals = {
            key: sum(one[key] for one in each.values())
            for key in ("slots", "slots_busy", "queue", "admitted", "capacity", "requests_served", "decode_steps")
        }
        cache_keys = ("capacity_tokens", "tokens", "entries", "lookups", "hits", "cached_prompt_tokens", "evictions")
        cache = {key: sum(one["prefix_cache"][key] for one in each.values()) for key in cache_keys}
        cache["hit_rate"] = cache["hits"] / cache["lookups"] if cache["lookups"] else 0.0
        return {
            "model": self.default,
            "model_loaded": first["loaded"],
            **totals,
            "prefix_cache": cache,
            "models": each,
        }

    def _one(self, name: str) -> dict[str, Any]:
        stats = self.stats(name)
        served = self.served[name]
        return {
            "loaded": stats.loaded,
            **({"parent": served.parent} if served.parent is not None else {}),
            "slots": stats.slots or self.config(name).max_concurrency,
            "slots_busy": stats.active,
            "queue": stats.waiting,
            "admitted": served.admission.admitted,
            "capacity": served.admission.capacity,
            "requests_served": served.admission.served,
            "decode_steps": stats.decode_steps,
            "prefix_cache": _cache(stats.prefix_cache),
        }

    def cards(self, created: int) -> list[dict[str, Any]]:
        """``/v1/models``: every name; an adapter's ``parent`` and ``root`` name its base, as vLLM's do."""
        return [self.card(name, created) for name in self.names]

    def card(self, name: str, created: int) -> dict[str, Any]:
        parent = self.served[name].parent
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "oxillama_py",
            "root": name if parent is None else parent,
            "parent": parent,
        }


def _cache(cache: PrefixCacheStats) -> dict[str, Any]:
    return {
        "capacity_tokens": cache.capacity,
        "tokens": cache.tokens,
        "entries": cache.entries,
        "lookups": cache.lookups,
        "hits": cache.hits,
        "hit_rate": cache.hit_rate,
        "cached_prompt_tokens": cache.hit_tokens,
        "evictions": cache.evictions,
    }


class OneModel(Models):
    """One engine under one name: loaded by the app's lifespan, closed by it when the app built it."""

    def __init__(self, engine: AsyncEngine, name: str, max_queue: int, owns: bool) -> None:
        self.engine = engine
        self.owns = owns
        super().__init__((name,), {}, max_queue)

    def config(self, name: str) -> EngineConfig:
        return self.engine.config

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[AsyncEngine]:
        yield self.engine

    def engine_now(self, name: str) -> AsyncEngine | None:
        return self.engine

    @property
    def closed(self) -> bool:
        return self.engine.closed

    async def start(self) -> None:
        await self.engine.load_model()

    async def close(self) -> None:
        if self.owns:
            await self.engine.aclose()


class RegistryModels(Models):
    """A registry's names: each loaded on its first request; the registry unloads and reloads them."""

    def __init__(self, registry: ModelRegistry, max_queue: int, owns: bool) -> None:
        self.registry = registry
        self.owns = owns
        self.stopped = False
        names = tuple(registry.names)
        if not names:
            raise ValueError("the registry serves no model: add one before creating the app")
        parents = {name: parent for name in names if (parent := registry.parent(name)) is not None}
        super().__init__(names, parents, max_queue)

    def config(self, name: str) -> EngineConfig:
        return self.registry.config(name)

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[AsyncEngine]:
        held = False
        try:
            async with self.registry.use(name) as engine:
                held = True
                yield engine
        except GenerateError:
            if held:
                raise
            raise shutting_down() from None  # the registry was closed: its owner is shutting down
        except OxiLlamaError as exc:
            if held:  # the request's own error, not the load's
                raise
            _log.error("loading the model %r failed: %s: %s", name, type(exc).__name__, exc)
            raise APIError(
                500,
                f"the model {name!r} could not be loaded: {type(exc).__name__}",
                type="server_error",
                code="model_load_failed",
            ) from None

    def engine_now(self, name: str) -> AsyncEngine | None:
        return self.registry.engine(name)

    @property
    def closed(self) -> bool:
        return self.stopped

    async def close(self) -> None:
        self.stopped = True
        if self.owns:
            await self.registry.aclose()
