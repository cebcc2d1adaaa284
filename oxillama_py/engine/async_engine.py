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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Protocol

import anyio
import anyio.to_thread

from ..bus import Subscriber, check_order, take_order
from ..bus.pieces import PieceBuffer
from ..callback import CallbackSubscriber, check_callback
from ..chat import Message, check_messages
from ..checks import check_bool, check_sequence, check_type
from ..config import EngineConfig
from ..options import BatchKwargs, GenerateKwargs, GenerateOptions, Unpack, resolve_options
from ..results import CompletionResult
from ..tools import ToolChoice
from ..tools.pieces import TextOfAnswer
from .call import Call
from .files import hub_config, model_from_hub_origin, plan_restore
from .lifetime import Lifetime
from .model_state import ModelState
from .prepare import build_call, check_n, check_prompt, check_prompts, check_template, render_chat, render_for_decode
from .reads import Reads
from .snapshot_file import SnapshotInfo, snapshot_info
from .stream import TextStream
from .tool_options import Tools, tool_options

__all__ = ["AsyncEngine"]


class _Facade(Protocol):
    def async_engine(self) -> AsyncEngine: ...


class AsyncEngine(ModelState, Reads):
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
        self._speculating_engine: str | None = None
        """The name of an engine that speculates every request (its rules apply), else ``None``."""
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

    async def prepare_chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        n: int = 1,
        chat_template: str | None = None,
        tools: Tools = None,
        tool_choice: ToolChoice | dict[str, object] | None = None,
        parallel_tool_calls: bool | None = None,
        subscribers: Sequence[Subscriber] = (),
        order: int | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> Call:
        """:meth:`prepare` for a conversation, rendered as :meth:`chat` renders it (its stop strings added)."""
        order = take_order() if order is None else check_order(order)
        checked, count = check_messages(messages), check_n(n)
        plan, options = tool_options(tools, tool_choice, parallel_tool_calls, options)
        opts = self._options(max_tokens, options)
        template = check_template(chat_template)
        worker = await self._ready()
        prompt, used = await anyio.to_thread.run_sync(
            render_for_decode, self.config, worker.model, checked, template, plan
        )
        stop = opts.stop + tuple(s for s in used.stop if s not in opts.stop)
        chat = replace(opts, stop=stop)
        call = await build_call(self.config, worker, [prompt] * count, chat, subscribers, order=order)
        return call if plan is None else replace(call, tools=plan)

    async def count_chat_tokens(
        self,
        messages: Sequence[Message],
        *,
        chat_template: str | None = None,
        tools: Tools = None,
        tool_choice: ToolChoice | dict[str, object] | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> int:
        """How many tokens :meth:`chat` would prefill for ``messages`` (BOS included)."""
        checked = check_messages(messages)
        plan, _ = tool_options(tools, tool_choice, parallel_tool_calls, {})
        template = check_template(chat_template)
        model = (await self._ready()).model

        def count() -> int:
            prompt, _ = render_for_decode(self.config, model, checked, template, plan)
            return len(model.tokenize(prompt))

        return await anyio.to_thread.run_sync(count)

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

    def stream(self, prompt: str, max_tokens: int = 128, **options: Unpack[GenerateKwargs]) -> TextStream:
        """Text pieces as they are decoded; joined, they equal :meth:`generate`'s text.

        ``async for piece in engine.stream(...)`` may be left at any time
        (``break``, an exception, a cancelled scope): the generation is then
        cancelled and its progress display finalised. ``async with
        engine.stream(...) as pieces:`` also waits for that end when the block
        is left. Bad arguments raise here, before any work.
        """
        check_prompt(prompt)
        self._options(max_tokens, options)  # bad arguments raise here, before any work
        return TextStream(lambda buffer: self.prepare([prompt], max_tokens, subscribers=[buffer], **options))

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

    # -- chat -------------------------------------------------------------------------
    async def chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        chat_template: str | None = None,
        tools: Tools = None,
        tool_choice: ToolChoice | dict[str, object] | None = None,
        parallel_tool_calls: bool | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> CompletionResult:
        """Answer a conversation: ``messages`` rendered with the chat template, then :meth:`complete`.

        ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}``
        dicts; the answer ends at the template's end-of-turn marker. The template
        is ``chat_template`` (a built-in name or a Jinja2 string), else the
        engine config's, else the model's own, else the built-in its vocabulary
        points to (Gemma's turn format for the default model). Every option of
        :meth:`generate` applies.

        ``tools`` (OpenAI's function tools), ``tool_choice`` (``"none"``,
        ``"auto"``, the default, ``"required"`` or
        ``{"type": "function", "function": {"name": ...}}``) and
        ``parallel_tool_calls`` let the model call functions: the calls are in
        the result's ``tool_calls`` (arguments valid against each function's
        ``parameters``), and its ``text`` is the answer's text. The history may
        hold assistant ``tool_calls`` and ``role: "tool"`` answers.
        """
        call = await self.prepare_chat(
            messages,
            max_tokens,
            chat_template=chat_template,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **options,
        )
        (result,) = await call.run()
        return result

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
    ) -> TextStream:
        """:meth:`chat`'s text as pieces, with :meth:`stream`'s semantics.

        With ``tools``, the pieces are the answer's text only (a call writes
        none): :meth:`chat` returns the calls.
        """
        checked = check_messages(messages)
        plan, checked_options = tool_options(tools, tool_choice, parallel_tool_calls, options)
        self._options(max_tokens, checked_options)  # bad arguments raise here, before any work
        template = check_template(chat_template)

        def prepare(buffer: PieceBuffer) -> Awaitable[Call]:
            return self.prepare_chat(
                checked,
                max_tokens,
                chat_template=template,
                tools=tools,
                tool_choice=tool_choice,
                parallel_tool_calls=parallel_tool_calls,
                subscribers=[buffer],
                **options,
            )

        return TextStream(prepare, TextOfAnswer() if plan is not None and plan.constrains else None)

    async def apply_chat_template(
        self,
        messages: Sequence[Message],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        tools: Tools = None,
        tool_choice: ToolChoice | dict[str, object] | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> str:
        """The prompt :meth:`chat` would decode (BOS included as the template writes it), tools described."""
        checked = check_messages(messages)
        plan, _ = tool_options(tools, tool_choice, parallel_tool_calls, {})
        template = check_template(chat_template)
        model = (await self._ready()).model
        return await anyio.to_thread.run_sync(
            partial(render_chat, self.config, model, checked, template, generation=add_generation_prompt, tools=plan)
        )

    # -- internals ----------------------------------------------------------------------
    def _options(self, max_tokens: int, options: GenerateKwargs) -> GenerateOptions:
        return resolve_options(self.config, max_tokens, options, speculating_engine=self._speculating_engine)
