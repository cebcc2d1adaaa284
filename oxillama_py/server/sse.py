"""Server-Sent Events: the framing of one event, and the response that streams them.

Starlette's :class:`~starlette.responses.StreamingResponse` does the
streaming and listens for ``http.disconnect``: a client that goes away cancels
the body iterator where it waits (for the engine's next step), which cancels
the generation inside it. :class:`EventStream` adds what an engine call needs
on top: its body is closed in this task however the response ended, and its
``on_close`` runs exactly once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["DONE", "EventStream", "event"]

DONE = b"data: [DONE]\n\n"
"""OpenAI's last event of a stream."""


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

    def __init__(self, body: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> None:
        super().__init__(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = body
        self.on_close = on_close

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
                self.on_close()
