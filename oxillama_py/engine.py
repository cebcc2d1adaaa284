"""``AsyncEngine``, the core, and ``Engine``, its blocking facade.

Both have one surface. ``AsyncEngine`` validates a call, tokenizes its prompts
off the loop into :class:`~oxillama_py.bus.Request` objects, and runs a
:class:`~oxillama_py.bus.Generation` whose subscribers (result collector,
streaming callback, progress display) consume what the decode worker publishes;
``stream()`` drives the same generation from its consumer's own awaits.
``Engine`` owns a blocking portal (one event-loop thread) and forwards every
call to it, types included.
"""

from __future__ import annotations

import queue
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .bus import Finished, Generation, Request, Subscriber
from .bus.collect import Collector
from .bus.pieces import PieceBuffer
from .callback import CallbackSubscriber, check_callback
from .chat import ChatTemplate, Message, check_messages, render_messages, resolve_template, template_for
from .config import EngineConfig, SamplerConfig
from .decode import DecodeWorker
from .decode.embedding import EmbedJob
from .decode.prefix_cache import ALIGN
from .errors import GenerateError, GenerationCancelled, KvCacheFullError, OxiLlamaError
from .grammar import grammar_for
from .llama.model import Model, resolve_model_path
from .llama.sampling import check_grammar
from .options import BatchKwargs, GenerateKwargs, GenerateOptions, Unpack
from .progress import ProgressSubscriber, make_progress_adapter
from .results import CompletionResult
from .stats import EngineStats
from .stream import TextStream

__all__ = ["AsyncEngine", "Engine"]

Backend = Literal["asyncio", "trio"]
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return prompt


@dataclass(frozen=True)
class Call:
    """One prepared call: its generation and what turns the ending into results or errors."""

    generation: Generation
    collector: Collector
    progress: ProgressSubscriber | None
    strict_progress: bool

    async def run(self) -> list[CompletionResult]:
        """Run the generation (task mode) to its end."""
        await self.generation.run()
        return self.results()

    def results(self) -> list[CompletionResult]:
        """Each request's result, or the error that ended the call."""
        finished = self.generation.terminals()
        _raise_for(finished)
        progress = self.progress
        if progress is not None and self.strict_progress and progress.error is not None:
            raise progress.error
        return [self.collector.result(f) for f in finished]


@dataclass(eq=False)
class _Lifetime:
    """The decode worker and its guard, shared by every AsyncEngine of one Engine."""

    worker: DecodeWorker | None = None
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False


class AsyncEngine:
    """Generate text from a GGUF model without blocking the event loop.

    Works on asyncio (with or without uvloop) and trio. One decode thread per
    loaded model serves every call, from any task, thread or loop, batching
    concurrent requests into one ``llama_decode`` per step. Loads lazily on first
    use if :meth:`load_model` was not called; :meth:`aclose` (or ``async with``)
    stops the thread and frees the model.
    """

    def __init__(self, config: EngineConfig | Engine | None = None) -> None:
        if isinstance(config, Engine):  # upstream's AsyncEngine(engine): one decode worker for both
            owner = config.async_engine()
            if type(owner) is not AsyncEngine or type(self) is not AsyncEngine:
                raise TypeError("AsyncEngine(engine) takes a plain Engine; use engine.async_engine() for others")
            self.config: EngineConfig = owner.config
            self._life: _Lifetime = owner._life
            return
        if config is None:
            config = EngineConfig()
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, an Engine or None, got {type(config).__name__}")
        self.config = config
        self._life = _Lifetime()

    # -- lifecycle --------------------------------------------------------------------
    async def load_model(self) -> None:
        """Load the model and start its decode thread (idempotent)."""
        self._check_open()
        await anyio.to_thread.run_sync(self._load_blocking)

    def _load_blocking(self) -> DecodeWorker:
        with self._life.load_lock:
            self._check_open()
            if self._life.worker is None:
                worker = self._make_worker(resolve_model_path(self.config.model_path))
                worker.start()
                self._life.worker = worker
            return self._life.worker

    def _make_worker(self, path: Path) -> DecodeWorker:
        return DecodeWorker(self.config, path)

    async def aclose(self) -> None:
        """Stop the decode thread and free llama.cpp; generations still running fail."""
        await anyio.to_thread.run_sync(self._close_blocking)

    def _close_blocking(self) -> None:
        with self._life.load_lock:  # waits for a load in progress, off the event loop
            self._life.closed = True
            worker, self._life.worker = self._life.worker, None
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

    def is_loaded(self) -> bool:
        """Whether the model is loaded (a method, as upstream oxillama-py has it)."""
        return self._life.worker is not None

    @property
    def closed(self) -> bool:
        return self._life.closed

    def _check_open(self) -> None:
        if self._life.closed:
            raise GenerateError("the engine is closed")

    async def _ready(self) -> DecodeWorker:
        self._check_open()
        worker = self._life.worker
        if worker is None:
            worker = await anyio.to_thread.run_sync(self._load_blocking)
        return worker

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the decode worker's load (cheap; safe from any thread)."""
        worker = self._life.worker
        if worker is None:
            return EngineStats(loaded=False, slots=0, active=0, waiting=0, decode_steps=0)
        return worker.stats()

    # -- tokens -----------------------------------------------------------------------
    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids as llama.cpp makes them (BOS as the model asks, special tokens parsed)."""
        _check_prompt(text)
        model = (await self._ready()).model
        return await anyio.to_thread.run_sync(
            partial(model.tokenize, text, add_special=add_special, parse_special=parse_special)
        )

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``; control tokens render as nothing."""
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
            raise TypeError(f"tokens must be a sequence of ints, got {type(tokens).__name__}")
        model = (await self._ready()).model
        return await anyio.to_thread.run_sync(model.detokenize, list(tokens))

    async def decode_token(self, token: int) -> str:
        """The text of one token id; a control token shows as its own text (``<bos>``)."""
        model = (await self._ready()).model
        model.check_tokens([token])
        return await anyio.to_thread.run_sync(model.special_text, token)

    async def is_eos(self, token: int) -> bool:
        """Whether ``token`` ends a generation (end of sequence, or an end-of-turn marker)."""
        model = (await self._ready()).model
        model.check_tokens([token])
        return model.is_eog(token)

    def hidden_size(self) -> int | None:
        """The model's embedding width (``n_embd``); ``None`` until it is loaded."""
        worker = self._life.worker
        return None if worker is None else worker.model.n_embd

    def vocab_size(self) -> int | None:
        """How many token ids the vocabulary has; ``None`` until the model is loaded."""
        worker = self._life.worker
        return None if worker is None else worker.model.n_vocab

    async def reset(self) -> None:
        """Forget what the engine keeps between calls: the prefix cache's entries, pinned ones too.

        Generations in flight are not touched (their cells are their own).
        """
        await _on_worker(await self._ready(), _clear_cache)

    # -- embeddings -------------------------------------------------------------------
    async def embed(self, text: str) -> list[float]:
        """The L2-normalised embedding of ``text`` (see :meth:`embed_batch_numpy` for the pooling)."""
        return [float(x) for x in await self.embed_numpy(text)]

    async def embed_numpy(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`embed` as a ``float32`` array of ``hidden_size()`` values."""
        rows = await self.embed_batch_numpy([text])
        row: npt.NDArray[np.float32] = rows[0]
        return row

    async def embed_batch_numpy(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per text, ``float32``, shape ``(len(texts), hidden_size())``.

        The texts are decoded together, up to ``n_batch`` tokens per
        ``llama_decode``, between the steps of the generations running on the
        engine (each waits at most one step per batch). Pooling: the model's
        own if it declares one, else the mean of the last hidden states of all
        of a text's tokens (BOS included).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
        checked = [_check_text(text) for text in texts]
        if self.config.max_concurrency >= 256:  # every sequence id is a slot
            raise GenerateError("no sequence id is left for embeddings: lower max_concurrency below 256")
        worker = await self._ready()
        if not checked:
            return np.zeros((0, worker.model.n_embd), dtype=np.float32)
        tokens = await anyio.to_thread.run_sync(self._embedding_tokens, worker, checked)
        job = EmbedJob.of(tokens)
        try:
            while not await _on_worker(worker, job.step):
                pass
        finally:
            if not job.finished:
                with anyio.CancelScope(shield=True):
                    await _on_worker(worker, job.release)
        return job.vectors()

    def _embedding_tokens(self, worker: DecodeWorker, texts: list[str]) -> list[list[int]]:
        budget = self.config.slot_ctx
        token_lists = []
        for text in texts:
            tokens = worker.model.tokenize(text)
            if not tokens:
                raise ValueError("text is empty and the model adds no BOS token")
            if len(tokens) > budget:
                raise KvCacheFullError(
                    f"a text of {len(tokens)} tokens does not fit the {budget} context cells one request may use"
                )
            token_lists.append(tokens)
        return token_lists

    # -- generation -------------------------------------------------------------------
    async def generate(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> str:
        """Generate a completion of ``prompt`` and return its text.

        The options (:class:`~oxillama_py.options.GenerateKwargs`): the sampler
        overrides ``temperature``, ``top_p``, ``top_k``, ``min_p``,
        ``repeat_penalty``, ``seed`` and ``sampler``; ``stop`` (a string or
        strings that end the text, excluded from it); ``cancel_token``; and the
        progress options ``progress``, ``progress_throttle_ms``,
        ``progress_throttle_tokens``, ``progress_capture_text``, ``strict_progress``.
        Raises :class:`GenerationCancelled` if ``cancel_token`` is cancelled.
        """
        return (await self.complete(prompt, max_tokens, **options)).text

    async def complete(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> CompletionResult:
        """Like :meth:`generate`, returning the whole :class:`CompletionResult`."""
        opts = self._options(max_tokens, options)
        (result,) = await (await self._prepare([_check_prompt(prompt)], opts)).run()
        return result

    async def generate_streaming(
        self,
        prompt: str,
        max_tokens: int = 128,
        callback: Callable[..., object] | None = None,
        *,
        strict_callback: bool = True,
        **options: Unpack[GenerateKwargs],
    ) -> str:
        """Generate, calling ``callback`` with every text piece as it is decoded.

        ``callback(piece)`` gets each non-empty piece in order;
        ``callback(piece, token_id, is_final)`` gets every token. Coroutine
        functions are awaited. Returns the full text. An exception from the
        callback ends the generation with it (``strict_callback=True``, the
        default); with ``strict_callback=False`` it is logged (logger
        ``oxillama_py.callback``) and the generation goes on.
        """
        check_callback(callback)
        if not isinstance(strict_callback, bool):
            raise TypeError(f"strict_callback must be a bool, got {type(strict_callback).__name__}")
        opts = self._options(max_tokens, options)
        extra: list[Subscriber] = [CallbackSubscriber(callback, strict=strict_callback)] if callback is not None else []
        (result,) = await (await self._prepare([_check_prompt(prompt)], opts, extra)).run()
        return result.text

    def stream(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> TextStream:
        """Text pieces as they are decoded; joined, they equal :meth:`generate`'s text.

        ``async for piece in engine.stream(...)`` may be left at any time
        (``break``, an exception, a cancelled scope): the generation is then
        cancelled and its progress display finalised. ``async with
        engine.stream(...) as pieces:`` also waits for that end when the block
        is left. Bad arguments raise here, before any work.
        """
        _check_prompt(prompt)
        opts = self._options(max_tokens, options)
        return TextStream(lambda buffer: self._prepare([prompt], opts, [buffer]))

    async def generate_batch(
        self, prompts: Sequence[str], max_tokens: int = 128, **options: Unpack[BatchKwargs]
    ) -> list[str]:
        """Generate a completion for every prompt at once; texts in input order.

        The prompts decode together (continuous batching). ``progress=`` drives one
        display for the whole batch; ``on_complete(index, result)`` is called as
        each prompt finishes.
        """
        return [result.text for result in await self.complete_batch(prompts, max_tokens, **options)]

    async def complete_batch(
        self, prompts: Sequence[str], max_tokens: int = 128, **options: Unpack[BatchKwargs]
    ) -> list[CompletionResult]:
        """Like :meth:`generate_batch`, returning :class:`CompletionResult` objects."""
        on_complete = options.pop("on_complete", None)
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError("prompts must be a sequence of strings")
        check_callback(on_complete)
        checked = [_check_prompt(p) for p in prompts]
        opts = self._options(max_tokens, options)
        if not checked:
            return []
        return await (await self._prepare(checked, opts, on_complete=on_complete)).run()

    # -- prefix cache -----------------------------------------------------------------
    async def cache_prefix(self, text: str) -> int:
        """Prefill ``text`` into the prefix cache now, pinned; return how many of its tokens it keeps.

        Later prompts that start with the same tokens (a system prompt, few-shot
        examples) skip its prefill from their first request on. A pinned prefix
        is evicted only after every unpinned one (when the cache is over its
        capacity, or a running request needs the room). ``text`` is tokenized
        as a prompt (BOS first, if the model adds one): a prompt reuses it only
        if its own tokens start with the same ones, so end it where a prompt
        would break naturally (after a newline, say). A pinned prefix keeps a
        multiple of 64 tokens (see :doc:`prefix-cache`): the rest of ``text`` is
        prefilled by each request.
        """
        _check_prompt(text)
        config = self.config
        capacity = config.prefix_cache_capacity
        if capacity == 0:
            raise ValueError("the prefix cache is off (EngineConfig.prefix_cache_tokens=0)")
        worker = await self._ready()
        tokens = await anyio.to_thread.run_sync(worker.model.tokenize, text)
        if not tokens:
            raise ValueError("text is empty and the model adds no BOS token")
        if len(tokens) > min(capacity, config.slot_ctx):
            raise KvCacheFullError(
                f"a prefix of {len(tokens)} tokens does not fit the prefix cache's {capacity} cells "
                f"or the {config.slot_ctx} cells one request may use"
            )
        request = Request(tokens, 0, SamplerConfig.greedy(), 0, pin=True)
        collector = Collector(1)
        await Call(Generation([request], [collector], worker.submit), collector, None, False).run()
        return len(tokens) - len(tokens) % ALIGN

    # -- chat -------------------------------------------------------------------------
    async def chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        chat_template: str | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> CompletionResult:
        """Answer a conversation: ``messages`` rendered with the chat template, then :meth:`complete`.

        ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}``
        dicts; the answer ends at the template's end-of-turn marker. The template
        is ``chat_template`` (a built-in name or a Jinja2 string), else the
        engine config's, else the model's own, else the built-in its vocabulary
        points to (Gemma's turn format for the default model). Every option of
        :meth:`generate` applies.
        """
        checked = check_messages(messages)
        opts = self._options(max_tokens, options)
        template = _check_template(chat_template)
        prompt, opts = await self._chat_prompt(checked, template, opts)
        (result,) = await (await self._prepare([prompt], opts)).run()
        return result

    def stream_chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        chat_template: str | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> TextStream:
        """:meth:`chat`'s text as pieces, with :meth:`stream`'s semantics."""
        checked = check_messages(messages)
        opts = self._options(max_tokens, options)
        template = _check_template(chat_template)

        async def prepare(buffer: PieceBuffer) -> Call:
            prompt, chat_opts = await self._chat_prompt(checked, template, opts)
            return await self._prepare([prompt], chat_opts, [buffer])

        return TextStream(prepare)

    async def apply_chat_template(
        self,
        messages: Sequence[Message],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt :meth:`chat` would decode (BOS included as the template writes it)."""
        checked = check_messages(messages)
        template = _check_template(chat_template)
        model = (await self._ready()).model
        return await anyio.to_thread.run_sync(
            partial(self._render, model, checked, template, add_generation_prompt=add_generation_prompt)
        )

    async def _chat_prompt(
        self, messages: list[dict[str, str]], chosen: str | None, opts: GenerateOptions
    ) -> tuple[str, GenerateOptions]:
        model = (await self._ready()).model
        prompt, template = await anyio.to_thread.run_sync(partial(self._render_for_decode, model, messages, chosen))
        stop = opts.stop + tuple(s for s in template.stop if s not in opts.stop)
        return prompt, replace(opts, stop=stop)

    async def _chat_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens :meth:`chat` would prefill for ``messages`` (BOS included)."""
        model = (await self._ready()).model

        def count() -> int:
            prompt, _ = self._render_for_decode(model, messages, None)
            return len(model.tokenize(prompt))

        return await anyio.to_thread.run_sync(count)

    def _chosen(self, chosen: str | None) -> str | None:
        """The call's template, else the engine config's (``None``: the model's own)."""
        return chosen if chosen is not None else self.config.chat_template

    def _template(self, model: Model, chosen: str | None) -> ChatTemplate:
        return template_for(model, self._chosen(chosen))

    def _render(
        self, model: Model, messages: list[dict[str, str]], chosen: str | None, *, add_generation_prompt: bool
    ) -> str:
        return render_messages(model, messages, self._chosen(chosen), add_generation_prompt=add_generation_prompt)

    def _render_for_decode(
        self, model: Model, messages: list[dict[str, str]], chosen: str | None
    ) -> tuple[str, ChatTemplate]:
        """The rendered prompt without the BOS text that tokenizing adds again (blocking)."""
        template = self._template(model, chosen)
        bos = model.special_text(model.bos)
        prompt = template.render(
            messages, add_generation_prompt=True, bos_token=bos, eos_token=model.special_text(model.eos)
        )
        if model.add_bos and bos and prompt.startswith(bos):
            prompt = prompt[len(bos) :]
        return prompt, template

    def _options(self, max_tokens: int, options: GenerateKwargs) -> GenerateOptions:
        opts = GenerateOptions.build(self.config.sampler, max_tokens, options)
        self._check_options(opts)
        return opts

    async def _prepare(
        self,
        prompts: list[str],
        opts: GenerateOptions,
        extra: Sequence[Subscriber] = (),
        on_complete: Callable[[int, CompletionResult], object] | None = None,
    ) -> Call:
        """Load if needed, tokenize (off the loop), and build the call's subscribers.

        The display is touched last, with no await after it: from there on, the
        caller starts the generation, which always finalises it.
        """
        worker = await self._ready()
        requests = await anyio.to_thread.run_sync(self._requests, worker, prompts, opts)
        total = opts.max_tokens * len(prompts)
        callback, finaliser = make_progress_adapter(opts.progress.target, total)
        collector = Collector(len(requests), on_complete)
        subscribers: list[Subscriber] = [collector, *extra]
        progress: ProgressSubscriber | None = None
        if callback is not None and finaliser is not None:
            shown = opts.progress
            progress = ProgressSubscriber(
                callback,
                finaliser,
                total,
                throttle_ms=shown.throttle_ms,
                throttle_tokens=shown.throttle_tokens,
                capture_text=shown.capture_text,
            )
            subscribers.append(progress)
        generation = Generation(requests, subscribers, worker.submit)
        return Call(generation, collector, progress, opts.progress.strict)

    def _check_options(self, opts: GenerateOptions) -> None:
        """Engine-specific checks of a call's options, before any work."""

    def _requests(self, worker: DecodeWorker, prompts: list[str], opts: GenerateOptions) -> list[Request]:
        """Tokenize and check every prompt (blocking: runs in a worker thread, not on the loop)."""
        model = worker.model
        config = self.config
        grammars = [grammar_for(opts.grammar, index, len(prompts)) for index in range(len(prompts))]
        for grammar in {g for g in grammars if g is not None}:
            check_grammar(model, grammar)  # a malformed grammar fails here, before any decoding
        budget = config.slot_ctx  # a speculative step drafts at most max_tokens - 1 past the text: it fits too
        requests = []
        for index, prompt in enumerate(prompts):
            tokens = model.tokenize(prompt)
            if not tokens:
                raise ValueError("prompt is empty and the model adds no BOS token")
            if len(tokens) + opts.max_tokens > budget:
                raise KvCacheFullError(
                    f"prompt of {len(tokens)} tokens plus max_tokens={opts.max_tokens} does not fit the "
                    f"{budget} context cells one request may use "
                    f"(n_ctx={config.n_ctx} shared by max_concurrency={config.max_concurrency})"
                )
            seed = opts.sampler.seed if opts.sampler.seed is not None else self.config.seed
            # Prompt i of a seeded batch samples with seed + i: the batch is reproducible, and the
            # same prompt twice (``n`` choices of one request) gives two different samples.
            # (mod 2**32 - 1: the sum never becomes 0xFFFFFFFF, llama.cpp's "pick a random seed")
            seed = random.getrandbits(31) if seed is None else (seed + index) % 0xFFFFFFFF if index else seed
            requests.append(
                Request(
                    tokens,
                    opts.max_tokens,
                    opts.sampler,
                    seed,
                    opts.stop,
                    opts.cancel_token,
                    sequence=index,
                    grammar=grammars[index],
                )
            )
        return requests


async def _on_worker(worker: DecodeWorker, func: Callable[[DecodeWorker], _T]) -> _T:
    """Run ``func`` on the decode thread between two steps and wait for it (off the event loop)."""
    return await anyio.to_thread.run_sync(worker.run(func).result)


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


def _clear_cache(worker: DecodeWorker) -> None:
    if worker.cache is not None:
        worker.cache.clear()


def _check_template(chosen: object) -> str | None:
    """Reject a bad ``chat_template`` argument before any work (the model is not needed for that)."""
    if chosen is not None:
        resolve_template(chosen, model_template=None, has_token=lambda _: False)  # type: ignore[arg-type]
    return chosen  # type: ignore[return-value]


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

    def _call(self, func: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._closed:
            raise GenerateError("the engine is closed")
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

    def load_model(self) -> None:
        self._call(self._async.load_model)

    @property
    def stats(self) -> EngineStats:
        """See :attr:`AsyncEngine.stats`."""
        return self._async.stats

    def cache_prefix(self, text: str) -> int:
        """See :meth:`AsyncEngine.cache_prefix`."""
        return self._call(self._async.cache_prefix, text)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._call(self._async.tokenize, text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._call(self._async.detokenize, tokens)

    def embed(self, text: str) -> list[float]:
        """See :meth:`AsyncEngine.embed`."""
        return self._call(self._async.embed, text)

    def embed_numpy(self, text: str) -> npt.NDArray[np.float32]:
        """See :meth:`AsyncEngine.embed_numpy`."""
        return self._call(self._async.embed_numpy, text)

    def embed_batch_numpy(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """See :meth:`AsyncEngine.embed_batch_numpy`."""
        return self._call(self._async.embed_batch_numpy, texts)

    def decode_token(self, token: int) -> str:
        """See :meth:`AsyncEngine.decode_token`."""
        return self._call(self._async.decode_token, token)

    def is_eos(self, token: int) -> bool:
        """See :meth:`AsyncEngine.is_eos`."""
        return self._call(self._async.is_eos, token)

    def hidden_size(self) -> int | None:
        """See :meth:`AsyncEngine.hidden_size`."""
        return self._async.hidden_size()

    def vocab_size(self) -> int | None:
        """See :meth:`AsyncEngine.vocab_size`."""
        return self._async.vocab_size()

    def reset(self) -> None:
        """See :meth:`AsyncEngine.reset`."""
        self._call(self._async.reset)

    def generate(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> str:
        """See :meth:`AsyncEngine.generate`."""
        return self._call(self._async.generate, prompt, max_tokens, **options)

    def complete(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> CompletionResult:
        """See :meth:`AsyncEngine.complete`."""
        return self._call(self._async.complete, prompt, max_tokens, **options)

    def generate_streaming(
        self,
        prompt: str,
        max_tokens: int = 128,
        callback: Callable[..., object] | None = None,
        *,
        strict_callback: bool = True,
        **options: Unpack[GenerateKwargs],
    ) -> str:
        """See :meth:`AsyncEngine.generate_streaming`; the callback runs on the engine's loop thread."""
        return self._call(
            self._async.generate_streaming, prompt, max_tokens, callback, strict_callback=strict_callback, **options
        )

    def stream(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> Iterator[str]:
        """Yield text pieces as they are decoded; closing the iterator cancels the generation."""
        stream = self._async.stream(prompt, max_tokens, **options)  # validates now, not at the first next()
        return self._iterate(stream)

    def chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        chat_template: str | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> CompletionResult:
        """See :meth:`AsyncEngine.chat`."""
        return self._call(self._async.chat, messages, max_tokens, chat_template=chat_template, **options)

    def stream_chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        chat_template: str | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> Iterator[str]:
        """See :meth:`AsyncEngine.stream_chat`; closing the iterator cancels the generation."""
        stream = self._async.stream_chat(messages, max_tokens, chat_template=chat_template, **options)
        return self._iterate(stream)

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """See :meth:`AsyncEngine.apply_chat_template`."""
        return self._call(
            self._async.apply_chat_template,
            messages,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
        )

    def _iterate(self, stream: TextStream) -> Iterator[str]:
        """Pieces of an already validated stream, pumped on the loop thread from the first ``next()``."""
        if self._closed:
            raise GenerateError("the engine is closed")
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

    def generate_batch(
        self, prompts: Sequence[str], max_tokens: int = 128, **options: Unpack[BatchKwargs]
    ) -> list[str]:
        """See :meth:`AsyncEngine.generate_batch`; ``on_complete`` runs on the engine's loop thread."""
        return self._call(self._async.generate_batch, prompts, max_tokens, **options)

    def complete_batch(
        self, prompts: Sequence[str], max_tokens: int = 128, **options: Unpack[BatchKwargs]
    ) -> list[CompletionResult]:
        """See :meth:`AsyncEngine.complete_batch`."""
        return self._call(self._async.complete_batch, prompts, max_tokens, **options)

    def close(self) -> None:
        """Stop the decode thread and the loop thread (idempotent)."""
        if self._closed:
            return
        try:
            self._portal.call(self._async.aclose)
        finally:
            self._closed = True
            self._stack.close()

    def is_loaded(self) -> bool:
        """Whether the model is loaded (a method, as upstream oxillama-py has it)."""
        return self._async.is_loaded()

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
