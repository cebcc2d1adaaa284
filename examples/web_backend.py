"""An async web backend: Starlette + uvicorn, streaming tokens and progress as server-sent events.

Why: this is the shape most LLM services take. One :class:`AsyncEngine` is
shared by the whole app (opened and closed by the Starlette lifespan), so
concurrent requests are batched together by its decode worker: eight clients
at once cost far less than eight times one. Each request streams
``text/event-stream``:

* ``event: token`` with ``{"text": piece}`` for every decoded piece,
* ``event: progress`` with the :class:`~oxillama_py.progress.ProgressEvent`
  fields as JSON (throttled; the last one has ``"is_final": true``),
* ``event: done`` with ``{"text": full_text}`` (the tokens joined), or
  ``event: error`` with ``{"error": message}`` if the generation failed.

The response runs the generation inside its own task group, next to a task
that watches for the client going away: a closed connection cancels the
generation at the next decode step, and nothing outlives the request.

How::

    pip install 'oxillama-py[model]' starlette uvicorn
    python examples/web_backend.py --port 8000
    curl -N 'http://127.0.0.1:8000/generate?prompt=Once%20upon%20a%20time&max_tokens=32'

Open http://127.0.0.1:8000/ for a tiny browser page using ``EventSource``;
``/health`` says whether the model is loaded and counts the generations
(``active``, ``completed``, ``failed``, ``disconnected``).
In your own code, ``create_app(EngineConfig(...))`` returns the ASGI app.
Query parameters of ``/generate``: ``prompt`` (required), ``max_tokens``,
``temperature``, ``seed``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from oxillama_py import AsyncEngine, EngineConfig, OxiLlamaError
from oxillama_py.progress import ProgressEvent

INDEX_HTML = """<!doctype html>
<meta charset="utf-8"><title>oxillama_py SSE demo</title>
<form id="f"><input id="p" size="60" value="Once upon a time"> <button>Generate</button></form>
<progress id="bar" value="0" max="1"></progress> <span id="rate"></span>
<pre id="out" style="white-space: pre-wrap"></pre>
<script>
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const prompt = document.getElementById("p").value, out = document.getElementById("out");
  out.textContent = prompt;
  const es = new EventSource("/generate?max_tokens=128&prompt=" + encodeURIComponent(prompt));
  es.addEventListener("token", (m) => { out.textContent += JSON.parse(m.data).text; });
  es.addEventListener("progress", (m) => {
    const p = JSON.parse(m.data), bar = document.getElementById("bar");
    bar.max = p.tokens_total; bar.value = p.tokens_generated;
    document.getElementById("rate").textContent = p.tokens_per_sec.toFixed(1) + " tok/s";
  });
  es.addEventListener("done", () => es.close());
  es.addEventListener("error", (m) => {  // our error event, or the connection failing
    if (m.data) out.textContent += "\n[" + JSON.parse(m.data).error + "]";
    es.close();
  });
};
</script>
"""


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; JSON keeps the data on a single line."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class GenerationEvents(Response):
    """A streaming response that runs one generation in a task group scoped to the request.

    ``stats`` counts the generations in flight (``"active"``) and how the others
    ended (``"completed"``, ``"failed"``, ``"disconnected"``); ``/health`` shows it.
    """

    media_type = "text/event-stream"

    def __init__(
        self, engine: AsyncEngine, prompt: str, max_tokens: int, options: dict[str, Any], stats: Counter[str]
    ) -> None:
        # Like StreamingResponse: no body, so no Content-Length; the stream ends when the generation does.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.engine = engine
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.options = options
        self.stats = stats
        self.outcome = "completed"

    async def _generate(self, out: MemoryObjectSendStream[bytes]) -> None:
        """Produce the events; the callbacks only queue bytes, so they never slow decoding."""

        def on_piece(piece: str) -> None:
            out.send_nowait(sse("token", {"text": piece}))

        def on_progress(event: ProgressEvent) -> None:
            out.send_nowait(sse("progress", dataclasses.asdict(event)))

        with out:
            try:
                text = await self.engine.generate_streaming(
                    self.prompt, self.max_tokens, on_piece, progress=on_progress, **self.options
                )
            except (OxiLlamaError, ValueError, TypeError) as exc:
                self.outcome = "failed"
                out.send_nowait(sse("error", {"error": f"{type(exc).__name__}: {exc}"}))
            else:
                out.send_nowait(sse("done", {"text": text}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats["active"] += 1
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            send_events, receive_events = anyio.create_memory_object_stream[bytes](math.inf)
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    self.outcome = "disconnected"
                    group.cancel_scope.cancel()  # the client left: cancel the generation

                group.start_soon(watch_disconnect)
                group.start_soon(self._generate, send_events)
                with receive_events:
                    async for chunk in receive_events:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()  # stop watching for a disconnect
        finally:
            # The task group has exited: the generation is over and its KV cells are freed.
            self.stats["active"] -= 1
            self.stats[self.outcome] += 1


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def create_app(
    config: EngineConfig | None = None, *, default_max_tokens: int = 64, max_tokens_limit: int = 512
) -> Starlette:
    """The ASGI app; its lifespan loads one :class:`AsyncEngine` on ``config`` and closes it at shutdown."""

    stats: Counter[str] = Counter(active=0, completed=0, failed=0, disconnected=0)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncEngine(config or EngineConfig()) as engine:
            app.state.engine = engine
            yield

    async def index(request: Request) -> Response:
        return HTMLResponse(INDEX_HTML)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model_loaded": request.app.state.engine.is_loaded, "requests": stats})

    async def generate(request: Request) -> Response:
        params = request.query_params
        prompt = params.get("prompt")
        if not prompt:
            return _bad_request("the query parameter 'prompt' is required")
        options: dict[str, Any] = {}
        try:
            max_tokens = int(params.get("max_tokens", default_max_tokens))
            if "temperature" in params:
                options["temperature"] = float(params["temperature"])
            if "seed" in params:
                options["seed"] = int(params["seed"])
        except ValueError as exc:
            return _bad_request(f"bad query parameter: {exc}")
        if not 1 <= max_tokens <= max_tokens_limit:
            return _bad_request(f"max_tokens must be between 1 and {max_tokens_limit}")
        return GenerationEvents(request.app.state.engine, prompt, max_tokens, options, stats)

    return Starlette(
        routes=[Route("/", index), Route("/health", health), Route("/generate", generate)],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="path to a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-tokens", type=int, default=64, help="default max_tokens of a request")
    parser.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    parser.add_argument("--max-concurrency", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--n-ctx", type=int, default=16384, help="context cells, shared by the sequences")
    args = parser.parse_args(argv)

    config = EngineConfig(args.model, n_ctx=args.n_ctx, max_concurrency=args.max_concurrency)
    app = create_app(config, default_max_tokens=args.max_tokens, max_tokens_limit=args.max_tokens_limit)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
