"""The exception hierarchy: one base class so callers can catch everything we raise."""

from __future__ import annotations

__all__ = [
    "OxiLlamaError",
    "LoadError",
    "GenerateError",
    "TokenizerError",
    "KvCacheFullError",
    "GenerationCancelled",
    "GrammarError",
    "SnapshotError",
    "UnknownModelError",
]


class OxiLlamaError(Exception):
    """Base class of every error raised by oxillama_py."""


class LoadError(OxiLlamaError):
    """A model file could not be loaded (missing, not a file, not GGUF, corrupt)."""


class GenerateError(OxiLlamaError):
    """Decoding failed, or a generation request was invalid for the loaded model."""


class TokenizerError(OxiLlamaError):
    """Text could not be tokenized, or token ids could not be turned back into text."""


class KvCacheFullError(GenerateError):
    """The prompt plus ``max_tokens`` does not fit the context share of one sequence."""


class GenerationCancelled(OxiLlamaError):
    """The generation was stopped by a :class:`~oxillama_py.CancellationToken`."""


class GrammarError(OxiLlamaError, ValueError):
    """A grammar or JSON Schema the engine cannot constrain output to (malformed, or an unsupported keyword).

    Raised before any decoding. It is also a ``ValueError``: bad input, like the other argument errors.
    """


class SnapshotError(LoadError):
    """A snapshot that cannot be read: not one, truncated, altered, or of an unknown format version."""


class UnknownModelError(OxiLlamaError, LookupError):
    """A model name a :class:`~oxillama_py.ModelRegistry` does not know; the message lists the names it knows."""
