"""The OpenAI-compatible app as a Ray Serve deployment: replicas, each owning one :class:`AsyncEngine`.

One app definition: each replica builds the app of :mod:`oxillama_py.server`
(:func:`~oxillama_py.server.create_app`) and Serve runs its lifespan, routes
HTTP requests to it and load-balances across replicas and machines. The same
replica answers Python calls through a deployment handle
(``await handle.generate.remote(...)``; ``handle.options(stream=True)
.stream.remote(...)`` streams text pieces). Nothing here routes or batches:
Serve routes, each replica's engine batches what reaches it.

Needs the ``ray`` extra (``pip install 'oxillama-py[ray]'``).
"""

from __future__ import annotations

import math
import signal
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

try:
    import ray
    from ray import serve
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("oxillama_py.ray needs Ray Serve: pip install 'oxillama-py[ray]'") from exc

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .chat import Message as ChatMessage
from .checks import check_int, check_number, check_type
from .config import EngineConfig
from .engine import AsyncEngine
from .results import CompletionResult
from .server import ServerSettings, create_app

__all__ = ["REPLICA_HEADER", "RayServeConfig", "OxiLlamaDeployment", "build", "deploy", "serve_until_signal"]

REPLICA_HEADER = "x-oxillama-replica"
"""Every HTTP response names the replica that served it (also ``replica`` in ``/health``)."""

_LOCAL_ONLY = ("progress", "callback", "cancel_token")


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
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    settings: ServerSettings = field(default_factory=ServerSettings)
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    num_cpus: float = 1.0
    n_threads: int | None = None
    name: str = "oxillama"
    route_prefix: str = "/"

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
            "name": "OxiLlama",
            "ray_actor_options": {"num_cpus": self.num_cpus},
            # A replica takes no more than its slots: the rest wait in Serve's router, which hands
            # each to the first replica with a free slot (a queue inside a replica would pin a
            # request to it while another replica idles).
            "max_ongoing_requests": slots,
            "max_queued_requests": self.settings.max_queue,
        }
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


class _NameReplica:
    """ASGI middleware: every HTTP response carries :data:`REPLICA_HEADER`."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode("latin-1"), replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


@serve.ingress()
class OxiLlamaDeployment:
    """One replica: the server app over its own engine, and the same engine for handle calls.

    The engine is loaded by the app's lifespan, which Serve runs before the
    replica takes requests, and closed when the replica stops.
    """

    def __init__(self, config: RayServeConfig) -> None:
        self.replica = _replica_id()
        settings = replace(config.settings, replica=self.replica)
        self._app = create_app(config.replica_engine, settings)
        self.engine: AsyncEngine = self._app.state.server.engine

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return _NameReplica(self._app, self.replica)

    async def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        """:meth:`AsyncEngine.generate` in this replica."""
        return await self.engine.generate(prompt, max_tokens, **_remote_options(options))

    async def complete(self, prompt: str, max_tokens: int = 128, **options: Any) -> CompletionResult:
        """:meth:`AsyncEngine.complete` in this replica: text, tokens, finish reason, timings."""
        return await self.engine.complete(prompt, max_tokens, **_remote_options(options))

    async def generate_batch(self, prompts: Sequence[str], max_tokens: int = 128, **options: Any) -> list[str]:
        """:meth:`AsyncEngine.generate_batch` in this replica (one replica batches them together)."""
        return await self.engine.generate_batch(list(prompts), max_tokens, **_remote_options(options))

    async def complete_batch(
        self, prompts: Sequence[str], max_tokens: int = 128, **options: Any
    ) -> list[CompletionResult]:
        """:meth:`AsyncEngine.complete_batch` in this replica."""
        return await self.engine.complete_batch(list(prompts), max_tokens, **_remote_options(options))

    async def chat(self, messages: Sequence[ChatMessage], max_tokens: int = 128, **options: Any) -> CompletionResult:
        """:meth:`AsyncEngine.chat` in this replica."""
        return await self.engine.chat(messages, max_tokens, **_remote_options(options))

    async def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> AsyncIterator[str]:
        """Text pieces as they are decoded: call through ``handle.options(stream=True)``.

        A caller that stops iterating (or cancels the call) cancels the generation.
        """
        async with self.engine.stream(prompt, max_tokens, **_remote_options(options)) as pieces:
            async for piece in pieces:
                yield piece

    async def health(self) -> dict[str, Any]:
        """The replica's id and its engine's numbers (what ``/health`` shows, as a dict)."""
        stats = self.engine.stats
        return {
            "replica": self.replica,
            "node": socket.gethostname(),
            "model_loaded": stats.loaded,
            "slots": stats.slots,
            "slots_busy": stats.active,
            "queue": stats.waiting,
            "decode_steps": stats.decode_steps,
        }


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (a unit test of the class): the host's name will do
        return socket.gethostname()


def _remote_options(options: dict[str, Any]) -> dict[str, Any]:
    """Reject what cannot cross to another process: it would run in the replica, not the caller."""
    local = sorted(name for name in options if name in _LOCAL_ONLY)
    if local:
        raise TypeError(
            f"{', '.join(local)} cannot be passed through a deployment handle: it would run in the replica; "
            "stream with handle.options(stream=True).stream.remote(...) and cancel the response instead"
        )
    return options


def build(config: RayServeConfig | None = None) -> serve.Application:
    """The Serve application of ``config`` (for ``serve.run`` or a Serve config file's import path)."""
    config = RayServeConfig() if config is None else config
    check_type("config", config, RayServeConfig, "a RayServeConfig")
    return serve.deployment(OxiLlamaDeployment).options(**config.deployment_options()).bind(config)


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
