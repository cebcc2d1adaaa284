"""The OpenAI-compatible ASGI application: :func:`create_app`, its lifespan and its route handlers.

A handler reads and checks its body (size first, then JSON, then fields),
admits the request or answers 429 (:mod:`.admission`), turns it into one
engine call (:mod:`.jobs`) and answers in OpenAI's shapes
(:mod:`.responses`). Batching, cancellation and progress are the engine's: a
client's disconnect ends the cancel scope its request runs in, as any
cancellation does. The lifespan loads and closes an engine the app built
itself; every error leaves in OpenAI's shape (:mod:`.errors`).
"""

from __future__ import annotations

import html
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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

from ..config import EngineConfig
from ..engine import AsyncEngine
from ..errors import GenerateError
from .admission import Admission, ServerSettings, authorize, read_json
from .embeddings import detokenize_answer, embeddings_answer, tokenize_answer
from .errors import APIError, bad_request, engine_errors, shutting_down
from .fields import check_vocabulary
from .jobs import JobRun, open_job
from .metrics import CONTENT_TYPE, Metrics
from .observe import RequestContext, current_request
from .requests import Job, parse_chat, parse_completion
from .responses import completion_body, model_card, stream_body
from .sse import EventStream

__all__ = ["Server", "create_app"]

_T = TypeVar("_T")


def create_app(
    engine: AsyncEngine | EngineConfig | None = None,
    settings: ServerSettings | None = None,
) -> Starlette:
    """The OpenAI-compatible app over ``engine`` (an :class:`AsyncEngine`, or a config to build one).

    An engine built here is loaded at startup and closed at shutdown by the
    app's lifespan; an engine passed in belongs to the caller (load it in your
    own lifespan when the app is mounted inside yours: a mounted app's lifespan
    does not run). ``app.state.server.engine`` is the app's engine.
    """
    owns = not isinstance(engine, AsyncEngine)
    if isinstance(engine, AsyncEngine):
        the_engine = engine
    elif engine is None or isinstance(engine, EngineConfig):
        the_engine = AsyncEngine(engine)
    else:
        raise TypeError(f"engine must be an AsyncEngine, an EngineConfig or None, got {type(engine).__name__}")
    if settings is None:
        settings = ServerSettings()
    if not isinstance(settings, ServerSettings):
        raise TypeError(f"settings must be a ServerSettings, got {type(settings).__name__}")
    server = Server(the_engine, settings, owns)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.engine.load_model()
        try:
            yield
        finally:
            server.stopping = True
            if server.owns_engine:
                with anyio.CancelScope(shield=True):
                    await server.engine.aclose()

    routes = [
        Route("/", server.playground, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
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
    """The state behind the routes (the engine, the settings, the admission counter) and the routes."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings, owns_engine: bool) -> None:
        self.engine = engine
        self.settings = settings
        self.owns_engine = owns_engine
        self.admission = Admission(engine.config.max_concurrency + settings.max_queue)
        self.created = int(time.time())
        self.api_key = settings.key()
        self.model_name = settings.served_name(engine.config)
        self.stopping = False
        self.metrics = Metrics(engine, self.model_name)

    @property
    def shutting_down(self) -> bool:
        """Once the lifespan ends, or the engine is closed (a mounted app's host closes it)."""
        return self.stopping or self.engine.closed

    async def chat(self, request: Request) -> Response:
        return await self.serve(request, parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self.serve(request, parse_completion)

    async def serve(self, request: Request, parse: Callable[[object], Job]) -> Response:
        authorize(request, self.api_key)
        job = parse(await read_json(request, self.settings.max_body_bytes))
        check_vocabulary(job.sampling, self.engine.vocab_size())
        if job.model is not None and job.model != self.model_name:
            raise APIError(
                404,
                f"the model {job.model!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        if self.shutting_down:
            raise shutting_down()
        count = job.n * max(1, len(job.prompts))
        if count > self.admission.capacity:
            raise bad_request(
                f"the request asks for {count} sequences (n times the prompts); this server admits at most "
                f"{self.admission.capacity} at once",
                "n",
            )
        self.admission.reserve(count, self.settings.retry_after_secs)
        try:
            run = await engine_errors(self._open(job))
        except BaseException:
            self.admission.release(count)
            raise
        if job.stream:
            return EventStream(
                stream_body(run, self.model_name),
                on_close=lambda: self.admission.release(count),
                keepalive=self.settings.keepalive_secs,
            )
        try:
            results = await _until_disconnect(request, lambda: engine_errors(run.results()))
        finally:
            self.admission.release(count)
        if results is None:  # the client went away; nobody reads this
            info = current_request()
            if info is not None:
                info.cancelled = True
            return Response(status_code=499)
        return JSONResponse(completion_body(run, results, self.model_name))

    async def _open(self, job: Job) -> JobRun:
        try:
            tap = self.metrics.tap(job.n, current_request())
            return await open_job(self.engine, job, self.settings.default_max_tokens, observers=[tap])
        except GenerateError:
            if self.shutting_down:  # the engine closed under us: the server is going away, not failing
                raise shutting_down() from None
            raise

    async def embeddings(self, request: Request) -> Response:
        authorize(request, self.api_key)
        body = await read_json(request, self.settings.max_body_bytes)
        if self.shutting_down:
            raise shutting_down()
        answer = await embeddings_answer(self.engine, body, self.model_name)
        info = current_request()
        if info is not None:
            info.prompt_tokens = answer["usage"]["prompt_tokens"]
        return JSONResponse(answer)

    async def tokenize(self, request: Request) -> Response:
        authorize(request, self.api_key)
        return JSONResponse(await tokenize_answer(self.engine, await read_json(request, self.settings.max_body_bytes)))

    async def detokenize(self, request: Request) -> Response:
        authorize(request, self.api_key)
        body = await read_json(request, self.settings.max_body_bytes)
        return JSONResponse(await detokenize_answer(self.engine, body))

    async def metrics_page(self, request: Request) -> Response:
        """Prometheus' text format; behind the key unless ``metrics_public``."""
        if not self.settings.metrics_public:
            authorize(request, self.api_key)
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        authorize(request, self.api_key)
        return JSONResponse({"object": "list", "data": [model_card(self.model_name, self.created)]})

    async def model(self, request: Request) -> Response:
        authorize(request, self.api_key)
        if request.path_params["name"] != self.model_name:
            raise APIError(404, f"the model {request.path_params['name']!r} does not exist", code="model_not_found")
        return JSONResponse(model_card(self.model_name, self.created))

    async def health(self, request: Request) -> Response:
        stats = self.engine.stats
        cache = stats.prefix_cache
        status = "shutting_down" if self.shutting_down else ("ok" if stats.loaded else "loading")
        return JSONResponse(
            {
                "status": status,
                "model": self.model_name,
                **({"replica": self.settings.replica} if self.settings.replica is not None else {}),
                "model_loaded": stats.loaded,
                "slots": stats.slots or self.engine.config.max_concurrency,
                "slots_busy": stats.active,
                "queue": stats.waiting,
                "admitted": self.admission.admitted,
                "capacity": self.admission.capacity,
                "requests_served": self.admission.served,
                "decode_steps": stats.decode_steps,
                "prefix_cache": {
                    "capacity_tokens": cache.capacity,
                    "tokens": cache.tokens,
                    "entries": cache.entries,
                    "lookups": cache.lookups,
                    "hits": cache.hits,
                    "hit_rate": cache.hit_rate,
                    "cached_prompt_tokens": cache.hit_tokens,
                    "evictions": cache.evictions,
                },
            },
            status_code=200 if status == "ok" else 503,
        )

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
