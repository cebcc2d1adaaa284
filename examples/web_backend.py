"""Your own Starlette application with the OpenAI-compatible server mounted inside it, on one engine.

Why: a real service has routes of its own (pages, an API of its own, health
checks) and wants an OpenAI-compatible endpoint next to them, not a second
process. ``oxillama_py.server.create_app(engine)`` returns an ordinary ASGI
application: mount it under a prefix and it serves ``/llm/v1/chat/completions``,
``/llm/v1/completions``, ``/llm/v1/models``, ``/llm/health`` and the
playground page at ``/llm/``, while your routes stay yours.

Both sides share ONE :class:`~oxillama_py.AsyncEngine`, so a request to your
own ``/summarize`` route and a request from an ``openai`` client are decoded
together in the same batch, in the same slots. The engine belongs to your
application: a mounted app's lifespan does not run, so *your* lifespan loads
the model at startup and closes the engine at shutdown.

The routes of this application:

* ``GET /hello``: a route of yours that does not touch the model.
* ``GET /summarize?text=...``: a route of yours that calls ``engine.chat``
  directly and answers with its own JSON (``summary``, ``finish_reason``,
  ``completion_tokens``). An ASGI server does not cancel a handler whose client
  went away, so the route watches for the disconnect itself, as the mounted
  routes do: leaving cancels the chat and frees its slot at the next decode step.
* everything under ``/llm``: the mounted OpenAI-compatible server.

How::

    pip install 'oxillama-py[model,server]'
    python examples/web_backend.py --port 8000
    curl http://127.0.0.1:8000/hello
    curl 'http://127.0.0.1:8000/summarize?text=The%20cat%20sat%20on%20the%20mat%20all%20day.'
    curl http://127.0.0.1:8000/llm/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 32}'

From Python, point the ``openai`` client at the prefix::

    client = OpenAI(base_url="http://127.0.0.1:8000/llm/v1", api_key="unused")

and open http://127.0.0.1:8000/llm/ for the playground. With FastAPI the mount
is ``app.mount("/llm", create_app(engine))``, with the same lifespan.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from oxillama_py import AsyncEngine, EngineConfig, KvCacheFullError
from oxillama_py.server import ServerSettings, create_app

PREFIX = "/llm"
MAX_TEXT_CHARS = 4000


def summary_messages(text: str) -> list[dict[str, str]]:
    """The conversation ``/summarize`` sends to the model."""
    return [{"role": "user", "content": f"Summarize this text in one sentence:\n\n{text}"}]


async def unless_disconnected(request: Request, work: Callable[[], Awaitable[Response]]) -> Response | None:
    """``await work()``, cancelled if the client disconnects first (then ``None``)."""
    response = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        response = await work()
        group.cancel_scope.cancel()  # done: stop watching
    return response


def build_app(
    config: EngineConfig | None = None,
    *,
    max_tokens: int = 64,
    settings: ServerSettings | None = None,
) -> Starlette:
    """Your application: your routes, the server mounted at ``/llm``, one engine for both.

    ``max_tokens`` is the budget of ``/summarize`` and of a chat request that
    sets none; ``settings`` configures the mounted server (API key, queue, ...).
    """
    engine = AsyncEngine(config)
    settings = settings or ServerSettings(default_max_tokens=max_tokens)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The mounted server's own lifespan never runs: load and close the shared engine here.
        async with engine:
            yield

    async def hello(request: Request) -> Response:
        return PlainTextResponse("Hello from my own application; the model lives under /llm.\n")

    async def summarize(request: Request) -> Response:
        text = request.query_params.get("text", "").strip()
        if not text:
            return JSONResponse({"error": "the query parameter 'text' is required"}, status_code=400)
        if len(text) > MAX_TEXT_CHARS:
            return JSONResponse({"error": f"'text' is longer than {MAX_TEXT_CHARS} characters"}, status_code=413)

        async def answer() -> Response:
            try:
                result = await engine.chat(summary_messages(text), max_tokens, temperature=0)
            except KvCacheFullError:
                return JSONResponse({"error": "the text does not fit the model's context"}, status_code=413)
            return JSONResponse(
                {
                    "summary": result.text.strip(),
                    "finish_reason": result.finish_reason,
                    "completion_tokens": result.completion_tokens,
                }
            )

        return await unless_disconnected(request, answer) or Response(status_code=499)  # 499: nobody reads it

    return Starlette(
        routes=[
            Route("/hello", hello),
            Route("/summarize", summarize),
            Mount(PREFIX, app=create_app(engine, settings)),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="path to a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-tokens", type=int, default=64, help="budget of /summarize and of chats that set none")
    parser.add_argument("--max-concurrency", type=int, default=8, help="sequences decoded together (slots)")
    parser.add_argument("--n-ctx", type=int, default=16384, help="context cells, shared equally by the slots")
    args = parser.parse_args(argv)

    config = EngineConfig(args.model, n_ctx=args.n_ctx, max_concurrency=args.max_concurrency)
    app = build_app(config, max_tokens=args.max_tokens)
    # SIGINT/SIGTERM: uvicorn stops accepting, gives running requests 10 s, then your lifespan closes the engine.
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
