"""The keyword options of every ``generate*`` call, spelled once, typed, and resolved once.

:class:`GenerateKwargs` is what callers (and type checkers, and IDEs) see;
:class:`GenerateOptions` is the same, validated and resolved against the
engine's config by :func:`resolve_options` before any work starts. Every rule
that depends on both (speculation with mirostat, the seed of each
choice) is written here once, for every entry point.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

from .cancel import CancellationToken
from .checks import check_bool, check_int, check_type
from .config import EngineConfig, SamplerConfig, check_seed
from .grammar import Constraint, Grammar, resolve_grammar
from .progress import check_progress, check_throttle
from .results import CompletionResult

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

MAX_LOGPROBS = 20
"""The most top alternatives a token's log-probability comes with (OpenAI's chat limit)."""

__all__ = [
    "MAX_LOGPROBS",
    "BatchKwargs",
    "GenerateKwargs",
    "GenerateOptions",
    "ProgressOptions",
    "Unpack",
    "resolve_options",
]


class GenerateKwargs(TypedDict, total=False):
    """Keyword options accepted by ``generate``, ``complete``, ``stream`` and the batch calls."""

    temperature: float | None
    """0 for greedy decoding; overrides the engine's sampler."""
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repeat_penalty: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    logit_bias: Mapping[int, float] | None
    """Token id to a number added to its logit (``-100`` all but bans it); replaces the sampler's."""
    seed: int | None
    """Seed of this call's sampling (reproducible sampled output)."""
    sampler: SamplerConfig | None
    """A whole :class:`~oxillama_py.SamplerConfig` instead of the engine's (the overrides above still apply)."""
    stop: str | Sequence[str] | None
    """Strings that end the text; the text ends just before the first one."""
    cancel_token: CancellationToken | None
    progress: object
    """``None``, a tqdm bar, an ipywidgets progress bar or a ``Callable[[ProgressEvent], None]``."""
    progress_throttle_ms: float | None
    progress_throttle_tokens: int | None
    progress_capture_text: bool
    strict_progress: bool
    grammar: str | Grammar | Sequence[str | Grammar | None] | None
    """Constrain the output to a GBNF or Lark grammar, or a :class:`~oxillama_py.Grammar`;
    a list gives each prompt of a batch its own (``None``: unconstrained)."""
    json_schema: Mapping[str, Any] | type | Sequence[Mapping[str, Any] | type | None] | None
    """Constrain the output to JSON valid against this schema (a dict, or a pydantic model class);
    a list gives each prompt of a batch its own (``None``: unconstrained)."""
    regex: str | Sequence[str | None] | None
    """Constrain the output to text that a regular expression matches as a whole;
    a list gives each prompt of a batch its own (``None``: unconstrained)."""
    json: bool
    """Constrain the output to a JSON object (any)."""
    logprobs: int | None
    """Give each generated token its log-probability and this many most likely alternatives (0 to 20)
    in ``CompletionResult.logprobs``: the model's raw distribution, before sampling filters, penalties
    and grammars. ``None`` (the default): none, and no cost."""
    prompt_logprobs: bool
    """With ``logprobs``, also the prompt tokens' (``CompletionResult.prompt_logprobs``; the prompt is
    prefilled whole, not from the prefix cache); allows ``max_tokens=0`` (score a text, generate nothing)."""
    speculative: bool | None
    """Speculate inside the batch (``True``; prompt lookup on an engine without ``speculative``), or not
    (``False``); ``None``: the engine's ``EngineConfig.speculative``."""


class BatchKwargs(GenerateKwargs, total=False):
    """:class:`GenerateKwargs`, plus what only the batch calls take."""

    on_complete: Callable[[int, CompletionResult], object] | None
    """Called as ``on_complete(index, result)`` as each prompt finishes (coroutine functions are awaited)."""


@dataclass(frozen=True)
class ProgressOptions:
    """The ``progress*`` options of one call, validated."""

    target: object = None
    throttle_ms: float | None = None
    throttle_tokens: int | None = None
    capture_text: bool = False
    strict: bool = False


@dataclass(frozen=True)
class GenerateOptions:
    """The validated options of one call."""

    max_tokens: int
    sampler: SamplerConfig
    stop: tuple[str, ...]
    cancel_token: CancellationToken | None
    progress: ProgressOptions
    grammar: Constraint = None
    speculative: bool | None = None
    """As the caller gave it; after :func:`resolve_options`, whether the call's unconstrained prompts speculate."""
    seed: int | None = None
    """The call's seed (its sampler's, else the engine's); ``None``: a random one per prompt."""
    logprobs: int | None = None
    """How many top alternatives each token's log-probability comes with; ``None``: no log-probabilities."""
    prompt_logprobs: bool = False

    def seed_for(self, index: int) -> int:
        """The seed of prompt ``index``: ``seed + index``, so a seeded batch is reproducible and two
        choices of one prompt differ (mod ``2**32 - 1``: never llama.cpp's "random seed" value)."""
        if self.seed is None:
            return random.getrandbits(31)
        return (self.seed + index) % 0xFFFFFFFF if index else self.seed

    @classmethod
    def build(cls, base: SamplerConfig, max_tokens: int, options: GenerateKwargs) -> GenerateOptions:
        unknown = set(options) - set(GenerateKwargs.__annotations__)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        logprobs, prompt_logprobs = _logprobs(options)
        check_int("max_tokens", max_tokens, low=0 if prompt_logprobs else 1)
        sampler = options.get("sampler")
        if sampler is not None:
            check_type("sampler", sampler, SamplerConfig, "a SamplerConfig")
        check_seed("seed", options.get("seed"))
        resolved = (sampler or base).with_overrides(
            temperature=options.get("temperature"),
            top_p=options.get("top_p"),
            top_k=options.get("top_k"),
            min_p=options.get("min_p"),
            repeat_penalty=options.get("repeat_penalty"),
            presence_penalty=options.get("presence_penalty"),
            frequency_penalty=options.get("frequency_penalty"),
            logit_bias=options.get("logit_bias"),
            seed=options.get("seed"),
        )
        cancel_token = options.get("cancel_token")
        if cancel_token is not None:
            check_type("cancel_token", cancel_token, CancellationToken, "a CancellationToken")
        progress = ProgressOptions(
            options.get("progress"),
            options.get("progress_throttle_ms"),
            options.get("progress_throttle_tokens"),
            check_bool("progress_capture_text", options.get("progress_capture_text", False)),
            check_bool("strict_progress", options.get("strict_progress", False)),
        )
        check_throttle(progress.throttle_ms, progress.throttle_tokens)
        check_progress(progress.target)
        grammar = resolve_grammar(
            options.get("grammar"), options.get("json_schema"), options.get("json", False), options.get("regex")
        )
        speculative = options.get("speculative")
        if speculative is not None:
            check_bool("speculative", speculative)
        stops = _stops(options.get("stop"))
        return cls(
            max_tokens,
            resolved,
            stops,
            cancel_token,
            progress,
            grammar,
            speculative,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )


def resolve_options(
    config: EngineConfig, max_tokens: int, options: GenerateKwargs, *, speculating_engine: str | None = None
) -> GenerateOptions:
    """A call's options, validated and resolved against ``config`` (before any work).

    Speculation is the engine's default (``config.speculative``) unless the
    call says ``speculative=``. Where speculation is only the default, a call
    with mirostat sampling decodes plainly; where it is asked for
    (``speculative=True``, or an engine that speculates every request, named by
    ``speculating_engine``), mirostat is a ``ValueError``. A grammar speculates
    like any other call: drafts are checked against it, and so do ``logprobs``
    (every verified row gives its token's). ``max_tokens=0`` (a prompt scored
    with ``prompt_logprobs``) has nothing to draft: it decodes plainly.
    """
    opts = GenerateOptions.build(config.sampler, max_tokens, options)
    asked = "speculative=True" if opts.speculative else speculating_engine
    if asked is not None and opts.sampler.mirostat:
        raise ValueError(f"{asked} does not support mirostat sampling; use temperature/top-k/top-p")
    if opts.speculative is not None:
        speculative = opts.speculative
    else:
        speculative = speculating_engine is not None or config.speculative is not None
    speculative = speculative and not opts.sampler.mirostat and max_tokens > 0
    seed = opts.sampler.seed if opts.sampler.seed is not None else config.seed
    return replace(opts, speculative=speculative, seed=seed)


def _logprobs(options: GenerateKwargs) -> tuple[int | None, bool]:
    logprobs = options.get("logprobs")
    if logprobs is not None:
        check_int("logprobs", logprobs, low=0, high=MAX_LOGPROBS)
    prompt = check_bool("prompt_logprobs", options.get("prompt_logprobs", False))
    if prompt and logprobs is None:
        raise ValueError("prompt_logprobs=True needs logprobs= (how many top alternatives, 0 to 20)")
    return logprobs, prompt


def _stops(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise TypeError(f"stop must be a string or a sequence of strings, got {stop!r}")
    return tuple(s for s in stop if s)
