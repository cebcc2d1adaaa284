"""The model's state beyond one generation: LoRA adapters, the prefix cache, snapshots.

Each change is work the decode worker runs between two steps (an adapter change
once the running generations have ended); the answer comes back through the
event bus (:func:`~oxillama_py.bus.post.wait_future`).
"""

from __future__ import annotations

import json
import os

import anyio.to_thread

from ..bus import Generation, Request
from ..bus.collect import Collector
from ..bus.post import wait_future
from ..config import SamplerConfig
from ..decode.prefix_cache import ALIGN
from ..errors import KvCacheFullError, LoadError
from ..lora import Lora, check_lora_path, check_scale
from ..paths import check_path
from .base import EngineBase
from .call import Call
from .files import Restore, write_file
from .prepare import check_prompt
from .snapshot_file import HubOrigin, check_hub_origin, config_to_json, model_fingerprint, write_snapshot

__all__ = ["ModelState"]


class ModelState(EngineBase):
    """Adapters, the prefix cache and snapshots of an :class:`~oxillama_py.AsyncEngine`."""

    async def reset(self) -> None:
        """Forget what the engine keeps between calls: the prefix cache's entries, pinned ones too.

        Generations in flight are not touched (their cells are their own).
        """
        await wait_future((await self._ready()).clear_cache())

    # -- adapters ---------------------------------------------------------------------
    async def apply_lora(self, path: str | os.PathLike[str], scale: float = 1.0) -> None:
        """Decode with the LoRA adapter at ``path``, scaled by ``scale``, from the next generation on.

        Applying an applied adapter again sets its scale; several adapters add
        up. The generations decoding now end with the weights they started
        with: this returns once they have and the adapter is in place, and
        requests that have not started yet wait for it (so every generation
        sees one set of weights). The prefix cache is emptied: its cells were
        computed with the old weights. A file that is not a LoRA adapter for
        this model's architecture, or whose tensors do not fit the model,
        raises :class:`LoadError` before anything changes.
        """
        where, factor = check_lora_path(path), check_scale(scale)
        lora = await anyio.to_thread.run_sync(Lora.load, where)
        worker = await self._ready()
        if lora.architecture != worker.model.architecture:
            raise LoadError(
                f"LoRA adapter {where} is for {lora.architecture!r} models; this model is {worker.model.architecture!r}"
            )
        await wait_future(worker.set_lora(where, factor))

    async def remove_lora(self, path: str | os.PathLike[str]) -> None:
        """Stop decoding with the adapter applied from ``path`` (when the running generations end)."""
        where = check_lora_path(path)
        worker = await self._ready()
        if where not in worker.lora_adapters():
            raise ValueError(f"no LoRA adapter from {where} is applied")
        await wait_future(worker.set_lora(where, None))

    def lora_adapters(self) -> dict[str, float]:
        """The applied adapters' paths and scales."""
        worker = self._life.worker
        return {} if worker is None else {str(path): scale for path, scale in worker.lora_adapters().items()}

    # -- prefix cache -----------------------------------------------------------------
    async def cache_prefix(self, text: str) -> int:
        """Prefill ``text`` into the prefix cache now, pinned; return how many of its tokens it keeps.

        Later prompts that start with the same tokens (a system prompt, few-shot
        examples) skip its prefill from their first request on. A pinned prefix
        is evicted only after every unpinned one (when the cache is over its
        capacity, or a running request needs the room). ``text`` is tokenized
        as a prompt (BOS first, if the model adds one): a prompt reuses it only
        if its own tokens start with the same ones, so end it where a prompt
        would break naturally (after a newline, say). A pinned prefix keeps a
        multiple of 64 tokens (see :doc:`prefix-cache`): the rest of ``text`` is
        prefilled by each request.
        """
        check_prompt(text)
        config = self.config
        capacity = config.prefix_cache_capacity
        if capacity == 0:
            raise ValueError("the prefix cache is off (EngineConfig.prefix_cache_tokens=0)")
        worker = await self._ready()
        tokens = await anyio.to_thread.run_sync(worker.model.tokenize, text)
        if not tokens:
            raise ValueError("text is empty and the model adds no BOS token")
        if len(tokens) > min(capacity, config.n_ctx):
            raise KvCacheFullError(
                f"a prefix of {len(tokens)} tokens does not fit the prefix cache's {capacity} cells "
                f"or the context of n_ctx={config.n_ctx} cells"
            )
        request = Request(tokens, 0, SamplerConfig.greedy(), 0, pin=True)
        collector = Collector(1)
        await Call(Generation([request], [collector], worker.submit), collector, None, False).run()
        return len(tokens) - len(tokens) % ALIGN

    # -- snapshots --------------------------------------------------------------------
    async def snapshot(self, path: str | os.PathLike[str], *, hub_origin: HubOrigin | None = None) -> None:
        """Save :meth:`snapshot_bytes` to ``path`` (written whole, then renamed into place).

        With ``hub_origin``, a ``<path>.meta.json`` sidecar also records it, as
        upstream oxillama-py writes one (the snapshot itself holds it too).
        """
        where = check_path(path)
        data = await self.snapshot_bytes(hub_origin=hub_origin)
        await anyio.to_thread.run_sync(write_file, where, data)
        if hub_origin is not None:
            sidecar = json.dumps({"hub_origin": check_hub_origin(hub_origin)}, indent=2).encode("utf-8")
            await anyio.to_thread.run_sync(write_file, where.with_name(where.name + ".meta.json"), sidecar)

    async def snapshot_bytes(self, *, hub_origin: HubOrigin | None = None) -> bytes:
        """The engine's state as bytes: its model file (path and fingerprint), config, adapters and cached prefixes.

        The prefix cache holds what the engine keeps between calls (system
        prompts, conversations so far): each entry is saved with its KV cells,
        cut to a multiple of 64 tokens, so a restored engine answers a request
        that continues one as a cache hit. Generations keep running meanwhile
        (the cells are read between two steps). ``hub_origin`` records where
        the model came from, for :meth:`from_snapshot_with_hub`.
        """
        origin = check_hub_origin(hub_origin)
        worker = await self._ready()
        prefixes, applied = await wait_future(worker.save_state())  # one task: the cells and their weights agree
        model_path = worker.model_path.resolve()
        fingerprint = await anyio.to_thread.run_sync(model_fingerprint, model_path)
        loras = [
            {"path": str(path), "scale": scale, "fingerprint": await anyio.to_thread.run_sync(model_fingerprint, path)}
            for path, scale in applied
        ]
        header = {
            "model": {"path": str(model_path), "fingerprint": fingerprint, "architecture": worker.model.architecture},
            "config": config_to_json(self.config),
            "loras": loras,
            "hub_origin": origin,
        }
        return await anyio.to_thread.run_sync(write_snapshot, header, prefixes)

    async def _adopt(self, plan: Restore) -> None:
        """Put a checked snapshot's adapters and cached prefixes into this (new) engine."""
        worker = await self._ready()
        for lora_path, scale in plan.loras:
            await self.apply_lora(lora_path, scale)
        await wait_future(worker.restore_prefixes(plan.prefixes))
