"""A llama.cpp context: the KV cache of many sequences and one reusable batch."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import GenerateError, KvCacheFullError, LoadError
from .compute import compute, compute_decode
from .model import Model

if TYPE_CHECKING:
    from .adapter import LoraAdapter

__all__ = ["BatchEntry", "Context"]

# llama_flash_attn_type: -1 auto, 0 disabled, 1 enabled.
_FLASH_ATTN_OFF = 0
_FLASH_ATTN_ON = 1


class BatchEntry(NamedTuple):
    token: int
    pos: int
    seq_id: int
    logits: bool


class Context:
    """Created the way ``llama_cpp.Llama`` creates its context, so greedy output matches it."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        n_seq_max: int,
        flash_attn: bool,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = min(n_ctx, n_batch)
        params.n_ubatch = min(params.n_batch, 512)
        params.n_seq_max = n_seq_max
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.flash_attn_type = _FLASH_ATTN_ON if flash_attn else _FLASH_ATTN_OFF
        params.kv_unified = True  # one cell store: seq_cp shares cells instead of copying them
        params.swa_full = True  # a full-size SWA cache: overwrites only what the window left behind
        params.no_perf = True
        self._guard = model.weights.guard  # llama.cpp reads the model's adapter list when it plans graphs
        with self._guard.reading():
            ptr = compute(llama_cpp.llama_init_from_model, model.ptr, params)
        if not ptr:
            raise LoadError(f"llama.cpp could not create a context (n_ctx={n_ctx}) for {model.path}")
        self.model = model
        self.ptr = ptr
        self.n_ctx: int = llama_cpp.llama_n_ctx(ptr)
        self.n_batch: int = int(params.n_batch)
        self.n_threads = n_threads
        self.memory = llama_cpp.llama_get_memory(ptr)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._n_vocab = model.n_vocab

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        """Decode one batch (at most ``n_batch`` entries) in a single ``llama_decode``."""
        batch = self._batch
        n = len(entries)
        if not 0 < n <= self.n_batch:
            raise GenerateError(f"batch of {n} tokens does not fit n_batch={self.n_batch}")
        token, pos, n_seq_id, seq_id, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        for i, entry in enumerate(entries):
            token[i] = entry.token
            pos[i] = entry.pos
            n_seq_id[i] = 1
            seq_id[i][0] = entry.seq_id
            logits[i] = entry.logits
        batch.n_tokens = n
        with self._guard.reading():
            rc = compute_decode(self.n_threads, llama_cpp.llama_decode, self.ptr, batch)
        if rc == 1:
            raise KvCacheFullError("llama.cpp found no free KV cells for the batch")
        if rc != 0:
            raise GenerateError(f"llama_decode failed with code {rc}")

    def logits_array(self, index: int) -> npt.NDArray[np.float32]:
        """Batch entry ``index``'s logits as a numpy view (valid until the next decode)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ptr, index)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def set_embeddings(self, on: bool) -> None:
        """Make the next decodes output hidden states (embeddings) for the entries that ask for output."""
        llama_cpp.llama_set_embeddings(self.ptr, on)

    @property
    def pooling(self) -> int:
        """llama.cpp's pooling type of this context (``0``: none, one hidden state per token)."""
        return int(llama_cpp.llama_pooling_type(self.ptr))

    def embedding_array(self, index: int) -> npt.NDArray[np.float32]:
        """Batch entry ``index``'s hidden state (pooling none) as a numpy view (valid until the next decode)."""
        ptr = llama_cpp.llama_get_embeddings_ith(self.ptr, index)
        if not ptr:
            raise GenerateError(f"llama.cpp returned no embedding for batch entry {index}")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_embd,))

    def sequence_embedding(self, seq_id: int) -> npt.NDArray[np.float32]:
        """The pooled hidden state of ``seq_id`` (a model that declares its pooling)."""
        ptr = llama_cpp.llama_get_embeddings_seq(self.ptr, seq_id)
        if not ptr:
            raise GenerateError(f"llama.cpp returned no pooled embedding for sequence {seq_id}")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_embd,))

    def set_adapters(self, adapters: Sequence[tuple[LoraAdapter, float]]) -> None:
        """Decode with these LoRA adapters and scales from the next ``llama_decode`` on (none: the base model)."""
        n = len(adapters)
        ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(a.ptr for a, _ in adapters)) if n else None
        scales = (ctypes.c_float * n)(*(scale for _, scale in adapters)) if n else None
        rc = llama_cpp.llama_set_adapters_lora(self.ptr, ptrs, n, scales)
        if rc != 0:
            raise GenerateError(f"llama.cpp could not set the LoRA adapters (code {rc})")

    def sequence_state(self, seq_id: int) -> bytes:
        """llama.cpp's saved state of ``seq_id``'s cells (positions and K/V values of every layer)."""
        size = llama_cpp.llama_state_seq_get_size(self.ptr, seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ptr, buf, size, seq_id)
        if written != size:
            raise GenerateError(f"llama.cpp saved {written} of {size} bytes of sequence {seq_id}")
        return bytes(buf)

    def load_sequence_state(self, seq_id: int, state: bytes) -> None:
        """Put saved cells back under ``seq_id`` (wherever llama.cpp finds free cells)."""
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self.ptr, buf, len(state), seq_id) != len(state):
            self.remove(seq_id)
            raise LoadError("llama.cpp could not restore the saved cells (another model, or no room in the context)")

    def remove(self, seq_id: int, start: int = -1, end: int = -1) -> None:
        """Free the KV cells of ``seq_id`` at positions ``[start, end)`` (all by default)."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, start, end)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ptr)
            self.ptr = None
