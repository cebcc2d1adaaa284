"""The public view of the model weights this process holds (engines of one file share one load)."""

from __future__ import annotations

from .llama.weights import LoadedWeights, loaded_weights

__all__ = ["LoadedWeights", "loaded_weights"]
