"""The LoRA adapters a context decodes with: loaded, rescaled or removed on the decode thread.

A change is an exclusive task (no generation is running, see the scheduler):
the new set is applied, :attr:`AdapterSet.version` moves on (KV cells computed
before then are not reused), and adapters left out are freed. Other threads
read the applied set through :meth:`AdapterSet.applied` only.
"""

from __future__ import annotations

from pathlib import Path

from ..llama import Context, Model
from ..llama.adapter import LoraAdapter

__all__ = ["AdapterSet"]


class AdapterSet:
    """The applied adapters and their scales, by file."""

    def __init__(self) -> None:
        self._loras: dict[Path, tuple[LoraAdapter, float]] = {}  # replaced whole, never mutated: safe to read
        self.version = 0
        """Bumped whenever the adapters change."""

    def applied(self) -> dict[Path, float]:
        """The applied adapters' files and scales (any thread)."""
        return {path: scale for path, (_, scale) in self._loras.items()}

    def change(self, model: Model, context: Context, path: Path, scale: float | None) -> None:
        """Apply the adapter of ``path`` at ``scale`` (loading it unless applied), or remove it (``None``).

        Raises ``ValueError`` when removing one that is not applied, and
        :class:`~oxillama_py.LoadError` when the file's tensors do not fit the
        model; either way nothing changes.
        """
        loras = dict(self._loras)
        loaded: LoraAdapter | None = None
        if scale is None:
            if loras.pop(path, None) is None:
                raise ValueError(f"no LoRA adapter from {path} is applied")
        else:
            applied = loras.get(path)
            if applied is None:  # a stall of one file read, with no generation running
                adapter = loaded = LoraAdapter(model, path)
            else:
                adapter = applied[0]
            loras[path] = (adapter, scale)
        try:
            context.set_adapters(list(loras.values()))
        except BaseException:
            if loaded is not None:
                loaded.free()
            raise
        old, self._loras = self._loras, loras
        self.version += 1
        for where, (adapter, _) in old.items():
            if where not in loras or loras[where][0] is not adapter:
                adapter.free()

    def close(self) -> None:
        """Free every adapter (after the context that used them)."""
        loras, self._loras = self._loras, {}
        for adapter, _ in loras.values():
            adapter.free()
