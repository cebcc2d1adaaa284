"""The HTTP ingress in front of the engine replicas on Ray Serve, and what crosses from one to the other.

Serve's routers choose a replica from a handle call's arguments, and an HTTP
request reaching a replica directly has none to show. So, as Serve's own LLM
apps are arranged, a thin ingress deployment takes the HTTP requests, reads
the text a router matches prefixes on (a chat's message contents, a
completion's prompt: :func:`routing_text`), and calls the engine replicas
through a handle with a :class:`Forwarded` request, whose ``prompt`` attribute
is what ``PrefixCacheAffinityRouter`` reads. A replica runs the request through
its server app and streams the ASGI messages back; the ingress sends them on,
and a client that disconnects cancels the handle call, which cancels the
generation in the replica. The last message of each answer carries the
replica's prefix-cache numbers, which the ingress keeps per replica
(:class:`ReplicaTable`) and shows in ``/health`` and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "LOCAL_ONLY",
    "STATS_MESSAGE",
    "Forwarded",
    "Ingress",
    "OxiLlamaIngress",
    "ReplicaTable",
    "Routed",
    "remote_options",
    "routing_text",
]

STATS_MESSAGE = "oxillama.replica_stats"
"""The type of the message a replica sends after an answer's last body chunk: its numbers, for the ingress."""

LOCAL_ONLY = ("progress", "callback", "cancel_token")
_PROMPTED = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}


@dataclass(frozen=True)
class Routed:
    """The first argument of a handle call that a prefix-aware router can route: its ``prompt`` is the text."""

    prompt: str
    model: str | None = None


@dataclass(frozen=True)
class Forwarded(Routed):
    """One HTTP request, as the ingress received it, for a replica's app to answer."""

    method: str = "GET"
    path: str = "/"
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    client: tuple[str, int] | None = None

    def scope(self) -> Scope:
        """The ASGI scope of the request, for the replica's app."""
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode("latin-1"),
            "root_path": "",
            "query_string": self.query,
            "headers": list(self.headers),
            "client": self.client,
            "server": None,
        }


def routing_text(path: str, body: bytes) -> tuple[str, str | None]:
    """The text a router matches prefixes on, and the request's ``model``; ``("", None)`` for other requests.

    A chat's text is its messages' contents one after the other (the text
    parts of a list content), as ``PrefixCacheAffinityRouter`` reads a
    ``messages`` argument; a completion's is its prompt (the first of a list).
    A body that is not JSON gives no text: the replica's app answers the 400.
    """
    kind = _PROMPTED.get(path.rstrip("/"))
    if kind is None or not body:
        return "", None
    try:
        data = json.loads(body)
    except ValueError:
        return "", None
    if not isinstance(data, dict):
        return "", None
    model = data.get("model") if isinstance(data.get("model"), str) else None
    value = data.get(kind)
    if kind == "prompt":
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]
        return (value if isinstance(value, str) else ""), model
    if not isinstance(value, list):
        return "", model
    return "".join(_text(m.get("content")) for m in value if isinstance(m, dict)), model


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def remote_options(options: dict[str, Any]) -> dict[str, Any]:
    """Reject what cannot cross to another process: it would run in the replica, not the caller."""
    local = sorted(name for name in options if name in LOCAL_ONLY)
    if local:
        raise TypeError(
            f"{', '.join(local)} cannot be passed through a deployment handle: it would run in the replica; "
            "stream with handle.options(stream=True).stream.remote(...) and cancel the response instead"
        )
    return options


@dataclass
class ReplicaTable:
    """Each replica's latest numbers, as its answers brought them (a replica that answered nothing is absent)."""

    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self, message: Mapping[str, Any]) -> None:
        self.replicas[str(message["replica"])] = {**message["stats"], "updated": time.time()}

    def health(self) -> dict[str, Any]:
        return {name: dict(numbers) for name, numbers in sorted(self.replicas.items())}

    def exposition(self) -> bytes:
        """The table in Prometheus' text format: counters labelled ``replica``."""
        families = (
            ("prefix_cache_queries", "Prompt tokens looked up in the replica's prefix cache.", "prompt_tokens"),
            ("prefix_cache_hits", "Prompt tokens the replica's prefix cache served.", "hit_tokens"),
            ("prefix_cache_lookups", "Requests that looked up the replica's prefix cache.", "lookups"),
            ("prefix_cache_hit_requests", "Requests that reused cells of the replica's prefix cache.", "hits"),
        )
        lines: list[str] = []
        for name, doc, key in families:
            metric = f"oxillama:replica_{name}"
            lines += [f"# HELP {metric}_total {doc}", f"# TYPE {metric}_total counter"]
            for replica, numbers in sorted(self.replicas.items()):
                value = numbers.get("prefix_cache", {}).get(key, 0)
                lines.append(f'{metric}_total{{replica="{replica}"}} {float(value)}')
        return ("\n".join(lines) + "\n").encode("utf-8")


class Ingress:
    """The ingress's ASGI app: each HTTP request forwarded to an engine replica through ``engine`` (a handle).

    ``GET /health`` and ``GET /metrics`` are a replica's (whichever Serve picks),
    with the table of every replica's numbers added: ``replicas`` in the JSON,
    ``oxillama:replica_*`` counters in the text.
    """

    def __init__(self, engine: Any, table: ReplicaTable, models: frozenset[str] = frozenset()) -> None:
        self.engine = engine
        self.table = table
        self.models = models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # the app's route prefix: the replica's app serves from "/"
            path = path[len(root) :] or "/"
        text, model = routing_text(path, body)
        request = Forwarded(
            prompt=text,
            model=model,
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b""),
            headers=tuple((bytes(k), bytes(v)) for k, v in scope.get("headers", [])),
            body=body,
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        # A served model's name is Serve's multiplexed model id: Serve routes the request to replicas that hold
        # it loaded. An unknown name goes anywhere, for the replica's app to answer 404.
        routed = {"multiplexed_model_id": model} if model in self.models else {}
        handle = self.engine.options(stream=True, **routed)
        # A request with a prompt is the router's first argument; one without (GET /health...) is a keyword,
        # which a prefix-aware router routes as power of two choices. So is one naming a model: the prefix
        # router's fallback for a prompt it has not seen (the replica holding the fewest prefixes) ignores
        # which replicas hold the model, and a model moved is a load, which costs more than a prefill.
        call = handle.forward.remote
        response = call(request) if text and not routed else call(request=request)
        await self._relay(response, request, send)

    async def _relay(self, response: Any, request: Forwarded, send: Send) -> None:
        extra = request.method == "GET" and request.path in ("/health", "/metrics")
        held: list[Message] = []
        try:
            async for message in response:
                if message["type"] == STATS_MESSAGE:
                    self.table.update(message)
                elif extra:
                    held.append(message)  # answered whole, with the table added
                else:
                    await send(message)
        finally:
            response.cancel()  # a no-op once the stream ended; else (a disconnect) it cancels the generation
        if extra:
            for message in _with_table(request.path, held, self.table):
                await send(message)


def _with_table(path: str, messages: list[Message], table: ReplicaTable) -> list[Message]:
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    if path == "/health":
        with contextlib.suppress(ValueError, TypeError):
            body = json.dumps({**json.loads(body), "replicas": table.health()}).encode("utf-8")
    else:
        body = body + table.exposition()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode("latin-1")))
    return [{**start, "headers": headers}, {"type": "http.response.body", "body": body, "more_body": False}]


async def relay_pieces(response: Any) -> AsyncIterator[Any]:
    """A handle's stream, passed on; its call cancelled when the consumer stops early."""
    try:
        async for piece in response:
            yield piece
    finally:
        response.cancel()


ENGINE_DEPLOYMENT = "OxiLlama"


@serve.ingress()
class OxiLlamaIngress:
    """The app's ingress: HTTP through :class:`Ingress`, and the engine's calls for Python handles.

    A handle call's prompt (a chat's message contents) is the router's text,
    as an HTTP request's is; calls without one (``health``) go to any replica.
    """

    def __init__(self, engine: Any, prefix_tree: bool = False, models: tuple[str, ...] = ()) -> None:
        if prefix_tree:
            _own_prefix_tree()
        self.engine = engine
        self.table = ReplicaTable()
        self._app = Ingress(engine, self.table, frozenset(models))

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app

    def _named(self) -> bool:
        return serve.get_multiplexed_model_id() in self._app.models

    def _engine(self, **options: Any) -> Any:
        """The engine handle, with the caller's ``multiplexed_model_id`` passed on when it names a model."""
        if self._named():
            options["multiplexed_model_id"] = serve.get_multiplexed_model_id()
        return self.engine.options(**options) if options else self.engine

    async def _call(self, text: str, method: str, *args: Any, **options: Any) -> Any:
        text = "" if self._named() else text  # as in Ingress.__call__
        return await _remote(self._engine().call, text, method, args, remote_options(options))

    async def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> Any:
        """:meth:`AsyncEngine.generate` in a replica."""
        return await self._call(prompt, "generate", prompt, max_tokens, **options)

    async def complete(self, prompt: str, max_tokens: int = 128, **options: Any) -> Any:
        """:meth:`AsyncEngine.complete` in a replica: text, tokens, finish reason, timings."""
        return await self._call(prompt, "complete", prompt, max_tokens, **options)

    async def generate_batch(self, prompts: Any, max_tokens: int = 128, **options: Any) -> Any:
        """:meth:`AsyncEngine.generate_batch` in one replica (routed by the first prompt)."""
        prompts = list(prompts)
        return await self._call(prompts[0] if prompts else "", "generate_batch", prompts, max_tokens, **options)

    async def complete_batch(self, prompts: Any, max_tokens: int = 128, **options: Any) -> Any:
        """:meth:`AsyncEngine.complete_batch` in one replica (routed by the first prompt)."""
        prompts = list(prompts)
        return await self._call(prompts[0] if prompts else "", "complete_batch", prompts, max_tokens, **options)

    async def chat(self, messages: Any, max_tokens: int = 128, **options: Any) -> Any:
        """:meth:`AsyncEngine.chat` in a replica, routed by its messages' contents."""
        text = "".join(_text(m.get("content")) for m in messages if isinstance(m, dict))
        return await self._call(text, "chat", list(messages), max_tokens, **options)

    async def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> AsyncIterator[str]:
        """Text pieces as they are decoded: call through ``handle.options(stream=True)``."""
        text, options = ("" if self._named() else prompt), remote_options(options)  # text: as in Ingress.__call__
        response = _remote(self._engine(stream=True).call_stream, text, "stream", (prompt, max_tokens), options)
        async for piece in relay_pieces(response):
            yield piece

    async def health(self) -> dict[str, Any]:
        """A replica's id and numbers (whichever Serve picks), with every replica's table under ``replicas``."""
        return {**(await self.engine.health.remote()), "replicas": self.table.health()}


def _remote(method: Any, text: str, name: str, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    """Call an engine replica's ``call``/``call_stream``: with the text as the router's argument, if there is one.

    Without text every argument is a keyword, which a prefix-aware router
    routes as power of two choices (it has nothing to match).
    """
    if text:
        return method.remote(Routed(text), name, args, options)
    return method.remote(method=name, args=args, options=options)


def _own_prefix_tree() -> None:
    """Create the prefix tree actor that ``PrefixCacheAffinityRouter`` would create, reserving no CPU.

    The router gets or creates a detached actor of this name for the engine
    deployment; created by the router, it would reserve a whole CPU (Ray's
    default for an actor), which a cluster whose CPUs the replicas hold does
    not have: the router would wait for it forever.
    """
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTreeActor

    context = serve.get_replica_context()
    namespace = "::".join(["serve", context.app_name, ENGINE_DEPLOYMENT])
    PrefixTreeActor.options(
        name="LlmPrefixTreeActor", namespace=namespace, get_if_exists=True, lifetime="detached", num_cpus=0
    ).remote()
