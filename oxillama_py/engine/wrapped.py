"""``AsyncEngine(other)`` for an engine that is not ours: upstream's wrapper of any engine-like object.

Upstream's ``AsyncEngine(engine)`` runs the blocking ``generate`` and
``generate_streaming`` of whatever it is given on a private one-thread pool,
so code written against upstream, and its test doubles, run unchanged. Our
own :class:`~oxillama_py.Engine` is not wrapped: ``AsyncEngine(engine)``
shares its decode worker instead (batching with it). Results come back over
the bus's one way across threads (:func:`~oxillama_py.bus.post.post`); no
anyio worker thread waits on the foreign engine.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any, NoReturn

import anyio
import anyio.to_thread
from anyio.lowlevel import current_token
from anyio.streams.memory import MemoryObjectReceiveStream

from ..bus.post import post, wait_future
from .async_engine import AsyncEngine

__all__ = ["WrappedEngine", "WrappedStream", "is_engine_like"]

_DEFAULT_MAX_TOKENS = 512
"""Upstream's wrapper passes 512 when the caller gives no ``max_tokens``."""


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """Upstream forwards only the options given a value: ``temperature=None`` is left out."""
    return {name: value for name, value in options.items() if value is not None}


def is_engine_like(obj: object) -> bool:
    """Upstream's engine protocol: callable ``generate`` and ``generate_streaming``."""
    return callable(getattr(obj, "generate", None)) and callable(getattr(obj, "generate_streaming", None))


class WrappedEngine(AsyncEngine, wraps=is_engine_like):
    """An engine-like object driven from a private one-thread pool; ``generate`` and ``stream`` only.

    The pool serialises the calls, as upstream's does, because the wrapped
    object promises nothing about threads. A cancelled ``generate`` that has
    not started is withdrawn; one that has started cannot be interrupted (the
    foreign call has no cancel), so the cancellation waits for it to return.
    """

    def __init__(self, engine: object) -> None:  # no super().__init__(): there is no worker of ours
        self._engine = engine
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oxillama-wrapped")

    @property
    def _life(self) -> NoReturn:  # type: ignore[override]
        """Every native method of :class:`AsyncEngine` needs a worker of ours: say so clearly."""
        raise TypeError(
            f"this AsyncEngine wraps a {type(self._engine).__name__} (upstream's engine protocol): "
            "it offers generate() and stream() only"
        )

    async def generate(self, prompt: str, max_tokens: int = _DEFAULT_MAX_TOKENS, **options: Any) -> str:
        """The wrapped ``generate(prompt, max_tokens, **options)``, off the event loop."""
        call: Callable[[], str] = lambda: self._engine.generate(prompt, max_tokens, **_given(options))  # type: ignore[attr-defined]  # noqa: E731
        return await wait_future(self._pool.submit(call))

    async def stream(
        self, prompt: str, max_tokens: int = _DEFAULT_MAX_TOKENS, **options: Any
    ) -> AsyncGenerator[str, None]:
        """The pieces the wrapped ``generate_streaming`` hands its callback, as they come."""
        async with self._pieces(prompt, max_tokens, options) as pieces:
            async for piece in pieces:
                yield piece

    def _pieces(self, prompt: str, max_tokens: int, options: Any) -> WrappedStream:
        """:meth:`stream`'s pump, for the blocking facade (``Engine(AsyncEngine(foreign)).stream``)."""
        return WrappedStream(self._pool, self._engine, prompt, max_tokens, _given(options))

    async def aclose(self) -> None:
        """Let the pool's thread end (the wrapped engine itself is the caller's to close)."""
        await anyio.to_thread.run_sync(self._pool.shutdown)

    async def __aenter__(self) -> WrappedEngine:
        return self  # nothing to load; ``__aexit__`` (AsyncEngine's) closes the pool, shielded


class WrappedStream:
    """Pieces from a callback on the pool's thread, posted to the consumer's loop; an iterator and a context."""

    def __init__(
        self, pool: ThreadPoolExecutor, engine: object, prompt: str, max_tokens: int, options: dict[str, Any]
    ) -> None:
        self._start = lambda callback: engine.generate_streaming(  # type: ignore[attr-defined]
            prompt, max_tokens, callback=callback, **options
        )
        self._pool = pool
        self._running: tuple[Future[object], MemoryObjectReceiveStream[str]] | None = None
        self._closed = False

    def _begin(self) -> tuple[Future[object], MemoryObjectReceiveStream[str]]:
        if self._running is None:
            token = current_token()
            send, receive = anyio.create_memory_object_stream[str](math.inf)

            def deliver(piece: str) -> None:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # the consumer stopped reading
                    send.send_nowait(piece)

            def callback(piece: str, *details: object) -> None:
                post(token, deliver, piece)

            future = self._pool.submit(self._start, callback)
            future.add_done_callback(lambda _: post(token, send.close))
            self._running = future, receive
        return self._running

    def __aiter__(self) -> WrappedStream:
        return self

    async def __anext__(self) -> str:
        if self._closed:
            raise StopAsyncIteration
        future, receive = self._begin()
        try:
            return await receive.receive()
        except anyio.EndOfStream:
            await self.aclose()
            await wait_future(future)  # raises what the wrapped call raised
            raise StopAsyncIteration from None

    async def __aenter__(self) -> WrappedStream:
        self._begin()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading; the wrapped call runs to its end (it cannot be interrupted), its pieces dropped."""
        self._closed = True
        if self._running is not None:
            self._running[1].close()

    def __del__(self) -> None:
        # Left unfinished without ``async with`` or ``aclose()``: stop reading (the call itself runs out).
        if self._running is not None:
            self._running[1].close()
