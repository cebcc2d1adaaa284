"""oxillama_py: GGUF text generation over llama.cpp, native to structured concurrency.

Decoding runs in a worker thread that publishes to anyio memory-object streams;
results, streaming callbacks and progress displays subscribe as tasks of each
generation's task group. :class:`AsyncEngine` is the core, :class:`Engine` its
blocking facade, :class:`SpeculativeEngine` adds speculative decoding.
"""

from __future__ import annotations

import logging
from typing import Any

from .cancel import CancellationToken
from .compat import StreamingCallback, TokenCallback, deprecated_name
from .config import EngineConfig, PromptLookup, SamplerConfig, SpeculativeConfig
from .engine import AsyncEngine, AsyncSpeculativeEngine, Engine, SpeculativeEngine
from .engine.snapshot_file import HubOrigin, SnapshotInfo
from .errors import (
    GenerateError,
    GenerationCancelled,
    GrammarError,
    KvCacheFullError,
    LoadError,
    OxiLlamaError,
    SnapshotError,
    TokenizerError,
    UnknownModelError,
)
from .grammar import Grammar
from .lora import Lora
from .options import BatchKwargs, GenerateKwargs
from .progress import ProgressEvent, make_progress_adapter
from .registry import ModelRegistry
from .results import (
    CompletionResult,
    FinishReason,
    SpeculativeStats,
    Timings,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    VerifyStep,
)
from .stats import EngineStats, PrefixCacheStats
from .tokenizer import Tokenizer
from .weights import LoadedWeights, loaded_weights

__version__ = "0.2.0"

logging.getLogger("oxillama_py").addHandler(logging.NullHandler())

__all__ = [
    "AsyncEngine",
    "AsyncSpeculativeEngine",
    "BatchKwargs",
    "CancellationToken",
    "CollectTokens",
    "CompletionResult",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "PrefixCacheStats",
    "FinishReason",
    "GenerateError",
    "GenerateKwargs",
    "GenerationCancelled",
    "Grammar",
    "GrammarError",
    "HubOrigin",
    "KvCacheFullError",
    "LoadError",
    "LoadedWeights",
    "Lora",
    "ModelRegistry",
    "OxiLlamaError",
    "ProgressEvent",
    "PromptLookup",
    "SamplerConfig",
    "SnapshotError",
    "SnapshotInfo",
    "SpeculativeConfig",
    "SpeculativeEngine",
    "SpeculativeStats",
    "StreamingCallback",
    "TokenCallback",
    "Timings",
    "TokenLogprob",
    "Tokenizer",
    "TokenizerError",
    "TopLogprob",
    "ToolCall",
    "TqdmProgress",
    "UnknownModelError",
    "VerifyStep",
    "loaded_weights",
    "make_progress_adapter",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The deprecated top-level names (upstream's v0.1.1 helpers), with a warning: see :mod:`.compat`."""
    try:
        return deprecated_name(name)
    except KeyError:
        raise AttributeError(f"module 'oxillama_py' has no attribute {name!r}") from None
