"""A LoRA adapter loaded onto a model; a context decodes with the adapters it is given."""

from __future__ import annotations

from pathlib import Path

import llama_cpp

from ..errors import LoadError
from .compute import compute
from .model import Model

__all__ = ["LoraAdapter"]


class LoraAdapter:
    """llama.cpp's ``llama_adapter_lora``: its tensors live beside the model's (freed with it at the latest)."""

    def __init__(self, model: Model, path: Path) -> None:
        with model.weights.guard.writing():  # llama.cpp adds it to the model's list, which other contexts read
            ptr = compute(llama_cpp.llama_adapter_lora_init, model.ptr, str(path).encode("utf-8"))
        if not ptr:
            raise LoadError(
                f"llama.cpp rejected the LoRA adapter {path}: its tensors do not fit this model "
                "(a tensor the model lacks, or other shapes: an adapter of another base model?)"
            )
        self.path = path
        self.ptr = ptr
        self._guard = model.weights.guard

    def free(self) -> None:
        """Free the tensors now (only once no context uses the adapter)."""
        if self.ptr:
            with self._guard.writing():  # only this adapter goes: other engines on the weights keep theirs
                llama_cpp.llama_adapter_lora_free(self.ptr)
            self.ptr = None
