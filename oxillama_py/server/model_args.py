"""The command line's models: ``--model [NAME=]PATH``, ``--lora NAME=PATH[:SCALE]``, ``--max-loaded-models``.

Turns the flags into what :func:`~.routes.create_app` serves: one
:class:`~oxillama_py.EngineConfig` and its name when one model is served
(today's server, unchanged), else a :class:`~oxillama_py.ModelRegistry` that
holds every name. Paths are checked here, so a mistyped file is an ``error:``
at startup rather than a failure at a model's first request.

The naming rule: ``--model`` reads ``NAME=PATH`` only when the part before the
first ``=`` is a model name (:data:`NAME_PATTERN`: letters, digits and
``._:-``, no slash or backslash) and the whole value is not an existing file;
anything else is a bare path. So ``C:\\models\\a=b.gguf``, ``./x=y.gguf`` and
``/data/x=y.gguf`` are paths. ``--lora`` always needs ``NAME=``; its
``:SCALE`` is read only when the text after the last ``:`` is a number and the
whole ``PATH:SCALE`` is not an existing file (``C:\\a.gguf`` has no scale).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import EngineConfig
from ..llama.model import resolve_model_path
from ..registry import ModelRegistry

__all__ = ["NAME_PATTERN", "LoraSpec", "ModelSpec", "parse_lora", "parse_model", "served_models"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""What ``NAME`` may be in ``--model NAME=PATH`` and ``--lora NAME=PATH``."""


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model``: its name (``None``: the file's stem, or ``--model-name``) and its path."""

    name: str | None
    path: str


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora``: the name it is served as, the adapter file and its scale."""

    name: str
    path: str
    scale: float


def _is_name(text: str) -> bool:
    return NAME_PATTERN.fullmatch(text) is not None


def parse_model(value: str) -> ModelSpec:
    """``NAME=PATH`` or a bare ``PATH``, by the module's naming rule; the file must exist."""
    name, sep, path = value.partition("=")
    if sep and _is_name(name) and not os.path.isfile(value):
        if not path:
            raise ValueError(f"--model {value!r}: no path after '{name}='")
        spec = ModelSpec(name, path)
    else:
        spec = ModelSpec(None, value)
    if not os.path.isfile(spec.path):
        raise ValueError(f"--model {value!r}: no such file: {spec.path}")
    return spec


def parse_lora(value: str) -> LoraSpec:
    """``NAME=PATH`` or ``NAME=PATH:SCALE`` (scale 1.0 when absent); the adapter file must exist."""
    name, sep, rest = value.partition("=")
    if not sep or not _is_name(name):
        raise ValueError(f"--lora must be NAME=PATH[:SCALE] with NAME of letters, digits and '._:-', got {value!r}")
    path, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head and not os.path.isfile(rest):
        try:
            number = float(tail)
        except ValueError:
            pass
        else:
            if not math.isfinite(number):
                raise ValueError(f"--lora {value!r}: the scale must be a finite number, got {tail!r}")
            path, scale = head, number
    if not path:
        raise ValueError(f"--lora {value!r}: no path after '{name}='")
    if not os.path.isfile(path):
        raise ValueError(f"--lora {value!r}: no such file: {path}")
    return LoraSpec(name, path, scale)


def served_models(
    models: Sequence[str] | None,
    model_name: str | None,
    loras: Sequence[str] | None,
    max_loaded: int | None,
    config_for: Callable[[str | None], EngineConfig],
) -> tuple[EngineConfig, str | None] | ModelRegistry:
    """One model (its config, and ``--model-name``), or a registry of every name the flags give.

    ``config_for(path)`` is the engine config of a model file (``None``: the
    default model) with the command's other flags. Adapters are served over
    the first model; one model alone is served as before (loaded at startup),
    where ``--max-loaded-models`` has nothing to unload.
    """
    if max_loaded is not None and (isinstance(max_loaded, bool) or max_loaded < 1):
        raise ValueError(f"--max-loaded-models must be >= 1, got {max_loaded}")
    specs = [parse_model(value) for value in models or ()] or [ModelSpec(None, "")]
    adapters = [parse_lora(value) for value in loras or ()]
    bare = [spec for spec in specs if spec.name is None]
    if model_name is not None and len(bare) != 1:
        raise ValueError("--model-name names the one --model given as a bare path; name the others NAME=PATH")
    if len(specs) == 1 and not adapters:
        return config_for(specs[0].path or None), model_name
    registry = ModelRegistry(max_loaded=max_loaded)  # loads nothing until a request uses a name
    names: dict[str, str] = {}
    for spec in specs:
        path = spec.path or None
        name = spec.name or model_name or Path(resolve_model_path(path)).stem
        if name in names:
            raise ValueError(
                f"two models are named {name!r} ({names[name] or 'the default model'} and "
                f"{spec.path or 'the default model'}): name them with --model NAME=PATH"
            )
        names[name] = spec.path
        registry.add(name, config_for(path))
    base = next(iter(names))
    for adapter in adapters:
        if adapter.name in names:
            raise ValueError(f"--lora {adapter.name!r}: a model of that name is served already")
        names[adapter.name] = adapter.path
        registry.add_lora(adapter.name, base=base, path=adapter.path, scale=adapter.scale)
    return registry
