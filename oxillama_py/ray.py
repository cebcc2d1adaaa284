"""The OpenAI-compatible app as a Ray Serve application: engine replicas, each owning one :class:`AsyncEngine`.

One app definition: each engine replica builds the app of
:mod:`oxillama_py.server` (:func:`~oxillama_py.server.create_app`), whose
lifespan Serve runs. In front of them a thin ingress deployment
(:mod:`oxillama_py.ray_ingress`) takes HTTP and Python handle calls and
forwards each to an engine replica through a handle, with the prompt as the
argument Serve's router reads: ``PrefixCacheAffinityRouter`` (``router=
"prefix"``, the default) sends prompts that share a prefix to the replica
whose prefix cache holds it, unless that replica is too busy; ``"pow2"`` is
Serve's default power of two choices. Nothing here routes or batches: Serve
routes, each replica's engine batches what reaches it.

Needs the ``ray`` extra (``pip install 'oxillama-py[ray]'``).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

try:
    import ray
    from ray import serve
    from ray.serve.config import RequestRouterConfig
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("oxillama_py.ray needs Ray Serve: pip install 'oxillama-py[ray]'") from exc

from starlette.types import Message

from .chat import Message as ChatMessage
from .checks import check_int, check_number, check_type
from .config import EngineConfig
from .ray_ingress import (
    ENGINE_DEPLOYMENT,
    STATS_MESSAGE,
    Forwarded,
    OxiLlamaIngress,
    Routed,
    remote_options,
)
from .ray_replica import AppLifespan, NameReplica, ReplicaModels, build_registry
from .results import CompletionResult
from .server import ServerSettings, create_app

__all__ = [
    "REPLICA_HEADER",
    "ROUTERS",
    "OxiLlamaDeployment",
    "OxiLlamaIngress",
    "RayServeConfig",
    "build",
    "deploy",
    "prefix_router_class",
    "serve_until_signal",
]

REPLICA_HEADER = "x-oxillama-replica"
"""Every HTTP response names the replica that served it (also ``replica`` in ``/health``)."""

ROUTERS = ("prefix", "pow2")
"""``RayServeConfig.router``: Serve's ``PrefixCacheAffinityRouter``, or its default (power of two choices)."""


@dataclass(frozen=True)
class RayServeConfig:
    """Everything a deployment needs: the engine of each replica, how many replicas, their resources.

    ``replicas`` is a fixed count; ``autoscale=(min, max)`` lets Serve scale
    between the two, aiming at ``engine.max_concurrency`` requests in flight
    per replica (its slots). A replica takes at most that many requests; up to
    ``settings.max_queue`` more wait in Serve's router for the first free
    slot of any replica, and beyond that Serve answers 503. ``num_cpus`` is
    the Ray CPU resource a replica reserves, ``n_threads`` its llama.cpp
    threads (default: ``num_cpus`` rounded up). ``engine.model_path`` must
    exist on every node that runs a replica; ``None`` uses the default model
    package, which must then be installed on every node.

    ``router="prefix"`` routes a request to the replica that served the
    longest prefix of its prompt, unless that replica has more than
    ``imbalance`` requests in flight beyond the least busy one's (default:
    half its slots), when power of two choices picks; ``"pow2"`` always
    uses power of two choices (Serve's default router).
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    settings: ServerSettings = field(default_factory=ServerSettings)
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    num_cpus: float = 1.0
    n_threads: int | None = None
    name: str = "oxillama"
    route_prefix: str = "/"
    router: str = "prefix"
    imbalance: int | None = None
    models: tuple[tuple[str, EngineConfig], ...] = ()
    adapters: tuple[tuple[str, str | os.PathLike[str], float], ...] = ()
    max_loaded_models: int | None = None

    def __post_init__(self) -> None:
        check_type("engine", self.engine, EngineConfig, "an EngineConfig")
        check_type("settings", self.settings, ServerSettings, "a ServerSettings")
        check_int("replicas", self.replicas, low=1)
        if self.autoscale is not None:
            if not isinstance(self.autoscale, tuple) or len(self.autoscale) != 2:
                raise TypeError(f"autoscale must be a (min_replicas, max_replicas) tuple, got {self.autoscale!r}")
            low, high = self.autoscale
            check_int("autoscale's min_replicas", low, low=0)
            check_int("autoscale's max_replicas", high, low=1)
            if low > high:
                raise ValueError(f"autoscale's min_replicas ({low}) must not exceed max_replicas ({high})")
        check_number("num_cpus", self.num_cpus, low=0, low_open=True)
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(map(repr, ROUTERS))}, got {self.router!r}")
        if self.imbalance is not None:
            check_int("imbalance", self.imbalance, low=0)
        _check_models(self.models, self.adapters, self.max_loaded_models)
        if self.n_threads is not None:
            check_int("n_threads", self.n_threads, low=1)
        if not check_type("name", self.name, str, "a non-empty str"):
            raise ValueError("name must be a non-empty str")
        if not check_type("route_prefix", self.route_prefix, str, "a str starting with '/'").startswith("/"):
            raise ValueError(f"route_prefix must be a str starting with '/', got {self.route_prefix!r}")

    @property
    def threads(self) -> int:
        """llama.cpp threads of each replica."""
        return self.n_threads if self.n_threads is not None else max(1, math.ceil(self.num_cpus))

    @property
    def replica_engine(self) -> EngineConfig:
        return replace(self.engine, n_threads=self.threads)

    def deployment_options(self) -> dict[str, Any]:
        """The options of :func:`ray.serve.deployment` this config stands for."""
        slots = self.engine.max_concurrency
        options: dict[str, Any] = {
            "name": ENGINE_DEPLOYMENT,
            "ray_actor_options": {"num_cpus": self.num_cpus},
            # A replica takes no more than its slots: the rest wait in Serve's router, which hands
            # each to the first replica with a free slot (a queue inside a replica would pin a
            # request to it while another replica idles).
            "max_ongoing_requests": slots,
            "max_queued_requests": self.settings.max_queue,
        }
        if self.router == "prefix":
            imbalance = max(1, slots // 2) if self.imbalance is None else self.imbalance
            options["request_router_config"] = RequestRouterConfig(
                request_router_class=prefix_router_class(),
                request_router_kwargs={"imbalanced_threshold": imbalance},
            )
        if self.autoscale is None:
            options["num_replicas"] = self.replicas
        else:
            low, high = self.autoscale
            options["autoscaling_config"] = {
                "min_replicas": low,
                "initial_replicas": max(low, 1),
                "max_replicas": high,
                "target_ongoing_requests": slots,
            }
        return options

    def ingress_options(self) -> dict[str, Any]:
        """The ingress deployment's options: one replica, no CPU reserved, never the one to say 503."""
        limit = (
            (self.engine.max_concurrency + self.settings.max_queue) * 4 * max((self.replicas, *(self.autoscale or ())))
        )
        return {
            "name": "OxiLlamaIngress",
            "num_replicas": 1,
            "ray_actor_options": {"num_cpus": 0},
            "max_ongoing_requests": max(1000, limit),
        }


class OxiLlamaDeployment:
    """One engine replica: the server app over its own engine, for the ingress, and the engine's handle calls.

    The app's lifespan loads the engine before the replica takes requests
    (Serve awaits this ``__init__``) and closes it when the replica stops.
    """

    async def __init__(self, config: RayServeConfig) -> None:  # type: ignore[misc]  # Serve awaits it
        self.replica = _replica_id()
        settings = replace(config.settings, replica=self.replica)
        registry = None
        if config.models:
            registry = build_registry(config.models, config.adapters, config.max_loaded_models, config.threads)
            app = create_app(registry, replace(settings, model_name=None))
            self.models = ReplicaModels(None, registry)
        else:
            app = create_app(config.replica_engine, settings)
            self.models = ReplicaModels(app.state.server.engine, None)
        self._named = NameReplica(app, REPLICA_HEADER, self.replica)
        self._lifespan = AppLifespan(app)
        await self._lifespan.start()

    async def __del__(self) -> None:
        await self._lifespan.stop()
        if self.models.registry is not None:
            await self.models.registry.aclose()

    async def forward(self, request: Forwarded) -> AsyncIterator[Message]:
        """The ASGI messages of this replica's app answering ``request`` (from the ingress), then its numbers.

        Cancelling the call (the ingress does when its client disconnects) shows
        the app a disconnect and cancels it, which cancels the generation.
        """
        messages: asyncio.Queue[Message | None] = asyncio.Queue()
        disconnect = asyncio.Event()
        body: list[Message] = [{"type": "http.request", "body": request.body, "more_body": False}]

        async def receive() -> Message:
            if body:
                return body.pop()
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def run() -> None:
            try:
                await self._named(request.scope(), receive, messages.put)
            finally:
                messages.put_nowait(None)

        await self.models.select()
        task = asyncio.ensure_future(run())
        try:
            while (message := await messages.get()) is not None:
                yield message
            await task  # its exception, if any
        finally:
            if not task.done():
                disconnect.set()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        yield self.stats_message()

    def stats_message(self) -> Message:
        """This replica's prefix-cache numbers, as the ingress keeps them."""
        return {"type": STATS_MESSAGE, "replica": self.replica, "stats": self.models.numbers()}

    async def call(
        self, route: Routed | None = None, method: str = "", args: Sequence[Any] = (), options: Any = None
    ) -> Any:
        """One of the handle calls below, from the ingress (``route`` is what the router read)."""
        if method not in _CALLS:
            raise ValueError(f"no handle call {method!r}")
        return await getattr(self, method)(*args, **(options or {}))

    async def call_stream(
        self, route: Routed | None = None, method: str = "stream", args: Sequence[Any] = (), options: Any = None
    ) -> AsyncIterator[str]:
        """:meth:`stream` from the ingress."""
        async with aclosing(self.stream(*args, **(options or {}))) as pieces:
            async for piece in pieces:
                yield piece

    async def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        """:meth:`AsyncEngine.generate` in this replica."""
        async with self.models.use() as engine:
            return await engine.generate(prompt, max_tokens, **remote_options(options))

    async def complete(self, prompt: str, max_tokens: int = 128, **options: Any) -> CompletionResult:
        """:meth:`AsyncEngine.complete` in this replica: text, tokens, finish reason, timings."""
        async with self.models.use() as engine:
            return await engine.complete(prompt, max_tokens, **remote_options(options))

    async def generate_batch(self, prompts: Sequence[str], max_tokens: int = 128, **options: Any) -> list[str]:
        """:meth:`AsyncEngine.generate_batch` in this replica (one replica batches them together)."""
        async with self.models.use() as engine:
            return await engine.generate_batch(list(prompts), max_tokens, **remote_options(options))

    async def complete_batch(
        self, prompts: Sequence[str], max_tokens: int = 128, **options: Any
    ) -> list[CompletionResult]:
        """:meth:`AsyncEngine.complete_batch` in this replica."""
        async with self.models.use() as engine:
            return await engine.complete_batch(list(prompts), max_tokens, **remote_options(options))

    async def chat(self, messages: Sequence[ChatMessage], max_tokens: int = 128, **options: Any) -> CompletionResult:
        """:meth:`AsyncEngine.chat` in this replica."""
        async with self.models.use() as engine:
            return await engine.chat(messages, max_tokens, **remote_options(options))

    async def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> AsyncGenerator[str, None]:
        """Text pieces as they are decoded: call through ``handle.options(stream=True)``.

        A caller that stops iterating (or cancels the call) cancels the generation.
        """
        async with (
            self.models.use() as engine,
            aclosing(engine.stream(prompt, max_tokens, **remote_options(options))) as pieces,
        ):
            async for piece in pieces:
                yield piece

    async def health(self) -> dict[str, Any]:
        """The replica's id and its engines' numbers (what ``/health`` shows, as a dict)."""
        stats = [engine.stats for engine in self.models.engines().values()]
        numbers = self.models.numbers()
        return {
            "replica": self.replica,
            "node": socket.gethostname(),
            "model_loaded": bool(stats) and all(s.loaded for s in stats),
            "slots": sum(s.slots for s in stats),
            "slots_busy": sum(s.active for s in stats),
            "queue": sum(s.waiting for s in stats),
            **numbers,
        }


def _check_models(models: object, adapters: object, max_loaded: object) -> None:
    if not isinstance(models, tuple) or not all(
        isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) and m[0] and isinstance(m[1], EngineConfig)
        for m in models
    ):
        raise TypeError("models must be a tuple of (name, EngineConfig) pairs")
    if len({name for name, _ in models}) != len(models):
        raise ValueError("models must have distinct names")
    if not isinstance(adapters, tuple) or not all(isinstance(a, tuple) and len(a) == 3 for a in adapters):
        raise TypeError("adapters must be a tuple of (name, path, scale) triples")
    if adapters and not models:
        raise ValueError("adapters are served over the first of models: give models")
    if max_loaded is not None:
        check_int("max_loaded_models", max_loaded, low=1)


_CALLS = frozenset({"generate", "complete", "generate_batch", "complete_batch", "chat"})


def prefix_router_class() -> type:
    """Serve's ``PrefixCacheAffinityRouter`` (its public path needs vLLM or SGLang; the class itself does not)."""
    try:
        from ray.serve.llm.request_router import PrefixCacheAffinityRouter
    except ImportError:
        from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
            PrefixCacheAffinityRouter,
        )
    return PrefixCacheAffinityRouter  # type: ignore[no-any-return]


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (a unit test of the class): the host's name will do
        return socket.gethostname()


def build(config: RayServeConfig | None = None) -> serve.Application:
    """The Serve application of ``config`` (for ``serve.run`` or a Serve config file's import path)."""
    config = RayServeConfig() if config is None else config
    check_type("config", config, RayServeConfig, "a RayServeConfig")
    engine = serve.deployment(OxiLlamaDeployment).options(**config.deployment_options()).bind(config)
    ingress = serve.deployment(OxiLlamaIngress).options(**config.ingress_options())
    names = tuple(name for name, _ in config.models) + tuple(name for name, _, _ in config.adapters)
    return ingress.bind(engine, prefix_tree=config.router == "prefix", models=names)


def deploy(
    config: RayServeConfig | None = None,
    *,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> serve.handle.DeploymentHandle:
    """Start (``address=None``) or join (``"auto"``, ``"ray://..."``, ``"host:port"``) a Ray cluster and deploy.

    Returns the handle of the deployment; HTTP goes to ``http://host:port`` +
    ``config.route_prefix``. Serve's HTTP proxy keeps the ``host``/``port`` of
    the first deployment on a cluster.
    """
    config = RayServeConfig() if config is None else config
    app = build(config)
    _init_ray(address)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name=config.name, route_prefix=config.route_prefix)


def _init_ray(address: str | None) -> bool:
    """Start or join Ray unless this process already has; whether it did now."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True


def serve_until_signal(
    config: RayServeConfig, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """``python -m oxillama_py serve --ray``: deploy, wait for SIGINT or SIGTERM, then take the app down.

    A Ray instance started here is shut down with it; on a cluster that was
    joined (``address``), only this app is deleted.
    """
    started = not ray.is_initialized() and address is None
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(number: int, frame: object) -> None:
        stop.set()

    previous = {number: signal.signal(number, on_signal) for number in signals}
    try:
        if _init_ray(address):
            for number in signals:  # ray.init puts its own SIGTERM handler (exit 15) on a driver: ours again
                signal.signal(number, on_signal)
        if not stop.is_set():
            deploy(config, address=address, host=host, port=port)
            print(
                f"oxillama_py: {config.name} on Ray Serve at http://{host}:{port}{config.route_prefix}",
                flush=True,
            )
            stop.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if ray.is_initialized():
            try:
                serve.delete(config.name)
            finally:
                if started:
                    serve.shutdown()
                    ray.shutdown()
