"""``AsyncEngine``, the core, and ``Engine``, its blocking facade.

Both have one surface. ``AsyncEngine`` validates a call, turns each prompt into a
:class:`~oxillama_py.bus.Request`, and runs a :class:`~oxillama_py.bus.Generation`
whose subscribers (result collector, streaming callback, progress display,
``stream()`` iterator) consume what the decode worker publishes. ``Engine`` owns
a blocking portal (one event-loop thread) and forwards every call to it.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .bus import Finished, Generation, Request, Subscriber
from .bus.collect import Collector
from .bus.pieces import PieceForwarder
from .callback import CallbackSubscriber, check_callback
from .cancel import CancellationToken
from .config import EngineConfig, SamplerConfig, check_seed
from .decode import DecodeWorker
from .errors import GenerateError, GenerationCancelled, KvCacheFullError, OxiLlamaError
from .llama import Model
from .llama.model import resolve_model_path
from .progress import ProgressSubscriber, check_progress, check_throttle, make_progress_adapter
from .results import CompletionResult

__all__ = ["AsyncEngine", "Engine", "GenerateOptions"]

Backend = Literal["asyncio", "trio"]


@dataclass(frozen=True)
class GenerateOptions:
    """The validated keyword arguments of one ``generate*`` call."""

    max_tokens: int
    sampler: SamplerConfig
    stop: tuple[str, ...]
    cancel_token: CancellationToken | None
    progress: object
    progress_throttle_ms: float | None
    progress_throttle_tokens: int | None
    progress_capture_text: bool
    strict_progress: bool

    @classmethod
    def build(
        cls,
        base: SamplerConfig,
        max_tokens: int,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        repeat_penalty: float | None = None,
        seed: int | None = None,
        sampler: SamplerConfig | None = None,
        stop: str | Sequence[str] | None = None,
        cancel_token: CancellationToken | None = None,
        progress: object = None,
        progress_throttle_ms: float | None = None,
        progress_throttle_tokens: int | None = None,
        progress_capture_text: bool = False,
        strict_progress: bool = False,
    ) -> GenerateOptions:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if sampler is not None and not isinstance(sampler, SamplerConfig):
            raise TypeError(f"sampler must be a SamplerConfig, got {type(sampler).__name__}")
        check_seed("seed", seed)
        chosen = (sampler or base).with_overrides(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
        )
        if stop is None:
            stops: tuple[str, ...] = ()
        elif isinstance(stop, str):
            stops = (stop,) if stop else ()
        else:
            stops = tuple(stop)
            if not all(isinstance(s, str) for s in stops):
                raise TypeError("stop must be a string or a sequence of strings")
            stops = tuple(s for s in stops if s)
        if cancel_token is not None and not isinstance(cancel_token, CancellationToken):
            raise TypeError(f"cancel_token must be a CancellationToken, got {type(cancel_token).__name__}")
        check_throttle(progress_throttle_ms, progress_throttle_tokens)
        check_progress(progress)
        return cls(
            max_tokens=max_tokens,
            sampler=chosen,
            stop=stops,
            cancel_token=cancel_token,
            progress=progress,
            progress_throttle_ms=progress_throttle_ms,
            progress_throttle_tokens=progress_throttle_tokens,
            progress_capture_text=bool(progress_capture_text),
            strict_progress=bool(strict_progress),
        )


def _check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return prompt


class AsyncEngine:
    """Generate text from a GGUF model without blocking the event loop.

    Works on asyncio (with or without uvloop) and trio. One decode thread per
    loaded model serves every call, from any task, thread or loop, batching
    concurrent requests into one ``llama_decode`` per step. Loads lazily on first
    use if :meth:`load_model` was not called; :meth:`aclose` (or ``async with``)
    stops the thread and frees the model.
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        if config is None:
            config = EngineConfig()
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
        self.config = config
        self._worker: DecodeWorker | None = None
        self._load_lock = threading.Lock()
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------
    async def load_model(self) -> None:
        """Load the model and start its decode thread (idempotent)."""
        self._check_open()
        await anyio.to_thread.run_sync(self._load_blocking)

    def _load_blocking(self) -> DecodeWorker:
        with self._load_lock:
            self._check_open()
            if self._worker is None:
                worker = self._make_worker(resolve_model_path(self.config.model_path))
                worker.start()
                self._worker = worker
            return self._worker

    def _make_worker(self, path: Path) -> DecodeWorker:
        return DecodeWorker(self.config, path)

    async def aclose(self) -> None:
        """Stop the decode thread and free llama.cpp; generations still running fail."""
        await anyio.to_thread.run_sync(self._close_blocking)

    def _close_blocking(self) -> None:
        with self._load_lock:  # waits for a load in progress, off the event loop
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    async def __aenter__(self) -> AsyncEngine:
        await self.load_model()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    @property
    def is_loaded(self) -> bool:
        return self._worker is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise GenerateError("the engine is closed")

    async def _ready(self) -> DecodeWorker:
        self._check_open()
        worker = self._worker
        if worker is None:
            worker = await anyio.to_thread.run_sync(self._load_blocking)
        return worker

    async def _model(self) -> Model:
        model = (await self._ready()).model
        assert model is not None
        return model

    # -- tokens -----------------------------------------------------------------------
    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids as llama.cpp makes them (BOS as the model asks, special tokens parsed)."""
        _check_prompt(text)
        return (await self._model()).tokenize(text, add_special=add_special, parse_special=parse_special)

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``; control tokens render as nothing."""
        return (await self._model()).detokenize(list(tokens))

    # -- generation -------------------------------------------------------------------
    async def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        """Generate a completion of ``prompt`` and return its text.

        Keyword options: ``temperature``, ``top_p``, ``top_k``, ``min_p``,
        ``repeat_penalty``, ``seed``, ``sampler`` (a :class:`SamplerConfig`),
        ``stop`` (a string or strings that end the text, excluded from it),
        ``cancel_token``, and the progress options ``progress``,
        ``progress_throttle_ms``, ``progress_throttle_tokens``,
        ``progress_capture_text``, ``strict_progress``.
        Raises :class:`GenerationCancelled` if ``cancel_token`` is cancelled.
        """
        return (await self.complete(prompt, max_tokens, **options)).text

    async def complete(self, prompt: str, max_tokens: int = 128, **options: Any) -> CompletionResult:
        """Like :meth:`generate`, returning the whole :class:`CompletionResult`."""
        (result,) = await self._run([_check_prompt(prompt)], max_tokens, options)
        return result

    async def generate_streaming(
        self,
        prompt: str,
        max_tokens: int = 128,
        callback: Callable[..., object] | None = None,
        **options: Any,
    ) -> str:
        """Generate, calling ``callback`` with every text piece as it is decoded.

        ``callback(piece)`` gets each non-empty piece in order;
        ``callback(piece, token_id, is_final)`` gets every token. Coroutine
        functions are awaited. Returns the full text.
        """
        check_callback(callback)
        extra: list[Subscriber] = [CallbackSubscriber(callback)] if callback is not None else []
        (result,) = await self._run([_check_prompt(prompt)], max_tokens, options, extra)
        return result.text

    async def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> AsyncIterator[str]:
        """Yield text pieces as they are decoded; joined, they equal :meth:`generate`'s text.

        To stop early, close the iterator (``async with contextlib.aclosing(...)``);
        leaving its scope cancels the generation cleanly.
        """
        _check_prompt(prompt)
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        failure: list[BaseException] = []

        async def produce() -> None:
            try:
                await self._run([prompt], max_tokens, options, [PieceForwarder(send)])
            except Exception as exc:
                failure.append(exc)
            finally:
                send.close()

        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            try:
                with receive:
                    async for piece in receive:
                        yield piece
            except GeneratorExit:
                pass  # closed early: raising it here would reach the task group as an error
            finally:
                group.cancel_scope.cancel()  # no-op once produce has ended
        if failure:
            raise failure[0]

    async def generate_batch(
        self,
        prompts: Sequence[str],
        max_tokens: int = 128,
        *,
        on_complete: Callable[[int, CompletionResult], object] | None = None,
        **options: Any,
    ) -> list[str]:
        """Generate a completion for every prompt at once; texts in input order.

        The prompts decode together (continuous batching). ``progress=`` drives one
        display for the whole batch; ``on_complete(index, result)`` is called as
        each prompt finishes.
        """
        results = await self.complete_batch(prompts, max_tokens, on_complete=on_complete, **options)
        return [result.text for result in results]

    async def complete_batch(
        self,
        prompts: Sequence[str],
        max_tokens: int = 128,
        *,
        on_complete: Callable[[int, CompletionResult], object] | None = None,
        **options: Any,
    ) -> list[CompletionResult]:
        """Like :meth:`generate_batch`, returning :class:`CompletionResult` objects."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError("prompts must be a sequence of strings")
        check_callback(on_complete)
        checked = [_check_prompt(p) for p in prompts]
        if not checked:
            return []
        return await self._run(checked, max_tokens, options, on_complete=on_complete)

    async def _run(
        self,
        prompts: list[str],
        max_tokens: int,
        options: dict[str, Any],
        extra: Sequence[Subscriber] = (),
        on_complete: Callable[[int, CompletionResult], object] | None = None,
    ) -> list[CompletionResult]:
        opts = GenerateOptions.build(self.config.sampler, max_tokens, **options)
        self._check_options(opts)
        worker = await self._ready()
        requests = self._requests(worker, prompts, opts)
        # Touch the display only now: from here on the generation always finalises it.
        callback, finaliser = make_progress_adapter(opts.progress, opts.max_tokens * len(prompts))
        collector = Collector(len(requests), on_complete)
        subscribers: list[Subscriber] = [collector, *extra]
        progress: ProgressSubscriber | None = None
        if callback is not None and finaliser is not None:
            progress = ProgressSubscriber(
                callback,
                finaliser,
                opts.max_tokens * len(prompts),
                throttle_ms=opts.progress_throttle_ms,
                throttle_tokens=opts.progress_throttle_tokens,
                capture_text=opts.progress_capture_text,
            )
            subscribers.append(progress)
        finished = await Generation(requests, subscribers, worker.submit).run()
        _raise_for(finished)
        if progress is not None and opts.strict_progress and progress.error is not None:
            raise progress.error
        return [collector.result(f) for f in finished]

    def _check_options(self, opts: GenerateOptions) -> None:
        """Engine-specific checks of a call's options, before any work."""

    def _context_budget(self) -> int:
        """Context cells one request may fill with its prompt and ``max_tokens``."""
        return self.config.slot_ctx

    def _budget_reason(self) -> str:
        return f"n_ctx={self.config.n_ctx} shared by max_concurrency={self.config.max_concurrency}"

    def _requests(self, worker: DecodeWorker, prompts: list[str], opts: GenerateOptions) -> list[Request]:
        model = worker.model
        assert model is not None
        budget = self._context_budget()
        requests = []
        for index, prompt in enumerate(prompts):
            tokens = model.tokenize(prompt)
            if not tokens:
                raise ValueError("prompt is empty and the model adds no BOS token")
            if len(tokens) + opts.max_tokens > budget:
                raise KvCacheFullError(
                    f"prompt of {len(tokens)} tokens plus max_tokens={opts.max_tokens} does not fit the "
                    f"{budget} context cells one request may use ({self._budget_reason()})"
                )
            seed = opts.sampler.seed
            if seed is None:
                seed = self.config.seed if self.config.seed is not None else random.getrandbits(31)
            requests.append(
                Request(tokens, opts.max_tokens, opts.sampler, seed, opts.stop, opts.cancel_token, sequence=index)
            )
        return requests


def _raise_for(finished: list[Finished]) -> None:
    for item in finished:
        if item.reason == "error":
            error = item.error
            if isinstance(error, OxiLlamaError):
                raise error
            raise GenerateError(f"generation failed: {error}") from error
    if any(item.reason == "cancelled" for item in finished):
        raise GenerationCancelled("the generation was cancelled")


class Engine:
    """The blocking facade over :class:`AsyncEngine`: the same methods, synchronous.

    It runs one event loop in a background thread (an anyio blocking portal) and
    forwards every call to it, so many threads may call one ``Engine`` at once
    and their requests are batched together. Use :class:`CancellationToken` to
    cancel from another thread; ``close()`` (or ``with``) frees everything.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        backend: Backend = "asyncio",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self._async = self._make_async(config)
        self._stack = ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal(backend, backend_options))
        self._closed = False
        # An Engine nobody closed would keep its loop thread alive and hang interpreter exit.
        _close_at_exit(self)

    def _make_async(self, config: EngineConfig | None) -> AsyncEngine:
        return AsyncEngine(config)

    @property
    def config(self) -> EngineConfig:
        return self._async.config

    def async_engine(self) -> AsyncEngine:
        """The :class:`AsyncEngine` this facade drives (bound to no loop; usable from any)."""
        return self._async

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise GenerateError("the engine is closed")
        future: Future[Any] = self._portal.start_task_soon(lambda: func(*args, **kwargs))
        try:
            return future.result()
        except BaseException:
            # e.g. KeyboardInterrupt in the calling thread: stop the generation, and return
            # only once it has ended, so no display or callback outlives this call.
            future.cancel()
            wait([future])
            raise

    def load_model(self) -> None:
        self._call(self._async.load_model)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        result: list[int] = self._call(self._async.tokenize, text, add_special=add_special, parse_special=parse_special)
        return result

    def detokenize(self, tokens: Sequence[int]) -> str:
        result: str = self._call(self._async.detokenize, tokens)
        return result

    def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        """See :meth:`AsyncEngine.generate`."""
        result: str = self._call(self._async.generate, prompt, max_tokens, **options)
        return result

    def complete(self, prompt: str, max_tokens: int = 128, **options: Any) -> CompletionResult:
        result: CompletionResult = self._call(self._async.complete, prompt, max_tokens, **options)
        return result

    def generate_streaming(
        self,
        prompt: str,
        max_tokens: int = 128,
        callback: Callable[..., object] | None = None,
        **options: Any,
    ) -> str:
        """See :meth:`AsyncEngine.generate_streaming`; the callback runs on the engine's loop thread."""
        result: str = self._call(self._async.generate_streaming, prompt, max_tokens, callback, **options)
        return result

    def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> Iterator[str]:
        """Yield text pieces as they are decoded; closing the iterator cancels the generation."""
        pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()

        def put(piece: str) -> None:  # one parameter: the piece-per-call callback shape
            pieces.put(piece)

        async def run() -> str:
            try:
                return await self._async.generate_streaming(prompt, max_tokens, put, **options)
            finally:
                pieces.put(None)

        if self._closed:
            raise GenerateError("the engine is closed")
        future: Future[str] = self._portal.start_task_soon(run)
        try:
            while (piece := pieces.get()) is not None:
                yield piece
            future.result()
        finally:
            if not future.done():
                future.cancel()
                with suppress(BaseException):
                    future.result()

    def generate_batch(self, prompts: Sequence[str], max_tokens: int = 128, **options: Any) -> list[str]:
        result: list[str] = self._call(self._async.generate_batch, prompts, max_tokens, **options)
        return result

    def complete_batch(self, prompts: Sequence[str], max_tokens: int = 128, **options: Any) -> list[CompletionResult]:
        result: list[CompletionResult] = self._call(self._async.complete_batch, prompts, max_tokens, **options)
        return result

    def close(self) -> None:
        """Stop the decode thread and the loop thread (idempotent)."""
        if self._closed:
            return
        try:
            self._portal.call(self._async.aclose)
        finally:
            self._closed = True
            self._stack.close()

    @property
    def is_loaded(self) -> bool:
        return self._async.is_loaded

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
