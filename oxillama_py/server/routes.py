"""The OpenAI-compatible ASGI application: :func:`create_app`, its lifespan and its route handlers.

A handler reads and checks its body (size first, then JSON, then fields),
admits the request or answers 429 (:mod:`.admission`), turns it into one
engine call (:mod:`.jobs`) and answers in OpenAI's shapes
(:mod:`.responses`). Batching, cancellation and progress are the engine's: a
client's disconnect ends the cancel scope its request runs in, as any
cancellation does. Which engine serves a request is :mod:`.models`' (one
engine, or a registry's names). The lifespan loads and closes an engine the
app built itself; every error leaves in OpenAI's shape (:mod:`.errors`).
"""

from __future__ import annotations

import html
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources
from typing import TypeVar

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..bus import take_order
from ..config import EngineConfig
from ..engine import AsyncEngine
from ..errors import GenerateError
from ..registry import ModelRegistry
from .admission import ServerSettings, authorize, read_json
from .embeddings import detokenize_answer, embeddings_answer, tokenize_answer
from .errors import APIError, bad_request, engine_errors, shutting_down
from .fields import check_vocabulary
from .jobs import JobRun, open_job
from .metrics import CONTENT_TYPE, Metrics
from .models import Models, OneModel, RegistryModels, Served
from .observe import RequestContext, current_request
from .requests import Job, parse_chat, parse_completion
from .responses import completion_body, stream_body
from .sse import EventStream

__all__ = ["Server", "create_app"]

_T = TypeVar("_T")


def create_app(
    engine: AsyncEngine | EngineConfig | ModelRegistry | None = None,
    settings: ServerSettings | None = None,
) -> Starlette:
    """The OpenAI-compatible app over ``engine``: an :class:`AsyncEngine`, a config to build one, or a registry.

    An engine built here is loaded at startup and closed at shutdown by the
    app's lifespan; an engine passed in belongs to the caller (load it in your
    own lifespan when the app is mounted inside yours: a mounted app's lifespan
    does not run). ``app.state.server.engine`` is the app's engine.

    A :class:`~oxillama_py.ModelRegistry` serves each of its names: a request's
    ``model`` picks one (omitted: the first), loaded on first use; the registry
    belongs to the caller, who closes it (``app.state.server.registry``).
    """
    if settings is None:
        settings = ServerSettings()
    if not isinstance(settings, ServerSettings):
        raise TypeError(f"settings must be a ServerSettings, got {type(settings).__name__}")
    models: Models
    if isinstance(engine, ModelRegistry):
        if settings.model_name is not None:
            raise ValueError("settings.model_name names a single engine's model; a registry names its own models")
        models = RegistryModels(engine, settings.max_queue, owns=False)
    elif isinstance(engine, AsyncEngine):
        models = OneModel(engine, settings.served_name(engine.config), settings.max_queue, owns=False)
    elif engine is None or isinstance(engine, EngineConfig):
        built = AsyncEngine(engine)
        models = OneModel(built, settings.served_name(built.config), settings.max_queue, owns=True)
    else:
        raise TypeError(
            f"engine must be an AsyncEngine, an EngineConfig, a ModelRegistry or None, got {type(engine).__name__}"
        )
    server = Server(models, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.models.start()
        try:
            yield
        finally:
            server.stopping = True
            with anyio.CancelScope(shield=True):
                await server.models.close()

    routes = [
        Route("/", server.playground, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models_page, methods=["GET"]),
        Route("/v1/models/{name:path}", server.model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/embeddings", server.embeddings, methods=["POST"]),
        Route("/tokenize", server.tokenize, methods=["POST"]),
        Route("/detokenize", server.detokenize, methods=["POST"]),
        Route("/metrics", server.metrics_page, methods=["GET"]),
    ]
    middleware = [Middleware(RequestContext, on_response=server.metrics.count_request)]
    if settings.cors_origins:  # the methods and headers OpenAI's clients send (x-stainless-*, X-Request-Id...)
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["X-Request-Id", "Retry-After"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.server = server
    return app


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    return APIError(exc.status_code, str(exc.detail), code=None).response()


async def _internal_error(request: Request, exc: Exception) -> Response:
    return APIError(500, "internal server error", type="server_error").response()


class Server:
    """The state behind the routes (the models, the settings) and the routes."""

    def __init__(self, models: Models, settings: ServerSettings) -> None:
        self.models = models
        self.settings = settings
        self.created = int(time.time())
        self.api_key = settings.key()
        self.model_name = models.default
        self.stopping = False
        self.metrics = Metrics(models.names, models.gauges)

    @property
    def engine(self) -> AsyncEngine:
        """The engine of an app over one engine (an app over a registry has one per name: see ``registry``)."""
        if not isinstance(self.models, OneModel):
            raise TypeError(
                "this app serves a ModelRegistry: its engines are the registry's (app.state.server.registry)"
            )
        return self.models.engine

    @property
    def registry(self) -> ModelRegistry | None:
        """The registry the app serves, or ``None`` for an app over one engine."""
        return self.models.registry if isinstance(self.models, RegistryModels) else None

    @property
    def shutting_down(self) -> bool:
        """Once the lifespan ends, or the engine is closed (a mounted app's host closes it)."""
        return self.stopping or self.models.closed

    async def chat(self, request: Request) -> Response:
        return await self.serve(request, parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self.serve(request, parse_completion)

    async def serve(self, request: Request, parse: Callable[[object], Job]) -> Response:
        authorize(request, self.api_key)
        job = parse(await read_json(request, self.settings.max_body_bytes))
        served = self.models.pick(job.model)
        if self.shutting_down:
            raise shutting_down()
        admission = served.admission
        count = job.n * max(1, len(job.prompts))
        if count > admission.capacity:
            raise bad_request(
                f"the request asks for {count} sequences (n times the prompts); this server admits at most "
                f"{admission.capacity} at once",
                "n",
            )
        admission.reserve(count, self.settings.retry_after_secs)
        order = take_order()  # its place in the waiting line: admitted now, first come first served
        hold = AsyncExitStack()
        try:
            engine = await hold.enter_async_context(self.models.use(served.name))
            check_vocabulary(job.sampling, engine.vocab_size())
            run = await engine_errors(self._open(engine, served.name, job, order))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await hold.aclose()
            admission.release(count)
            raise
        if job.stream:
            return EventStream(
                stream_body(run, served.name),
                on_close=lambda: admission.release(count),
                keepalive=self.settings.keepalive_secs,
                release=hold.aclose,
            )
        try:
            results = await _until_disconnect(request, lambda: engine_errors(run.results()))
        finally:
            with anyio.CancelScope(shield=True):
                await hold.aclose()
            admission.release(count)
        if results is None:  # the client went away; nobody reads this
            info = current_request()
            if info is not None:
                info.cancelled = True
            return Response(status_code=499)
        return JSONResponse(completion_body(run, results, served.name))

    async def _open(self, engine: AsyncEngine, name: str, job: Job, order: int) -> JobRun:
        try:
            tap = self.metrics.tap(name, job.n, current_request())
            return await open_job(engine, job, self.settings.default_max_tokens, observers=[tap], order=order)
        except GenerateError:
            if self.shutting_down:  # the engine closed under us: the server is going away, not failing
                raise shutting_down() from None
            raise

    async def _body_and_model(self, request: Request) -> tuple[object, Served]:
        """A non-generating request's body and the model its ``model`` field names (the first when none)."""
        authorize(request, self.api_key)
        body = await read_json(request, self.settings.max_body_bytes)
        served = self.models.pick(body.get("model") if isinstance(body, dict) else None)
        if self.shutting_down:
            raise shutting_down()
        return body, served

    async def embeddings(self, request: Request) -> Response:
        body, served = await self._body_and_model(request)
        async with self.models.use(served.name) as engine:
            answer = await embeddings_answer(engine, body, served.name)
        info = current_request()
        if info is not None:
            info.prompt_tokens = answer["usage"]["prompt_tokens"]
        return JSONResponse(answer)

    async def tokenize(self, request: Request) -> Response:
        body, served = await self._body_and_model(request)
        async with self.models.use(served.name) as engine:
            return JSONResponse(await tokenize_answer(engine, body))

    async def detokenize(self, request: Request) -> Response:
        body, served = await self._body_and_model(request)
        async with self.models.use(served.name) as engine:
            return JSONResponse(await detokenize_answer(engine, body))

    async def metrics_page(self, request: Request) -> Response:
        """Prometheus' text format; behind the key unless ``metrics_public``."""
        if not self.settings.metrics_public:
            authorize(request, self.api_key)
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def models_page(self, request: Request) -> Response:
        authorize(request, self.api_key)
        return JSONResponse({"object": "list", "data": self.models.cards(self.created)})

    async def model(self, request: Request) -> Response:
        authorize(request, self.api_key)
        name = request.path_params["name"]
        if name not in self.models.served:
            raise APIError(404, f"the model {name!r} does not exist", code="model_not_found")
        return JSONResponse(self.models.card(name, self.created))

    async def health(self, request: Request) -> Response:
        numbers = self.models.health()
        if self.shutting_down:
            status = "shutting_down"
        elif isinstance(self.models, OneModel) and not numbers["model_loaded"]:
            status = "loading"
        else:
            status = "ok"
        replica = {"replica": self.settings.replica} if self.settings.replica is not None else {}
        body = {"status": status, "model": numbers.pop("model"), **replica, **numbers}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def playground(self, request: Request) -> Response:
        page = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{MODEL}}", html.escape(self.model_name)))


async def _until_disconnect(request: Request, work: Callable[[], Awaitable[_T]]) -> _T | None:
    """Run ``work()`` until it ends, or until the client disconnects (then it is cancelled: ``None``).

    Starlette listens for the disconnect only while it streams a body
    (:class:`~.sse.EventStream`); an answer that waits for its whole result
    listens here, and polling ``request.is_disconnected()`` would only notice
    between two polls.
    """
    outcome: list[tuple[_T | None, Exception | None]] = []

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        group.cancel_scope.cancel()

    async def run() -> None:
        try:
            outcome.append((await work(), None))
        except Exception as exc:  # re-raised below, outside the task group, unwrapped
            outcome.append((None, exc))
        group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        group.start_soon(run)
    if not outcome:
        return None
    value, error = outcome[0]
    if error is not None:
        raise error
    return value
