"""Conversations: messages rendered with a chat template, then generated like any prompt.

The chat half of :class:`~oxillama_py.AsyncEngine`: rendering (template, tool
descriptions, the template's stop strings) happens here, off the loop; the
rendered prompt is then an ordinary call of :func:`.prepare.build_call`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import replace
from functools import partial

import anyio
import anyio.to_thread

from ..bus import Subscriber, check_order, take_order
from ..bus.pieces import PieceBuffer
from ..chat import Message, check_messages
from ..options import GenerateKwargs, Unpack
from ..results import CompletionResult
from ..tools import ToolChoice
from ..tools.pieces import TextOfAnswer
from .base import EngineBase
from .call import Call
from .prepare import build_call, check_n, check_template, render_chat, render_for_decode
from .stream import TextStream
from .tool_options import Tools, tool_options

__all__ = ["Conversation"]


class Conversation(EngineBase):
    """``chat``, ``stream_chat`` and what they are built of, for :class:`~oxillama_py.AsyncEngine`."""

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

    async def stream_chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 128,
        *,
        chat_template: str | None = None,
        tools: Tools = None,
        tool_choice: ToolChoice | dict[str, object] | None = None,
        parallel_tool_calls: bool | None = None,
        **options: Unpack[GenerateKwargs],
    ) -> AsyncGenerator[str, None]:
        """:meth:`chat`'s text as pieces, with :meth:`stream`'s semantics.

        With ``tools``, the pieces are the answer's text only (a call writes
        none): :meth:`chat` returns the calls.
        """
        pieces = self._chat_pieces(
            messages,
            max_tokens,
            chat_template=chat_template,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **options,
        )
        async with pieces:
            async for piece in pieces:
                yield piece

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
    def _chat_pieces(
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
        """:meth:`stream_chat`'s pump, its arguments checked now (the blocking facade raises at the call)."""
        checked = check_messages(messages)
        plan, checked_options = tool_options(tools, tool_choice, parallel_tool_calls, options)
        self._options(max_tokens, checked_options)
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
