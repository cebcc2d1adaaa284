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

import json
import os
import queue
import random
import tempfile
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
from .decode.persist import SavedPrefix, restore_prefixes, save_prefixes
from .decode.prefix_cache import ALIGN
from .errors import GenerateError, GenerationCancelled, KvCacheFullError, LoadError, OxiLlamaError
from .grammar import grammar_for
from .hub import resolve_cached, sha256_of
from .llama.adapter import LoraAdapter
from .llama.model import Model, check_gguf_file, resolve_model_path
from .llama.sampling import check_grammar
from .lora import Lora, check_lora_path, check_scale
from .options import BatchKwargs, GenerateKwargs, GenerateOptions, Unpack
from .paths import check_path
from .progress import ProgressSubscriber, make_progress_adapter
from .results import CompletionResult
from .snapshot import (
    HubOrigin,
    SnapshotError,
    SnapshotInfo,
    check_hub_origin,
    config_to_json,
    info_of,
    model_fingerprint,
    read_snapshot,
    snapshot_info,
    write_snapshot,
)
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


def _check_prompts(prompts: object) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a sequence of strings")
    return [_check_prompt(p) for p in prompts]


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return n


@dataclass(frozen=True)
class Call:
    """One prepared call: its generation and what turns the ending into results or errors."""

    generation: Generation
    collector: Collector
    progress: ProgressSubscriber | None
    strict_progress: bool
    prompts: tuple[str, ...] = ()
    """The text each request continues, in request order (a chat's rendered prompt)."""

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

    # -- adapters ---------------------------------------------------------------------
    async def apply_lora(self, path: str | os.PathLike[str], scale: float = 1.0) -> None:
        """Decode with the LoRA adapter at ``path``, scaled by ``scale``, from the next generation on.

        Applying an applied adapter again sets its scale; several adapters add
        up. The generations decoding now end with the weights they started
        with: this returns once they have and the adapter is in place, and
        requests that have not started yet wait for it (so every generation
        sees one set of weights). The prefix cache is emptied: its cells were
        computed with the old weights. A file that is not a LoRA adapter for
        this model's architecture, or whose tensors do not fit the model,
        raises :class:`LoadError` before anything changes.
        """
        where, factor = check_lora_path(path), check_scale(scale)
        lora = await anyio.to_thread.run_sync(Lora.load, where)
        worker = await self._ready()
        if lora.architecture != worker.model.architecture:
            raise LoadError(
                f"LoRA adapter {where} is for {lora.architecture!r} models; this model is {worker.model.architecture!r}"
            )
        loaded: list[LoraAdapter] = []
        try:
            adapter = await _on_worker(worker, partial(_load_adapter, where, loaded))
            await _on_worker(worker, partial(_set_lora, where, (adapter, factor)), exclusive=True)
        except BaseException:  # cancelled while it loaded or waited, say: an adapter nobody uses is freed
            if loaded:
                with anyio.CancelScope(shield=True), suppress(GenerateError):
                    await _on_worker(worker, partial(_free_unused, loaded[0]))
            raise

    async def remove_lora(self, path: str | os.PathLike[str]) -> None:
        """Stop decoding with the adapter applied from ``path`` (when the running generations end)."""
        where = check_lora_path(path)
        worker = await self._ready()
        if where not in worker.loras:
            raise ValueError(f"no LoRA adapter from {where} is applied")
        await _on_worker(worker, partial(_set_lora, where, None), exclusive=True)

    def lora_adapters(self) -> dict[str, float]:
        """The applied adapters' paths and scales."""
        worker = self._life.worker
        return {} if worker is None else {str(path): scale for path, (_, scale) in dict(worker.loras).items()}

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
        return await self._read([_check_text(text) for text in texts], logits=False)

    async def embeddings_dlpack(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`embed_numpy`'s vector as a ``(1, hidden_size())`` array, which DLPack consumers take without a copy.

        ``numpy.from_dlpack(x)`` and ``torch.from_dlpack(x)`` share its memory.
        """
        return (await self.embed_numpy(text)).reshape(1, -1)

    async def embeddings_torch(self, text: str, **kwargs: Any) -> Any:
        """:meth:`embeddings_dlpack` as a ``torch.Tensor`` (``kwargs`` go to ``Tensor.to``; needs torch)."""
        return _to_torch(await self.embeddings_dlpack(text), kwargs)

    # -- logits -----------------------------------------------------------------------
    async def logits(self, text: str) -> npt.NDArray[np.float32]:
        """The model's next-token logits after ``text``: ``vocab_size()`` raw ``float32`` scores.

        No sampler is applied (a greedy generation picks their argmax). The text
        is decoded as a prompt (BOS first), between the steps of running
        generations, as :meth:`embed_batch_numpy` is.
        """
        rows = await self._read([_check_text(text)], logits=True)
        row: npt.NDArray[np.float32] = rows[0]
        return row

    async def logits_dlpack(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`logits` as an array that ``numpy.from_dlpack`` and ``torch.from_dlpack`` take without a copy."""
        return await self.logits(text)

    async def logits_torch(self, text: str, **kwargs: Any) -> Any:
        """:meth:`logits` as a ``torch.Tensor`` (``kwargs`` go to ``Tensor.to``; needs torch)."""
        return _to_torch(await self.logits(text), kwargs)

    async def _read(self, texts: list[str], *, logits: bool) -> npt.NDArray[np.float32]:
        """Decode ``texts`` beside the running generations; their embeddings or last logits, one row each."""
        if self.config.max_concurrency >= 256:  # every sequence id is a slot
            raise GenerateError("no sequence id is left for embeddings or logits: lower max_concurrency below 256")
        worker = await self._ready()
        if not texts:
            return np.zeros((0, worker.model.n_vocab if logits else worker.model.n_embd), dtype=np.float32)
        tokens = await anyio.to_thread.run_sync(self._embedding_tokens, worker, texts)
        job = EmbedJob.of(tokens, logits=logits)
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
        checked = _check_prompts(prompts)
        check_callback(on_complete)
        opts = self._options(max_tokens, options)
        if not checked:
            return []
        return await (await self._prepare(checked, opts, on_complete=on_complete)).run()

    # -- prepared calls (what the server and the Ray deployment build on) ---------------
    async def prepare(
        self,
        prompts: Sequence[str],
        max_tokens: int = 128,
        *,
        n: int = 1,
        subscribers: Sequence[Subscriber] = (),
        **options: Unpack[BatchKwargs],
    ) -> Call:
        """One generation of ``prompts``, each ``n`` times (choices, consecutive), tokenized and checked, not started.

        The building block of every generation call (as httpx's
        ``build_request``): ``await call.run()`` decodes it to its end, or
        ``call.generation`` is pumped by its consumer. ``subscribers`` consume
        its events beside the result collector and the progress display.
        Raises what :meth:`generate` raises, before any decoding.
        """
        checked = _check_prompts(prompts)
        count = _check_n(n)
        on_complete = options.pop("on_complete", None)
        check_callback(on_complete)
        opts = self._options(max_tokens, options)
        choices = [prompt for prompt in checked for _ in range(count)]
        return await self._prepare(choices, opts, list(subscribers), on_complete)

    async def prepare_chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        n: int = 1,
        chat_template: str | None = None,
        subscribers: Sequence[Subscriber] = (),
        **options: Unpack[GenerateKwargs],
    ) -> Call:
        """:meth:`prepare` for a conversation rendered as :meth:`chat` renders it (its stop strings added)."""
        checked = check_messages(messages)
        count = _check_n(n)
        opts = self._options(max_tokens, options)
        template = _check_template(chat_template)
        prompt, opts = await self._chat_prompt(checked, template, opts)
        return await self._prepare([prompt] * count, opts, list(subscribers))

    async def count_chat_tokens(self, messages: Sequence[Message], *, chat_template: str | None = None) -> int:
        """How many tokens :meth:`chat` would prefill for ``messages`` (BOS included)."""
        checked = check_messages(messages)
        template = _check_template(chat_template)
        model = (await self._ready()).model

        def count() -> int:
            prompt, _ = self._render_for_decode(model, checked, template)
            return len(model.tokenize(prompt))

        return await anyio.to_thread.run_sync(count)

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

    # -- snapshots --------------------------------------------------------------------
    async def snapshot(self, path: str | os.PathLike[str], *, hub_origin: HubOrigin | None = None) -> None:
        """Save :meth:`snapshot_bytes` to ``path`` (written whole, then renamed into place).

        With ``hub_origin``, a ``<path>.meta.json`` sidecar also records it, as
        upstream oxillama-py writes one (the snapshot itself holds it too).
        """
        where = check_path(path)
        data = await self.snapshot_bytes(hub_origin=hub_origin)
        await anyio.to_thread.run_sync(_write_file, where, data)
        if hub_origin is not None:
            sidecar = json.dumps({"hub_origin": check_hub_origin(hub_origin)}, indent=2).encode("utf-8")
            await anyio.to_thread.run_sync(_write_file, where.with_name(where.name + ".meta.json"), sidecar)

    async def snapshot_bytes(self, *, hub_origin: HubOrigin | None = None) -> bytes:
        """The engine's state as bytes: its model file (path and fingerprint), config, adapters and cached prefixes.

        The prefix cache holds what the engine keeps between calls (system
        prompts, conversations so far): each entry is saved with its KV cells,
        cut to a multiple of 64 tokens, so a restored engine answers a request
        that continues one as a cache hit. Generations keep running meanwhile
        (the cells are read between two steps). ``hub_origin`` records where
        the model came from, for :meth:`from_snapshot_with_hub`.
        """
        origin = check_hub_origin(hub_origin)
        worker = await self._ready()
        prefixes, applied = await _on_worker(worker, _save_state)  # one task: the cells and their weights agree
        model_path = worker.model_path.resolve()
        fingerprint = await anyio.to_thread.run_sync(model_fingerprint, model_path)
        loras = [
            {"path": str(path), "scale": scale, "fingerprint": await anyio.to_thread.run_sync(model_fingerprint, path)}
            for path, scale in applied
        ]
        header = {
            "model": {"path": str(model_path), "fingerprint": fingerprint, "architecture": worker.model.architecture},
            "config": config_to_json(self.config),
            "loras": loras,
            "hub_origin": origin,
        }
        return await anyio.to_thread.run_sync(write_snapshot, header, prefixes)

    @staticmethod
    def snapshot_info(path: str | os.PathLike[str]) -> SnapshotInfo:
        """A snapshot file's metadata, read without loading its model (a few kilobytes of it)."""
        return snapshot_info(path)

    @classmethod
    async def restore(
        cls, path: str | os.PathLike[str] | bytes, *, model_path: str | os.PathLike[str] | None = None
    ) -> AsyncEngine:
        """A loaded engine from a snapshot file (or :meth:`snapshot_bytes`): its config, adapters and cached prefixes.

        The model is the file recorded in the snapshot, or ``model_path`` (the
        same file, moved): a file with another fingerprint is a
        :class:`LoadError`, as is a corrupted or truncated snapshot.
        """
        plan = await anyio.to_thread.run_sync(_plan_restore, path, model_path)
        engine = AsyncEngine(plan.config)
        try:
            await engine._adopt(plan)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await engine.aclose()
            raise
        return engine

    async def _adopt(self, plan: _Restore) -> None:
        worker = await self._ready()
        for lora_path, scale in plan.loras:
            await self.apply_lora(lora_path, scale)
        await _on_worker(worker, partial(restore_prefixes, prefixes=plan.prefixes))

    @classmethod
    async def from_snapshot_with_hub(cls, snapshot_path: str | os.PathLike[str]) -> AsyncEngine:
        """:meth:`restore` with the model found in the local Hugging Face cache from the snapshot's ``hub_origin``.

        The cached file must have the recorded SHA-256. Nothing is downloaded.
        """
        path = await anyio.to_thread.run_sync(_model_from_hub_origin, check_path(snapshot_path, "snapshot_path"))
        return await cls.restore(snapshot_path, model_path=path)

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        *,
        filename: str | None = None,
        revision: str | None = None,
        token: str | None = None,
        config: EngineConfig | None = None,
    ) -> AsyncEngine:
        """An engine (not yet loaded) for a GGUF file of a Hugging Face repository, from the local cache only.

        Nothing is downloaded: a file that is not in the cache (``HF_HUB_CACHE``,
        else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``) is a
        :class:`LoadError` that says how to fetch it. ``filename`` may be left
        out when the snapshot holds one ``.gguf``; ``token`` is accepted for
        upstream's signature and unused. ``config`` gives the rest (its
        ``model_path`` is replaced).
        """
        return AsyncEngine(_hub_config(repo_id, filename, revision, token, config))

    def __reduce__(self) -> Any:
        raise TypeError(_NO_PICKLE.format(type(self).__name__))

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(_NO_PICKLE.format(type(self).__name__))

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
        return Call(generation, collector, progress, opts.progress.strict, tuple(prompts))

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
        chosen = opts.speculative if opts.speculative is not None else config.speculative is not None
        speculative = chosen and not opts.sampler.mirostat
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
                    speculative=speculative and grammars[index] is None,
                )
            )
        return requests


async def _on_worker(worker: DecodeWorker, func: Callable[[DecodeWorker], _T], *, exclusive: bool = False) -> _T:
    """Run ``func`` on the decode thread between two steps and wait for it (off the event loop).

    Cancelling the wait withdraws ``func`` if it has not started; once it has,
    the wait goes on (shielded) until it ends, so its effect is never half known.
    """
    future = worker.run(func, exclusive=exclusive)
    try:
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        if not future.cancel():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(future.exception)
        raise


_NO_PICKLE = (
    "a {} cannot be pickled: it owns a loaded model and threads. Save its state with snapshot() or "
    "snapshot_bytes() and bring it back with Engine.restore()"
)


@dataclass(frozen=True)
class _Restore:
    """A checked snapshot, ready to be put into a new engine."""

    config: EngineConfig
    loras: list[tuple[str, float]]
    prefixes: list[SavedPrefix]


def _write_file(path: Path, data: bytes) -> None:
    """Write whole or not at all: a temporary file of our own beside ``path``, synced, then renamed."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no directory to write {path} into")
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(name)
        raise


def _save_state(worker: DecodeWorker) -> tuple[list[SavedPrefix], list[tuple[Path, float]]]:
    return save_prefixes(worker), [(path, scale) for path, (_, scale) in worker.loras.items()]


def _plan_restore(source: object, model_path: object) -> _Restore:
    """Read and check a snapshot and the model file it names (blocking)."""
    given = None if model_path is None else check_path(model_path, "model_path")  # before any file is read
    if isinstance(source, (bytes, bytearray, memoryview)):
        header, prefixes = read_snapshot(bytes(source))
    else:
        header, prefixes = read_snapshot(check_path(source))
    info = info_of(header)
    config = info.config
    model = Path(info.model_path) if given is None else given
    check_gguf_file(model)
    if model_fingerprint(model) != header["model"]["fingerprint"]:
        raise LoadError(f"{model} is not the model file the snapshot was taken with ({info.model_path})")
    for item in header.get("loras", []):  # before the model loads: the adapters are still the same files
        lora = Lora.load(str(item["path"]))
        if lora.architecture != info.arch_id or model_fingerprint(lora.path) != item.get("fingerprint"):
            raise LoadError(f"the LoRA adapter {lora.path} is not the file the snapshot was taken with")
    return _Restore(replace(config, model_path=str(model)), list(info.loras), prefixes)


def _model_from_hub_origin(snapshot_path: Path) -> Path:
    origin = snapshot_info(snapshot_path).hub_origin
    if origin is None:
        raise LoadError(f"snapshot {snapshot_path} records no hub_origin (take it with snapshot(..., hub_origin=...))")
    try:
        path = resolve_cached(origin["repo_id"], filename=origin["filename"])
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot: its hub_origin does not name a file ({exc})") from exc
    if sha256_of(path) != origin["sha256"]:
        raise LoadError(
            f"the cached {origin['repo_id']}/{origin['filename']} ({path}) "
            "does not have the SHA-256 the snapshot records"
        )
    return path


def _hub_config(
    repo_id: str, filename: str | None, revision: str | None, token: str | None, config: EngineConfig | None
) -> EngineConfig:
    if token is not None and not isinstance(token, str):
        raise TypeError(f"token must be a str or None, got {type(token).__name__}")
    if config is not None and not isinstance(config, EngineConfig):
        raise TypeError(f"config must be an EngineConfig or None, got {type(config).__name__}")
    path = resolve_cached(repo_id, filename=filename, revision=revision)
    return replace(config or EngineConfig(), model_path=str(path))


def _load_adapter(path: Path, loaded: list[LoraAdapter], worker: DecodeWorker) -> LoraAdapter:
    """The adapter of ``path``: the applied one (a new scale), else loaded now (a stall of one file read)."""
    applied = worker.loras.get(path)
    adapter = applied[0] if applied is not None else LoraAdapter(worker.model, path)
    loaded.append(adapter)
    return adapter


def _free_unused(adapter: LoraAdapter, worker: DecodeWorker) -> None:
    if all(applied is not adapter for applied, _ in worker.loras.values()):
        adapter.free()


def _set_lora(path: Path, value: tuple[LoraAdapter, float] | None, worker: DecodeWorker) -> None:
    """Add, rescale or (``None``) remove one adapter: an exclusive task, no generation is running."""
    loras = dict(worker.loras)
    if value is not None:
        adapter, scale = value
        if not adapter.ptr:  # the applied adapter it rescales was removed meanwhile: load it again
            value = (LoraAdapter(worker.model, path), scale)
        loras[path] = value
    elif loras.pop(path, None) is None:
        raise ValueError(f"no LoRA adapter from {path} is applied")
    worker.set_loras(loras)


def _to_torch(array: npt.NDArray[np.float32], kwargs: dict[str, Any]) -> Any:
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ImportError("this needs torch, which oxillama_py does not install: pip install torch") from None
    tensor = torch.from_dlpack(array)
    return tensor.to(**kwargs) if kwargs else tensor


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

    def apply_lora(self, path: str | os.PathLike[str], scale: float = 1.0) -> None:
        """See :meth:`AsyncEngine.apply_lora`."""
        self._call(self._async.apply_lora, path, scale)

    def remove_lora(self, path: str | os.PathLike[str]) -> None:
        """See :meth:`AsyncEngine.remove_lora`."""
        self._call(self._async.remove_lora, path)

    def lora_adapters(self) -> dict[str, float]:
        """See :meth:`AsyncEngine.lora_adapters`."""
        return self._async.lora_adapters()

    def logits(self, text: str) -> npt.NDArray[np.float32]:
        """See :meth:`AsyncEngine.logits`."""
        return self._call(self._async.logits, text)

    def logits_dlpack(self, text: str) -> npt.NDArray[np.float32]:
        """See :meth:`AsyncEngine.logits_dlpack`."""
        return self._call(self._async.logits_dlpack, text)

    def embeddings_dlpack(self, text: str) -> npt.NDArray[np.float32]:
        """See :meth:`AsyncEngine.embeddings_dlpack`."""
        return self._call(self._async.embeddings_dlpack, text)

    def logits_torch(self, text: str, **kwargs: Any) -> Any:
        """See :meth:`AsyncEngine.logits_torch`."""
        return _to_torch(self.logits(text), kwargs)

    def embeddings_torch(self, text: str, **kwargs: Any) -> Any:
        """See :meth:`AsyncEngine.embeddings_torch`."""
        return _to_torch(self.embeddings_dlpack(text), kwargs)

    def snapshot(self, path: str | os.PathLike[str], *, hub_origin: HubOrigin | None = None) -> None:
        """See :meth:`AsyncEngine.snapshot` (``hub_origin`` also goes to a ``<path>.meta.json`` sidecar)."""
        self._call(self._async.snapshot, path, hub_origin=hub_origin)

    def snapshot_bytes(self, *, hub_origin: HubOrigin | None = None) -> bytes:
        """See :meth:`AsyncEngine.snapshot_bytes`."""
        return self._call(self._async.snapshot_bytes, hub_origin=hub_origin)

    @staticmethod
    def snapshot_info(path: str | os.PathLike[str]) -> SnapshotInfo:
        """See :meth:`AsyncEngine.snapshot_info`."""
        return snapshot_info(path)

    @classmethod
    def restore(
        cls, path: str | os.PathLike[str] | bytes, *, model_path: str | os.PathLike[str] | None = None
    ) -> Engine:
        """See :meth:`AsyncEngine.restore` (an :class:`Engine` of the snapshot's config)."""
        plan = _plan_restore(path, model_path)
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
        return cls.restore(snapshot_path, model_path=_model_from_hub_origin(check_path(snapshot_path, "snapshot_path")))

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
        return Engine(_hub_config(repo_id, filename, revision, token, config))

    def __reduce__(self) -> Any:
        raise TypeError(_NO_PICKLE.format(type(self).__name__))

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(_NO_PICKLE.format(type(self).__name__))

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
