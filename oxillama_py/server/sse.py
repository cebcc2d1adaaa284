"""Server-Sent Events: the framing of one event, and the response that streams them.

Starlette's :class:`~starlette.responses.StreamingResponse` does the
streaming and listens for ``http.disconnect``: a client that goes away cancels
the body iterator where it waits (for the engine's next step), which cancels
the generation inside it. :class:`EventStream` adds what an engine call needs
on top: its body is closed in this task however the response ended, and its
``on_close`` (then ``release``, which lets its model go) runs exactly once;
and while nothing else is sent (the request waits in the queue, or prefills),
a comment line every ``keepalive`` seconds, so a proxy's read timeout does not
cut the stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["DONE", "KEEPALIVE", "EventStream", "event"]

DONE = b"data: [DONE]\n\n"
"""OpenAI's last event of a stream."""

KEEPALIVE = b": keepalive\n\n"
"""A comment line: SSE clients skip it, proxies see traffic."""


def event(data: object, name: str | None = None) -> bytes:
    """One event: ``data`` as compact JSON, with an ``event:`` line when named."""
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response over ``body``; ``on_close`` runs once it ended, however it ended.

    A disconnect can cancel the response while it waits on the socket, with
    ``body`` suspended at a ``yield``: left to the garbage collector, its
    ``finally`` would run later in another task, so it is closed here.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        on_close: Callable[[], None],
        keepalive: float = 0.0,
        release: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = body
        self.on_close = on_close
        self.release = release
        self.keepalive = keepalive
        self.last_sent = 0.0
        self.sending = False
        self.beating: anyio.Event | None = None

    async def stream_response(self, send: Send) -> None:
        """Starlette's, plus a beat task beside the body: the body's own path costs two stores a chunk."""
        if self.keepalive <= 0:
            await super().stream_response(send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self.last_sent = time.monotonic()
        broken: list[OSError] = []  # a broken socket leaves the task group as itself, not in a group
        async with anyio.create_task_group() as group:
            group.start_soon(self._beat, send, group.cancel_scope, broken)
            async for chunk in self.body_iterator:
                if self.beating is not None:  # a comment is on its way: never two sends at once
                    await self.beating.wait()
                self.sending = True
                try:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except OSError as exc:
                    broken.append(exc)
                    break
                self.sending = False
                self.last_sent = time.monotonic()
            group.cancel_scope.cancel()
        if broken:
            raise broken[0]
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _beat(self, send: Send, scope: anyio.CancelScope, broken: list[OSError]) -> None:
        while True:
            due = self.last_sent + self.keepalive - time.monotonic()
            if due > 0 or self.sending:
                await anyio.sleep(due if due > 0 else self.keepalive)
                continue
            beating = self.beating = anyio.Event()
            try:
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            except OSError as exc:  # the client went away while the body waited
                broken.append(exc)
                scope.cancel()
                return
            finally:
                beating.set()
                self.beating = None
            self.last_sent = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (OSError, ClientDisconnect):  # the connection broke while we wrote to it
            pass
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await self.events.aclose()
            finally:
                try:
                    self.on_close()
                finally:
                    if self.release is not None:  # the model the stream held (server/models.py)
                        with anyio.CancelScope(shield=True):
                            await self.release()
