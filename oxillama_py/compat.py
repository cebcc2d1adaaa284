"""Upstream oxillama-py's names, in one place: the ones that exist only for it live here, the rest are indexed.

Upstream (`cool-japan/oxillama`, ``crates/oxillama-py/python``) is the
compatibility reference (``docs/compatibility.rst``). Its names fall in two
kinds, and this module treats them differently, on purpose:

* **Spellings with no native use** live here: the config field aliases
  (:class:`EngineConfigNames`, :class:`SamplerConfigNames` and
  :func:`take_alias`), upstream's callback protocol names
  (:class:`StreamingCallback`, :data:`TokenCallback`) and the deprecated
  v0.1.1 helpers (:class:`TqdmProgress`, :class:`CollectTokens`, and
  :func:`deprecated_name` behind ``oxillama_py.TqdmProgress``). Upstream's
  module paths stay importable: ``oxillama_py.callback`` and
  ``oxillama_py.tqdm_helper`` re-export them from here.
* **Methods and call shapes of native classes** (``Engine.is_loaded``,
  ``Tokenizer.from_json``, ``finaliser(error)``, the ``snapshot`` module's
  ``dump``/``load``...) stay with the class they belong to: moving a method
  out of its class would split the class, not gather the names. They are
  listed in :data:`UPSTREAM`, the one index of every upstream name, as
  import paths (strings), which a test resolves.

The aliases are typed: ``EngineConfig`` and ``SamplerConfig`` spell their
constructor out (upstream's keywords included) and inherit the read-back
properties below, so ``mypy --strict`` sees ``EngineConfig(context_size=4096)``
and ``config.context_size``; nothing is patched at import. This module
imports nothing from the package (``config`` builds on it), so it adds no
import cycle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

__all__ = [
    "CollectTokens",
    "EngineConfigNames",
    "FieldsOnClass",
    "SamplerConfigNames",
    "StreamingCallback",
    "TokenCallback",
    "TqdmProgress",
    "UPSTREAM",
    "deprecated_name",
    "take_alias",
]

T = TypeVar("T")

# -- config field aliases -------------------------------------------------------------------


def take_alias(owner: str, name: str, value: T, default: T, alias: str, alias_value: T | None) -> T:
    """A field's value, given by its own name or by upstream's ``alias`` (``None``: not given).

    The alias replaces a field left at its default; a field given another
    value as well is a ``TypeError``, as a keyword given twice.
    """
    if alias_value is None:
        return value
    if value != default:
        raise TypeError(f"{owner}() got both {name} and its alias {alias}")
    return alias_value


class _EngineFields(Protocol):
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_threads(self) -> int: ...


class _SamplerFields(Protocol):
    @property
    def repeat_penalty(self) -> float: ...
    @property
    def repeat_last_n(self) -> int: ...


class EngineConfigNames:
    """Upstream's names of two :class:`~oxillama_py.EngineConfig` fields, read back."""

    __slots__ = ()

    @property
    def context_size(self: _EngineFields) -> int:
        """``n_ctx``, as upstream oxillama-py names it."""
        return self.n_ctx

    @property
    def num_threads(self: _EngineFields) -> int:
        """``n_threads``, as upstream oxillama-py names it."""
        return self.n_threads


class SamplerConfigNames:
    """Upstream's names of two :class:`~oxillama_py.SamplerConfig` fields, read back."""

    __slots__ = ()

    @property
    def repetition_penalty(self: _SamplerFields) -> float:
        """``repeat_penalty``, as upstream oxillama-py names it."""
        return self.repeat_penalty

    @property
    def repetition_penalty_window(self: _SamplerFields) -> int:
        """``repeat_last_n``, as upstream oxillama-py names it."""
        return self.repeat_last_n


class FieldsOnClass(type):
    """A metaclass that answers a dataclass's field names on the class itself, with their ``Field``.

    Upstream's stubs declare ``SpeculativeConfig.target`` and its siblings as
    class attributes, and its tests look for them there; a dataclass field
    without a plain default is only an instance attribute. Reading one on the
    class gives its :class:`dataclasses.Field` (name, type, default), which
    describes it without inventing a value.
    """

    def __getattr__(cls, name: str) -> Any:
        found = cls.__dict__.get("__dataclass_fields__", {}).get(name)
        if found is None:
            raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")
        return found


# -- callbacks ----------------------------------------------------------------------------


@runtime_checkable
class StreamingCallback(Protocol):
    """A per-token callback, ``callback(token, token_id, is_final)`` (upstream oxillama-py's protocol).

    ``isinstance(obj, StreamingCallback)`` is true for any callable, as
    upstream's; the engines read the signature to choose the shape.
    """

    def __call__(self, token: str, token_id: int, is_final: bool) -> object: ...


TokenCallback: TypeAlias = Callable[[str, int, bool], None]
"""The per-token shape as a plain ``Callable`` alias (upstream's name)."""


# -- the deprecated v0.1.1 helpers --------------------------------------------------------


class CollectTokens:
    """Collect the streamed pieces (and token ids, when the engine gives them); deprecated: use ``complete()``."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_ids: list[int] = []
        self.finished = False

    def __call__(self, token: str, token_id: int | None = None, is_final: bool = False) -> None:
        self.tokens.append(token)
        if token_id is not None:
            self.token_ids.append(token_id)
        self.finished = self.finished or is_final

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def reset(self) -> None:
        self.tokens.clear()
        self.token_ids.clear()
        self.finished = False


class TqdmProgress(CollectTokens):
    """Advance a tqdm bar by one per piece, the piece in its postfix (deprecated: use ``progress=bar``).

    ``flush_on_newline``: refresh the bar when a piece holds a newline, so a
    notebook redraws it promptly (v0.1.1's behaviour). It collects what it is
    called with as :class:`CollectTokens` does.
    """

    def __init__(self, pbar: Any, flush_on_newline: bool = True) -> None:
        super().__init__()
        self.bar = pbar
        self.flush_on_newline = flush_on_newline

    def __call__(self, token: str, token_id: int | None = None, is_final: bool = False) -> None:
        super().__call__(token, token_id, is_final)
        self.bar.update(1)
        self.bar.set_postfix_str(repr(token)[:30], refresh=False)
        if is_final or (self.flush_on_newline and "\n" in token):
            self.bar.refresh()

    def reset(self) -> None:
        """Forget the text and reset the bar's count (to reuse both for another generation)."""
        super().reset()
        self.bar.reset()


_DEPRECATED: Mapping[str, type] = {"TqdmProgress": TqdmProgress, "CollectTokens": CollectTokens}


def deprecated_name(name: str) -> type:
    """``oxillama_py.<name>`` for a deprecated top-level name, with its ``DeprecationWarning``.

    The package's ``__getattr__`` calls this; ``KeyError`` for any other name.
    """
    found = _DEPRECATED[name]
    warnings.warn(
        f"oxillama_py.{name} is deprecated: pass the bar or a callable as progress= "
        "to generate() instead (see docs/progress.rst)",
        DeprecationWarning,
        stacklevel=3,
    )
    return found


# -- the index ----------------------------------------------------------------------------

UPSTREAM: Mapping[str, str] = {
    # spellings that live here
    "EngineConfig(context_size=, num_threads=)": "oxillama_py.compat:EngineConfigNames",
    "SamplerConfig(repetition_penalty=, repetition_penalty_window=)": "oxillama_py.compat:SamplerConfigNames",
    "callback.StreamingCallback": "oxillama_py.callback:StreamingCallback",
    "callback.TokenCallback": "oxillama_py.callback:TokenCallback",
    "tqdm_helper.TqdmProgress": "oxillama_py.tqdm_helper:TqdmProgress",
    "tqdm_helper.CollectTokens": "oxillama_py.tqdm_helper:CollectTokens",
    "StreamingCallback, TokenCallback (top level)": "oxillama_py:StreamingCallback",
    "SpeculativeConfig.target, .draft, .num_speculative, .seed": "oxillama_py.compat:FieldsOnClass",
    "utils.decode_from_logits(logits, temperature=, top_k=, top_p=, seed=)": "oxillama_py.utils:decode_from_logits",
    "progress._build_bridge(obj, max_tokens)": "oxillama_py.progress:_build_bridge",
    # call shapes and methods of native classes, where they live
    "make_progress_adapter(obj, max_tokens) -> finaliser(error)": "oxillama_py.progress:make_progress_adapter",
    "Engine.is_loaded()": "oxillama_py:Engine.is_loaded",
    "Engine.reset()": "oxillama_py:Engine.reset",
    "Engine.decode_token(id)": "oxillama_py:Engine.decode_token",
    "Engine.is_eos(id)": "oxillama_py:Engine.is_eos",
    "Engine.hidden_size()": "oxillama_py:Engine.hidden_size",
    "Engine.vocab_size()": "oxillama_py:Engine.vocab_size",
    "Engine.async_engine()": "oxillama_py:Engine.async_engine",
    "Engine.generate_streaming(..., strict_callback=)": "oxillama_py:Engine.generate_streaming",
    "Engine.embed_numpy(text)": "oxillama_py:Engine.embed_numpy",
    "Engine.embed_batch_numpy(texts)": "oxillama_py:Engine.embed_batch_numpy",
    "Engine.logits_dlpack(text)": "oxillama_py:Engine.logits_dlpack",
    "Engine.embeddings_dlpack(text)": "oxillama_py:Engine.embeddings_dlpack",
    "Engine.logits_torch(text)": "oxillama_py:Engine.logits_torch",
    "Engine.embeddings_torch(text)": "oxillama_py:Engine.embeddings_torch",
    "Engine.from_hub(repo_id, ...)": "oxillama_py:Engine.from_hub",
    "Engine.from_snapshot_with_hub(path)": "oxillama_py:Engine.from_snapshot_with_hub",
    "Engine.apply_lora(path)": "oxillama_py:Engine.apply_lora",
    "AsyncEngine(engine)": "oxillama_py:AsyncEngine",
    "Tokenizer.from_json(json)": "oxillama_py:Tokenizer.from_json",
    "Tokenizer.encode_batch(texts)": "oxillama_py:Tokenizer.encode_batch",
    "Tokenizer.id_to_token(id)": "oxillama_py:Tokenizer.id_to_token",
    "Lora.num_adapters()": "oxillama_py:Lora.num_adapters",
    "snapshot.dump(engine, path)": "oxillama_py.snapshot:dump",
    "snapshot.dumps(engine)": "oxillama_py.snapshot:dumps",
    "snapshot.load(path)": "oxillama_py.snapshot:load",
    "snapshot.loads(blob)": "oxillama_py.snapshot:loads",
    "snapshot.snapshot_info(path)": "oxillama_py.snapshot:snapshot_info",
    "SnapshotInfo.tokenizer_path, max_context_length, num_threads": "oxillama_py:SnapshotInfo",
}
"""Every upstream name that is spelt or shaped for upstream, mapped to what implements it here
(``"module:attribute.path"``); ``docs/compatibility.rst`` says how each behaves."""
