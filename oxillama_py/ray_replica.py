"""What an engine replica on Ray Serve holds besides its handle calls: its app's lifespan, its models, multiplexing.

A replica serves one engine, or several named models from a
:class:`~oxillama_py.ModelRegistry` (:class:`ReplicaModels`). With several,
Serve's model multiplexing keeps track of which replica holds which model:
the ingress names a request's model as its ``multiplexed_model_id``, the
replica loads it through a ``@serve.multiplexed`` function (:func:`multiplexer`)
before its app answers, and Serve's router sends the next requests for that
model to the replicas that report it loaded. The registry does the loading
and, with ``max_loaded``, the unloading of the least recently used model; the
multiplexed function's limit is the same, so what Serve believes loaded is
what the registry holds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from typing import Any

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import EngineConfig
from .engine import AsyncEngine
from .registry import ModelRegistry

__all__ = ["AppLifespan", "NameReplica", "ReplicaModels", "build_registry", "multiplexer"]

ModelSpec = tuple[str, EngineConfig]
AdapterSpec = tuple[str, "str | os.PathLike[str]", float]


class AppLifespan:
    """An ASGI app's lifespan, run by hand: started before the replica serves, stopped when it goes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.events: asyncio.Queue[Message] = asyncio.Queue()
        self.replies: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Future[None] | None = None

    async def _reply(self, event: str) -> None:
        assert self.task is not None
        await self.events.put({"type": f"lifespan.{event}"})
        reply = asyncio.ensure_future(self.replies.get())
        either: set[asyncio.Future[Any]] = {reply, self.task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            self.task.result()  # the app's exception
            raise RuntimeError(f"the app's lifespan ended without answering lifespan.{event}")
        if reply.result()["type"] != f"lifespan.{event}.complete":
            raise RuntimeError(f"lifespan.{event} failed: {reply.result().get('message', '')}")

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

        async def send(message: Message) -> None:
            await self.replies.put(message)

        self.task = asyncio.ensure_future(self.app(scope, self.events.get, send))
        await self._reply("startup")

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            await self._reply("shutdown")
            await self.task


class NameReplica:
    """ASGI middleware: every HTTP response carries the header ``name`` with the replica's id."""

    def __init__(self, app: ASGIApp, name: str, replica: str) -> None:
        self.app = app
        self.header = (name.encode("latin-1"), replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


def build_registry(
    models: Sequence[ModelSpec], adapters: Sequence[AdapterSpec], max_loaded: int | None, threads: int
) -> ModelRegistry:
    """A replica's registry: every model with the replica's threads, the adapters over the first model."""
    registry = ModelRegistry(max_loaded=max_loaded)
    for name, config in models:
        registry.add(name, replace(config, n_threads=threads))
    for name, path, scale in adapters:
        registry.add_lora(name, base=models[0][0], path=path, scale=scale)
    return registry


class _Warm:
    """What the multiplexed function returns: a model this replica has loaded (the registry holds it)."""

    def __init__(self, name: str) -> None:
        self.name = name


def multiplexer(registry: ModelRegistry, max_loaded: int | None) -> Callable[[str], Awaitable[Any]]:
    """A ``@serve.multiplexed`` function that loads a model through ``registry`` (and so tells Serve it is here)."""

    async def load(model_id: str) -> _Warm:
        async with registry.use(model_id):
            pass
        return _Warm(model_id)

    return serve.multiplexed(max_num_models_per_replica=max_loaded or -1)(load)  # type: ignore[no-any-return]


class ReplicaModels:
    """A replica's models: one engine (``registry`` None), or a registry's names (the first is the default)."""

    def __init__(self, engine: AsyncEngine | None, registry: ModelRegistry | None) -> None:
        self.one = engine
        self.registry = registry
        self.warm = None if registry is None else multiplexer(registry, registry.max_loaded)

    async def select(self) -> None:
        """Load the request's model (Serve's ``multiplexed_model_id``), if it names one, before the app runs."""
        model = serve.get_multiplexed_model_id()
        if model and self.warm is not None and self.registry is not None and model in self.registry:
            await self.warm(model)

    @asynccontextmanager
    async def use(self) -> AsyncIterator[AsyncEngine]:
        """The engine of a handle call: the request's model, else the only or first one."""
        if self.registry is None:
            assert self.one is not None
            yield self.one
            return
        await self.select()
        model = serve.get_multiplexed_model_id() or self.registry.names[0]
        async with self.registry.use(model) as engine:
            yield engine

    def engines(self) -> dict[str, AsyncEngine]:
        """The loaded engines by model name."""
        if self.registry is None:
            assert self.one is not None
            return {"": self.one}
        return {name: e for name in self.registry.loaded if (e := self.registry.engine(name)) is not None}

    def numbers(self) -> dict[str, Any]:
        """The prefix-cache numbers of the replica (summed over its loaded models) and which models are loaded."""
        engines = self.engines()
        caches = [asdict(engine.stats.prefix_cache) for engine in engines.values()]
        total = {key: sum(c[key] for c in caches) for key in caches[0]} if caches else {}
        out: dict[str, Any] = {
            "prefix_cache": total,
            "decode_steps": sum(e.stats.decode_steps for e in engines.values()),
        }
        if self.registry is not None:
            out["models_loaded"] = list(self.registry.loaded)
        return out
