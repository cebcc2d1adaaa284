"""Turning a call's prompts and resolved options into a :class:`Call`: checks, chat rendering, tokens, subscribers.

Everything here runs before any decoding, so bad input fails with a clear error
and no display is touched. Tokenizing is blocking (it runs in a worker thread,
not on the loop); the progress display is made last, with no await after it,
so the caller that starts the generation is the one that finalises it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread

from ..bus import Generation, Request, Subscriber
from ..bus.collect import Collector
from ..chat import ChatTemplate, resolve_template, template_for
from ..checks import check_int, check_sequence, check_type
from ..config import EngineConfig
from ..decode import DecodeWorker
from ..decode.kv_budget import fits_context
from ..errors import KvCacheFullError
from ..grammar import grammar_for
from ..llama.guidance import vocabulary
from ..llama.model import Model
from ..options import GenerateOptions
from ..progress import ProgressSubscriber, make_progress_adapter
from ..results import CompletionResult
from ..tools import ToolPlan
from .call import Call
from .tool_prompt import tool_conversation

__all__ = [
    "build_call",
    "check_n",
    "check_prompt",
    "check_prompts",
    "check_template",
    "check_text",
    "render_chat",
    "render_for_decode",
]


def check_prompt(prompt: object) -> str:
    return check_type("prompt", prompt, str, "a str")


def check_prompts(prompts: object) -> list[str]:
    return [check_prompt(p) for p in check_sequence("prompts", prompts, "a sequence of strings")]


def check_text(text: object) -> str:
    return check_type("text", text, str, "a str")


def check_n(n: object) -> int:
    return check_int("n", n, low=1)


def check_template(name_or_source: object) -> str | None:
    """Reject a bad ``chat_template`` argument before any work (the model is not needed for that)."""
    if name_or_source is not None:
        resolve_template(name_or_source, model_template=None, has_token=lambda _: False)  # type: ignore[arg-type]
    return name_or_source  # type: ignore[return-value]


def render_chat(
    config: EngineConfig,
    model: Model,
    messages: list[dict[str, Any]],
    template: str | None,
    *,
    generation: bool,
    tools: ToolPlan | None = None,
) -> str:
    """The prompt as the template writes it (BOS text included); ``template`` falls back to the config's."""
    name_or_source = template if template is not None else config.chat_template
    chat_template = template_for(model, name_or_source)
    shaped, listed = tool_conversation(chat_template, messages, tools)
    return chat_template.render(
        shaped,
        add_generation_prompt=generation,
        bos_token=model.special_text(model.bos),
        eos_token=model.special_text(model.eos),
        tools=listed,
    )


def render_for_decode(
    config: EngineConfig,
    model: Model,
    messages: list[dict[str, Any]],
    template: str | None,
    tools: ToolPlan | None = None,
) -> tuple[str, ChatTemplate]:
    """The rendered prompt without the BOS text that tokenizing adds again, and its template (blocking)."""
    chat_template = template_for(model, template if template is not None else config.chat_template)
    bos = model.special_text(model.bos)
    shaped, listed = tool_conversation(chat_template, messages, tools)
    prompt = chat_template.render(
        shaped, add_generation_prompt=True, bos_token=bos, eos_token=model.special_text(model.eos), tools=listed
    )
    if model.add_bos and bos and prompt.startswith(bos):
        prompt = prompt[len(bos) :]
    return prompt, chat_template


def _requests(
    config: EngineConfig, model: Model, prompts: list[str], opts: GenerateOptions, order: int
) -> list[Request]:
    """Tokenize and check every prompt against the whole context, which one request may use (blocking)."""
    outside = [token for token, _ in opts.sampler.logit_bias if token >= model.n_vocab]
    if outside:
        raise ValueError(f"logit_bias token id {outside[0]} is not in the model's vocabulary of {model.n_vocab} tokens")
    grammars = [grammar_for(opts.grammar, index, len(prompts)) for index in range(len(prompts))]
    # The vocabulary is read once per model; a grammar it cannot meet fails here, before any decoding.
    matchers = [None if g is None else vocabulary(model).matcher(g.compiled) for g in grammars]
    requests = []
    for index, prompt in enumerate(prompts):
        tokens = model.tokenize(prompt)
        if not tokens:
            raise ValueError("prompt is empty and the model adds no BOS token")
        if not fits_context(config.n_ctx, len(tokens), opts.max_tokens):
            raise KvCacheFullError(
                f"prompt of {len(tokens)} tokens plus max_tokens={opts.max_tokens} does not fit the "
                f"context of n_ctx={config.n_ctx} cells"
            )
        requests.append(
            Request(
                tokens,
                opts.max_tokens,
                opts.sampler,
                opts.seed_for(index),
                opts.stop,
                opts.cancel_token,
                sequence=index,
                grammar=grammars[index],
                matcher=matchers[index],
                speculative=bool(opts.speculative),
                logprobs=opts.logprobs,
                prompt_logprobs=opts.prompt_logprobs,
                order=order,
            )
        )
    return requests


async def build_call(
    config: EngineConfig,
    worker: DecodeWorker,
    prompts: list[str],
    opts: GenerateOptions,
    extra: Sequence[Subscriber] = (),
    on_complete: Callable[[int, CompletionResult], object] | None = None,
    *,
    order: int,
) -> Call:
    """Tokenize (off the loop) and build the call's subscribers; the display is touched last.

    ``order``: the call's place in the waiting line, taken when it was made
    (:func:`~oxillama_py.bus.take_order`).
    """
    requests = await anyio.to_thread.run_sync(_requests, config, worker.model, prompts, opts, order)
    total = opts.max_tokens * len(prompts)
    callback, finaliser = make_progress_adapter(opts.progress.target, total)
    collector = Collector(len(requests), on_complete, logprobs=opts.logprobs is not None)
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
