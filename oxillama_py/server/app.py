"""The OpenAI-compatible ASGI application: plain routes and a lifespan over one :class:`AsyncEngine`.

Each route reads and checks its body (size first, then JSON, then fields),
admits the request or answers 429, turns it into one engine call, and maps the
engine's results and errors onto OpenAI's shapes. Batching, cancellation and
progress are the engine's: a client's disconnect ends the cancel scope its
request runs in, as any cancellation does.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..config import EngineConfig
from ..engine import AsyncEngine
from ..errors import GenerateError, GrammarError, KvCacheFullError, OxiLlamaError
from ..llama.model import resolve_model_path
from ..progress import ProgressEvent
from ..results import CompletionResult
from .errors import APIError, bad_request
from .jobs import End, JobRun, Piece, open_job
from .protocol import Job, parse_chat, parse_completion

__all__ = ["ServerSettings", "create_app"]

_T = TypeVar("_T")
_log = logging.getLogger("oxillama_py.server")


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTP layer adds to the engine: names, limits, the key.

    ``max_queue`` requests may wait for a slot beyond the engine's
    ``max_concurrency`` ones that decode (each choice of ``n`` counts); more get
    429. ``api_key`` (or ``OXILLAMA_API_KEY``) is required as a bearer token on
    ``/v1/*`` when set.
    """

    model_name: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 512
    """A chat's ``max_tokens`` when the client gives none (capped by what fits the context)."""
    retry_after_secs: int = 1
    replica: str | None = None
    """Which copy of the app this is (set by :mod:`oxillama_py.ray`): shown in ``/health``."""

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_body_bytes", "default_max_tokens", "retry_after_secs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < (0 if name == "max_queue" else 1):
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("model_name", "api_key", "replica"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty str or None")


@dataclass
class Admission:
    """Counts the sequences admitted (decoding or queued) against slots + queue."""

    capacity: int
    admitted: int = 0
    served: int = 0

    def reserve(self, count: int, retry_after: int) -> None:
        if self.admitted + count > self.capacity:
            raise APIError(
                429,
                f"the server is busy: {self.admitted} sequences are decoding or queued (limit {self.capacity}); "
                "retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after)},
            )
        self.admitted += count

    def release(self, count: int) -> None:
        self.admitted -= count
        self.served += 1


class Server:
    """The state behind the routes: the engine, the settings, the admission counter."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings, owns_engine: bool) -> None:
        self.engine = engine
        self.settings = settings
        self.owns_engine = owns_engine
        self.admission = Admission(engine.config.max_concurrency + settings.max_queue)
        self.created = int(time.time())
        self.api_key = settings.api_key or os.environ.get("OXILLAMA_API_KEY") or None
        self.model_name = settings.model_name or _default_name(engine.config)
        self.stopping = False

    # -- request plumbing ---------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8")):
            raise APIError(
                401,
                "missing or incorrect API key: send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    async def read_json(self, request: Request) -> object:
        limit = self.settings.max_body_bytes
        too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise too_large
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise bad_request("the request body is not valid JSON") from None
        except RecursionError:
            raise bad_request("the request body is nested too deeply") from None

    @property
    def shutting_down(self) -> bool:
        """Once the lifespan ends, or the engine is closed (a mounted app's host closes it)."""
        return self.stopping or self.engine.closed

    def check_model(self, job: Job) -> None:
        if job.model is not None and job.model != self.model_name:
            raise APIError(
                404,
                f"the model {job.model!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    async def max_tokens(self, job: Job) -> int:
        if job.max_tokens is not None:
            return job.max_tokens
        if job.kind == "completion":
            return 16  # OpenAI's default for completions
        used = await self.engine.count_chat_tokens(list(job.messages))
        return max(1, min(self.settings.default_max_tokens, self.engine.config.slot_ctx - used))

    # -- routes -------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self.serve(request, parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self.serve(request, parse_completion)

    async def serve(self, request: Request, parse: Callable[[object], Job]) -> Response:
        self.authorize(request)
        job = parse(await self.read_json(request))
        self.check_model(job)
        if self.shutting_down:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
        count = job.n * max(1, len(job.prompts))
        if count > self.admission.capacity:
            raise bad_request(
                f"the request asks for {count} sequences (n times the prompts); this server admits at most "
                f"{self.admission.capacity} at once",
                "n",
            )
        self.admission.reserve(count, self.settings.retry_after_secs)
        try:
            run = await _engine_errors(self._open(job))
        except BaseException:
            self.admission.release(count)
            raise
        if job.stream:
            return EventStream(self._stream(run), on_close=lambda: self.admission.release(count))
        try:
            results = await _until_disconnect(request.receive, lambda: _engine_errors(run.results()))
        finally:
            self.admission.release(count)
        if results is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONResponse(self._body(run, results))

    async def _open(self, job: Job) -> JobRun:
        try:
            return await open_job(self.engine, job, await self.max_tokens(job))
        except GenerateError:
            if self.shutting_down:  # the engine closed under us: the server is going away, not failing
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down") from None
            raise

    def _body(self, run: JobRun, results: list[CompletionResult]) -> dict[str, Any]:
        job = run.job
        if job.kind == "chat":
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": r.text},
                    "finish_reason": _reason(r),
                    "logprobs": None,
                }
                for i, r in enumerate(results)
            ]
        else:
            choices = [
                {
                    "index": i,
                    "text": (run.prompts[i] if job.echo else "") + r.text,
                    "finish_reason": _reason(r),
                    "logprobs": None,
                }
                for i, r in enumerate(results)
            ]
        return {**self._envelope(job, chunk=False), "choices": choices, "usage": _usage(job, results)}

    def _envelope(self, job: Job, *, chunk: bool, ident: str | None = None) -> dict[str, Any]:
        if job.kind == "chat":
            kind, prefix = ("chat.completion.chunk" if chunk else "chat.completion"), "chatcmpl-"
        else:
            kind, prefix = "text_completion", "cmpl-"
        return {
            "id": ident or prefix + uuid.uuid4().hex,
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "system_fingerprint": None,
        }

    async def _stream(self, run: JobRun) -> AsyncIterator[bytes]:
        """The SSE body: OpenAI chunks (and progress events when asked), then ``[DONE]``."""
        job = run.job
        envelope = self._envelope(job, chunk=True)
        usage_field: dict[str, Any] = {"usage": None} if job.include_usage else {}

        def chunk(choice: dict[str, Any]) -> bytes:
            return _sse({**envelope, "choices": [choice], **usage_field})

        def delta(index: int, text: str | None, reason: str | None) -> dict[str, Any]:
            if job.kind == "chat":
                body: dict[str, Any] = {} if text is None else {"content": text}
                return {"index": index, "delta": body, "finish_reason": reason, "logprobs": None}
            return {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}

        choices = len(run.prompts)
        if job.kind == "chat":
            for index in range(choices):
                yield chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        elif job.echo:
            for index in range(choices):
                yield chunk(delta(index, run.prompts[index], None))
        ended: set[int] = set()
        try:
            async with aclosing(run.events()) as events:
                async for item in events:
                    if isinstance(item, Piece):
                        yield chunk(delta(item.choice, item.text, None))
                    elif isinstance(item, End):  # each choice's finish as it happens, as OpenAI sends it
                        if item.reason in ("stop", "length"):
                            ended.add(item.choice)
                            yield chunk(delta(item.choice, None, item.reason))
                    elif isinstance(item, ProgressEvent):
                        yield _sse(asdict(item), event="progress")
            results = run.finished()
        except OxiLlamaError as exc:
            yield _sse(_server_error(exc).body(), event="error")
            return
        except Exception:  # a bug of ours: the headers are out, so end the stream with an error event
            _log.exception("streaming a response failed")
            yield _sse(APIError(500, "internal server error", type="server_error").body(), event="error")
            return
        for index in range(choices):
            if index not in ended:
                yield chunk(delta(index, None, _reason(results[index])))
        if job.include_usage:
            yield _sse({**envelope, "choices": [], "usage": _usage(job, results)})
        yield b"data: [DONE]\n\n"

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        if request.path_params["name"] != self.model_name:
            raise APIError(404, f"the model {request.path_params['name']!r} does not exist", code="model_not_found")
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "oxillama_py"}

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


class EventStream(Response):
    """A Server-Sent Events response that ends its body, and so the request, when the client goes away.

    The body iterator runs in this task; a disconnect cancels the scope around
    it, which cancels the engine call inside (its slot is freed at the next
    decode step). ``on_close`` runs exactly once, however the stream ends.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self.body_iterator = body
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

            async def body() -> None:
                async with aclosing(self.body_iterator) as chunks:  # type: ignore[type-var]
                    async for chunk in chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})

            await _until_disconnect(receive, body)
        except OSError:  # the connection broke while we wrote to it
            pass
        finally:
            self.on_close()


async def _until_disconnect(receive: Receive, work: Callable[[], Awaitable[_T]]) -> _T | None:
    """Run ``work()`` until it ends or the client disconnects (then it is cancelled: ``None``)."""
    outcome: list[tuple[_T | None, Exception | None]] = []

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
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


async def _engine_errors(work: Awaitable[_T]) -> _T:
    """The engine's errors as API errors: bad input is the client's (400), the rest is ours (500)."""
    try:
        return await work
    except KvCacheFullError as exc:
        raise APIError(400, str(exc), code="context_length_exceeded") from None
    except GrammarError as exc:
        raise bad_request(str(exc), "response_format", code="invalid_schema") from None
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc)) from None
    except OxiLlamaError as exc:
        raise _server_error(exc) from None


def _server_error(exc: OxiLlamaError) -> APIError:
    """The client learns that it failed; the log learns why."""
    _log.error("generation failed: %s: %s", type(exc).__name__, exc)
    return APIError(500, f"the generation failed: {type(exc).__name__}", type="server_error", code="generation_failed")


def _reason(result: CompletionResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(job: Job, results: list[CompletionResult]) -> dict[str, Any]:
    firsts = results[:: job.n]  # each prompt counts once, not once per choice
    prompt = sum(r.prompt_tokens for r in firsts)
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)},
    }


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _default_name(config: EngineConfig) -> str:
    return Path(resolve_model_path(config.model_path)).stem


def create_app(
    engine: AsyncEngine | EngineConfig | None = None,
    settings: ServerSettings | None = None,
) -> Starlette:
    """The OpenAI-compatible app over ``engine`` (an :class:`AsyncEngine`, or a config to build one).

    An engine built here is loaded at startup and closed at shutdown by the
    app's lifespan; an engine passed in belongs to the caller (load it in your
    own lifespan when the app is mounted inside yours: a mounted app's lifespan
    does not run).
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

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    async def internal_error(request: Request, exc: Exception) -> Response:
        return APIError(500, "internal server error", type="server_error").response()

    routes = [
        Route("/", server.playground, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{name:path}", server.model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.server = server
    return app
