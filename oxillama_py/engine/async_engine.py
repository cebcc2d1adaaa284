"""``AsyncEngine``: the core, whose every generation call is :meth:`~AsyncEngine.prepare` then run.

A call's options are resolved once against the config
(:func:`~oxillama_py.options.resolve_options`), its prompts are tokenized off
the loop into a :class:`~oxillama_py.engine.Call`, and the call's generation
is run by a task per subscriber (``generate*``) or pumped by its consumer
(``stream()``). Model state and reads are the classes it is made of
(:mod:`.model_state`, :mod:`.reads`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Protocol

import anyio
import anyio.to_thread

from ..bus import Subscriber, check_order, take_order
from ..callback import CallbackSubscriber, check_callback
from ..checks import check_bool, check_sequence, check_type
from ..config import EngineConfig
from ..options import BatchKwargs, GenerateKwargs, Unpack
from ..results import CompletionResult
from .call import Call
from .conversation import Conversation
from .files import hub_config, model_from_hub_origin, plan_restore
from .lifetime import Lifetime
from .model_state import ModelState
from .prepare import build_call, check_n, check_prompt, check_prompts
from .reads import Reads
from .snapshot_file import SnapshotInfo, snapshot_info
from .stream import Pump, TextStream

__all__ = ["AsyncEngine"]


class _Facade(Protocol):
    def async_engine(self) -> AsyncEngine: ...


class AsyncEngine(ModelState, Reads, Conversation):
    """Generate text from a GGUF model without blocking the event loop.

    Works on asyncio (with or without uvloop) and trio. One decode thread per
    loaded model serves every call, from any task, thread or loop, batching
    concurrent requests into one ``llama_decode`` per step. Loads lazily on first
    use if :meth:`load_model` was not called; :meth:`aclose` (or ``async with``)
    stops the thread and frees the model.
    """

    _wrapper: ClassVar[tuple[type[AsyncEngine], Callable[[object], bool]] | None] = None
    """The class of ``AsyncEngine(x)`` for an engine-like ``x`` that is not ours, and its test (:mod:`.wrapped`)."""

    def __init_subclass__(cls, *, wraps: Callable[[object], bool] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if wraps is not None:
            AsyncEngine._wrapper = (cls, wraps)

    def __new__(cls, *args: Any, **kwargs: Any) -> AsyncEngine:
        given = args[0] if args else kwargs.get("config")
        foreign = given is not None and not isinstance(given, EngineConfig) and not hasattr(given, "async_engine")
        if cls is AsyncEngine and foreign and AsyncEngine._wrapper is not None:
            wrapper, accepts = AsyncEngine._wrapper
            if accepts(given):
                return object.__new__(wrapper)  # upstream's AsyncEngine(any engine); its __init__ runs next
        return object.__new__(cls)

    def __init__(self, config: EngineConfig | _Facade | None = None) -> None:
        self._speculating_engine = None
        if config is not None and not isinstance(config, EngineConfig) and hasattr(config, "async_engine"):
            owner = config.async_engine()  # upstream's AsyncEngine(engine): one decode worker for both
            if type(owner) is not AsyncEngine or type(self) is not AsyncEngine:
                raise TypeError("AsyncEngine(engine) takes a plain Engine; use engine.async_engine() for others")
            self._life: Lifetime = owner._life
            return
        if config is None:
            config = EngineConfig()
        self._life = Lifetime(check_type("config", config, EngineConfig, "an EngineConfig, an Engine or None"))

    # -- lifecycle --------------------------------------------------------------------
    async def load_model(self) -> None:
        """Load the model and start its decode thread (idempotent)."""
        self._life.check_open()
        await anyio.to_thread.run_sync(self._life.load)

    async def aclose(self) -> None:
        """Stop the decode thread and free llama.cpp; generations still running fail."""
        await anyio.to_thread.run_sync(self._life.close)

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
        plan = await anyio.to_thread.run_sync(plan_restore, path, model_path)
        engine = AsyncEngine(plan.config)
        try:
            await engine._adopt(plan)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await engine.aclose()
            raise
        return engine

    @classmethod
    async def from_snapshot_with_hub(cls, snapshot_path: str | os.PathLike[str]) -> AsyncEngine:
        """:meth:`restore` with the model found in the local Hugging Face cache from the snapshot's ``hub_origin``.

        The cached file must have the recorded SHA-256. Nothing is downloaded.
        """
        path = await anyio.to_thread.run_sync(model_from_hub_origin, snapshot_path)
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
        return AsyncEngine(hub_config(repo_id, filename, revision, token, config))

    # -- tokens -----------------------------------------------------------------------
    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids as llama.cpp makes them (BOS as the model asks, special tokens parsed)."""
        check_prompt(text)
        model = (await self._ready()).model
        return await anyio.to_thread.run_sync(
            partial(model.tokenize, text, add_special=add_special, parse_special=parse_special)
        )

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``; control tokens render as nothing."""
        check_sequence("tokens", tokens, "a sequence of ints")
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

    # -- prepared calls (every generation below; the server and the Ray deployment) -----
    async def prepare(
        self,
        prompts: Sequence[str],
        max_tokens: int = 128,
        *,
        n: int = 1,
        subscribers: Sequence[Subscriber] = (),
        order: int | None = None,
        **options: Unpack[BatchKwargs],
    ) -> Call:
        """One generation of ``prompts``, each ``n`` times (choices, consecutive), tokenized and checked, not started.

        The building block of every generation call (as httpx's
        ``build_request``): ``await call.run()`` decodes it to its end, or
        ``call.generation`` is pumped by its consumer. ``subscribers`` consume
        its events beside the result collector and the progress display.
        Raises what :meth:`generate` raises, before any decoding.
        Calls wait for a slot in the order they were made (first come, first served);
        ``order`` (from :func:`~oxillama_py.bus.take_order`) is an earlier place.
        """
        order = take_order() if order is None else check_order(order)
        checked, count = check_prompts(prompts), check_n(n)
        on_complete = options.pop("on_complete", None)
        check_callback(on_complete)
        opts = self._options(max_tokens, options)
        choices = [prompt for prompt in checked for _ in range(count)]
        return await build_call(self.config, await self._ready(), choices, opts, subscribers, on_complete, order=order)

    # -- generation -------------------------------------------------------------------
    async def generate(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> str:
        """Generate a completion of ``prompt`` and return its text.

        The options (:class:`~oxillama_py.options.GenerateKwargs`): the sampler
        overrides ``temperature``, ``top_p``, ``top_k``, ``min_p``,
        ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty``,
        ``logit_bias``, ``seed`` and ``sampler``; ``stop`` (a string or
        strings that end the text, excluded from it); ``cancel_token``; and the
        progress options ``progress``, ``progress_throttle_ms``,
        ``progress_throttle_tokens``, ``progress_capture_text``, ``strict_progress``.
        Raises :class:`GenerationCancelled` if ``cancel_token`` is cancelled.
        """
        return (await self.complete(prompt, max_tokens, **options)).text

    async def complete(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> CompletionResult:
        """Like :meth:`generate`, returning the whole :class:`CompletionResult`."""
        (result,) = await (await self.prepare([check_prompt(prompt)], max_tokens, **options)).run()
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
        check_bool("strict_callback", strict_callback)
        extra = [CallbackSubscriber(callback, strict=strict_callback)] if callback is not None else []
        call = await self.prepare([check_prompt(prompt)], max_tokens, subscribers=extra, **options)
        (result,) = await call.run()
        return result.text

    async def stream(
        self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]
    ) -> AsyncGenerator[str, None]:
        """Text pieces as they are decoded; joined, they equal :meth:`generate`'s text.

        An async generator, as upstream's: bad arguments raise at the first
        iteration, before any work. Left early (``break``, an exception, a
        cancelled scope), the generation is cancelled and its display finalised
        once the generator is closed: at once inside
        ``async with contextlib.aclosing(engine.stream(...)) as pieces:``, else
        when the event loop finalises the dropped generator.
        """
        async with self._pieces(prompt, max_tokens, options) as pump:
            async for piece in pump:
                yield piece

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
        if not check_prompts(prompts):  # nothing to decode; the options are still checked
            check_callback(options.pop("on_complete", None))
            self._options(max_tokens, options)
            return []
        return await (await self.prepare(prompts, max_tokens, **options)).run()

    # -- internals ----------------------------------------------------------------------
    def _pieces(self, prompt: str, max_tokens: int, options: GenerateKwargs) -> Pump:
        """:meth:`stream`'s pump, its arguments checked now (the blocking facade raises at the call)."""
        check_prompt(prompt)
        self._options(max_tokens, options)
        return TextStream(lambda buffer: self.prepare([prompt], max_tokens, subscribers=[buffer], **options))
