"""``Engine``, the blocking facade: any :class:`AsyncEngine` driven from a loop thread of its own.

Its methods are made from the async engine's (:func:`_blocking`), so both have
one surface by construction: the same names, signatures and docs; only what
cannot be the same is written here (iterators instead of async iterators,
``close`` instead of ``aclose``, constructors that return an ``Engine``).
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, suppress
from functools import update_wrapper
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..chat import Message
from ..checks import check_type
from ..config import EngineConfig
from ..errors import GenerateError
from ..options import GenerateKwargs, Unpack
from ..stats import EngineStats
from ..tools import ToolChoice
from .async_engine import AsyncEngine
from .files import NO_PICKLE, hub_config, model_from_hub_origin, plan_restore
from .snapshot_file import snapshot_info
from .stream import Pump
from .tool_options import Tools

__all__ = ["Backend", "Engine"]

Backend = Literal["asyncio", "trio"]
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _blocking(method: Callable[Concatenate[AsyncEngine, _P], Awaitable[_T]]) -> Callable[Concatenate[Engine, _P], _T]:
    """``AsyncEngine.<method>`` as an ``Engine`` method: run on the engine's loop thread, waited for here."""
    name = method.__name__

    def forward(self: Engine, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        bound: Callable[_P, Awaitable[_T]] = getattr(self._async, name)  # an override in a subclass, too
        return self._call(bound, *args, **kwargs)

    update_wrapper(forward, method)
    return forward


def _same(method: Callable[Concatenate[AsyncEngine, _P], _T]) -> Callable[Concatenate[Engine, _P], _T]:
    """A plain (non-async) ``AsyncEngine`` method, called as it is: it never waits."""
    name = method.__name__

    def forward(self: Engine, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        bound: Callable[_P, _T] = getattr(self._async, name)
        return bound(*args, **kwargs)

    update_wrapper(forward, method)
    return forward


class Engine:
    """The blocking facade over :class:`AsyncEngine`: the same methods, synchronous.

    It runs one event loop in a background thread (an anyio blocking portal) and
    forwards every call to it, so many threads may call one ``Engine`` at once
    and their requests are batched together. ``Engine(config)`` makes its own
    :class:`AsyncEngine`; ``Engine(async_engine)`` drives a given one. Callbacks
    (streaming callbacks, ``on_complete``, progress) run on that loop thread. Use
    :class:`CancellationToken` to cancel from another thread; ``close()`` (or
    ``with``) frees everything.
    """

    def __init__(
        self,
        config: EngineConfig | AsyncEngine | None = None,
        *,
        backend: Backend = "asyncio",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        if config is not None:
            check_type("config", config, (EngineConfig, AsyncEngine), "an EngineConfig, an AsyncEngine or None")
        self._async = config if isinstance(config, AsyncEngine) else AsyncEngine(config)
        self._stack = ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal(backend, backend_options))
        self._closed = False
        # An Engine nobody closed would keep its loop thread alive and hang interpreter exit.
        _close_at_exit(self)

    @property
    def config(self) -> EngineConfig:
        return self._async.config

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the engine cannot be used again)."""
        return self._closed or self._async.closed

    @property
    def stats(self) -> EngineStats:
        """See :attr:`AsyncEngine.stats`."""
        return self._async.stats

    def async_engine(self) -> AsyncEngine:
        """The :class:`AsyncEngine` this facade drives (bound to no loop; usable from any)."""
        return self._async

    def _call(self, func: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        self._check_open()
        ended = threading.Event()

        async def run() -> _T:
            try:
                return await func(*args, **kwargs)
            finally:
                ended.set()

        future: Future[_T] = self._portal.start_task_soon(run)
        try:
            return future.result()
        except BaseException:
            # e.g. KeyboardInterrupt in the calling thread: stop the generation, and return
            # only once it has ended, so no display or callback outlives this call. (A
            # cancelled future is done at once; the task ends later, and says so.)
            future.cancel()
            ended.wait()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise GenerateError("the engine is closed")

    # -- the async engine's methods, blocking ------------------------------------------
    load_model = _blocking(AsyncEngine.load_model)
    tokenize = _blocking(AsyncEngine.tokenize)
    detokenize = _blocking(AsyncEngine.detokenize)
    decode_token = _blocking(AsyncEngine.decode_token)
    is_eos = _blocking(AsyncEngine.is_eos)
    generate = _blocking(AsyncEngine.generate)
    complete = _blocking(AsyncEngine.complete)
    generate_streaming = _blocking(AsyncEngine.generate_streaming)
    generate_batch = _blocking(AsyncEngine.generate_batch)
    complete_batch = _blocking(AsyncEngine.complete_batch)
    chat = _blocking(AsyncEngine.chat)
    apply_chat_template = _blocking(AsyncEngine.apply_chat_template)
    count_chat_tokens = _blocking(AsyncEngine.count_chat_tokens)
    cache_prefix = _blocking(AsyncEngine.cache_prefix)
    reset = _blocking(AsyncEngine.reset)
    apply_lora = _blocking(AsyncEngine.apply_lora)
    remove_lora = _blocking(AsyncEngine.remove_lora)
    embed = _blocking(AsyncEngine.embed)
    embed_numpy = _blocking(AsyncEngine.embed_numpy)
    embed_batch_numpy = _blocking(AsyncEngine.embed_batch_numpy)
    embed_tokens_numpy = _blocking(AsyncEngine.embed_tokens_numpy)
    embeddings_dlpack = _blocking(AsyncEngine.embeddings_dlpack)
    logits = _blocking(AsyncEngine.logits)
    logits_dlpack = _blocking(AsyncEngine.logits_dlpack)
    snapshot = _blocking(AsyncEngine.snapshot)
    snapshot_bytes = _blocking(AsyncEngine.snapshot_bytes)
    is_loaded = _same(AsyncEngine.is_loaded)
    hidden_size = _same(AsyncEngine.hidden_size)
    vocab_size = _same(AsyncEngine.vocab_size)
    lora_adapters = _same(AsyncEngine.lora_adapters)

    def embeddings_torch(self, text: str, **kwargs: Any) -> Any:
        """:meth:`embeddings_dlpack` as a ``torch.Tensor`` (``kwargs`` go to ``Tensor.to``; needs torch)."""
        return self._call(self._async.embeddings_torch, text, **kwargs)

    def logits_torch(self, text: str, **kwargs: Any) -> Any:
        """:meth:`logits` as a ``torch.Tensor`` (``kwargs`` go to ``Tensor.to``; needs torch)."""
        return self._call(self._async.logits_torch, text, **kwargs)

    def __reduce__(self) -> Any:
        raise TypeError(NO_PICKLE.format(type(self).__name__))

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(NO_PICKLE.format(type(self).__name__))

    # -- what differs from the async surface --------------------------------------------
    def stream(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> Iterator[str]:
        """Yield text pieces as they are decoded; closing the iterator cancels the generation."""
        return self._iterate(self._async._pieces(prompt, max_tokens, options))  # validates now

    def stream_chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        chat_template: str | None = None,
        tools: Tools = None,
        tool_choice: ToolChoice | dict[str, object] | None = None,
        parallel_tool_calls: bool | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> Iterator[str]:
        """See :meth:`AsyncEngine.stream_chat`; closing the iterator cancels the generation."""
        stream = self._async._chat_pieces(  # validates now
            messages,
            max_tokens,
            chat_template=chat_template,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **options,
        )
        return self._iterate(stream)

    def _iterate(self, stream: Pump) -> Iterator[str]:
        """Pieces of an already validated stream, pumped on the loop thread from the first ``next()``."""
        self._check_open()
        pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()

        async def run() -> None:
            try:
                async with stream:
                    async for piece in stream:
                        pieces.put(piece)
            finally:
                pieces.put(None)

        future: Future[None] = self._portal.start_task_soon(run)
        try:
            while (piece := pieces.get()) is not None:
                yield piece
            future.result()
        finally:
            if not future.done():
                future.cancel()
                while pieces.get() is not None:  # run() ends with None once the stream is finalised
                    pass

    snapshot_info = staticmethod(snapshot_info)

    @classmethod
    def restore(
        cls, path: str | os.PathLike[str] | bytes, *, model_path: str | os.PathLike[str] | None = None
    ) -> Engine:
        """See :meth:`AsyncEngine.restore` (an :class:`Engine` of the snapshot's config)."""
        plan = plan_restore(path, model_path)
        engine = Engine(plan.config)
        try:
            engine._call(engine._async._adopt, plan)
        except BaseException:
            engine.close()
            raise
        return engine

    @classmethod
    def from_snapshot_with_hub(cls, snapshot_path: str | os.PathLike[str]) -> Engine:
        """See :meth:`AsyncEngine.from_snapshot_with_hub`."""
        return cls.restore(snapshot_path, model_path=model_from_hub_origin(snapshot_path))

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        *,
        filename: str | None = None,
        revision: str | None = None,
        token: str | None = None,
        config: EngineConfig | None = None,
    ) -> Engine:
        """See :meth:`AsyncEngine.from_hub`."""
        return Engine(hub_config(repo_id, filename, revision, token, config))

    def close(self) -> None:
        """Stop the decode thread and the loop thread (idempotent)."""
        if self._closed:
            return
        try:
            self._portal.call(self._async.aclose)
        finally:
            self._closed = True
            self._stack.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _close_at_exit(engine: Engine) -> None:
    """Close ``engine`` when the interpreter exits, before thread pools are joined.

    ``threading._register_atexit`` hooks run before the executor threads (one of
    which runs the portal's loop) are joined; plain ``atexit`` would run too late.
    Only a weak reference is held, so an engine can still be garbage-collected.
    """
    ref = weakref.ref(engine)

    def close() -> None:
        alive = ref()
        if alive is not None:
            with suppress(Exception):
                alive.close()

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython has had it since 3.9
        import atexit

        atexit.register(close)
    else:
        with suppress(RuntimeError):  # already shutting down
            register(close)
