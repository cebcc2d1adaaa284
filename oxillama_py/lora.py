"""LoRA adapter files: what one holds, read without a model (upstream's ``Lora.load``).

Applying one is the engine's: :meth:`oxillama_py.Engine.apply_lora`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .checks import check_number
from .errors import LoadError
from .llama.gguf_file import read_gguf_header
from .paths import check_path

__all__ = ["Lora", "check_adapter", "check_lora_path", "check_scale"]

_SUFFIX_A = ".lora_a"
_SUFFIX_B = ".lora_b"


def check_lora_path(path: object) -> Path:
    return check_path(path).expanduser().resolve()


def check_scale(scale: object) -> float:
    return check_number("scale", scale, what="a float")


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter GGUF file (llama.cpp's ``convert_lora_to_gguf.py`` format), checked and described.

    ``rank`` is the largest rank of its weight pairs; ``alpha`` is the file's
    ``adapter.lora.alpha`` (llama.cpp scales each pair by ``scale * alpha /
    rank``, or by ``scale`` alone when alpha is 0).
    """

    path: Path
    architecture: str
    rank: int
    alpha: float
    weights: tuple[str, ...] = field(repr=False)
    """The base model's weights it adapts (``blk.0.attn_q.weight``, ...)."""

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Lora:
        """Read and check an adapter file; :class:`LoadError` if it is not a LoRA adapter GGUF."""
        where = check_lora_path(path)
        header = read_gguf_header(where)
        meta = header.metadata
        kind = meta.get("general.type")
        if kind != "adapter" or meta.get("adapter.type") != "lora":
            raise LoadError(
                f"not a LoRA adapter: {where} has general.type={kind!r}, adapter.type={meta.get('adapter.type')!r} "
                "(expected 'adapter' and 'lora')"
            )
        arch = meta.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise LoadError(f"LoRA adapter {where} names no general.architecture")
        alpha = meta.get("adapter.lora.alpha", 0.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise LoadError(f"LoRA adapter {where} has a non-numeric adapter.lora.alpha: {alpha!r}")
        ranks: list[int] = []
        weights: list[str] = []
        tensors = header.tensors
        for name, info in tensors.items():
            if not name.endswith(_SUFFIX_A):
                continue
            base = name[: -len(_SUFFIX_A)]
            other = tensors.get(base + _SUFFIX_B)
            if other is None or len(info.shape) < 2 or len(other.shape) < 2:
                raise LoadError(f"LoRA adapter {where}: {name} has no matching {base + _SUFFIX_B}")
            ranks.append(other.shape[0])  # lora_b is (rank, n_out) in every layout, token_embd too
            weights.append(base)
        if len(weights) * 2 != len(tensors) or not weights:
            raise LoadError(f"LoRA adapter {where} does not hold lora_a/lora_b pairs only ({len(tensors)} tensors)")
        return Lora(where, arch, max(ranks), float(alpha), tuple(weights))

    def num_adapters(self) -> int:
        """How many weight matrices it adapts (upstream's name)."""
        return len(self.weights)


def check_adapter(path: str | os.PathLike[str], architecture: str) -> Path:
    """The resolved file of an adapter for a model of ``architecture``; :class:`LoadError` for any other file."""
    lora = Lora.load(path)
    if lora.architecture != architecture:
        raise LoadError(f"LoRA adapter {lora.path} is for {lora.architecture!r} models; this model is {architecture!r}")
    return lora.path
