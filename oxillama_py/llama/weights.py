"""A model's weights, loaded once per process and shared by the engines that load the same file.

Every :class:`~.model.Model` holds its ``llama_model`` through :class:`Weights`.
Engines (decode workers) lease theirs from a process-wide table keyed by the
resolved file and the load parameters: the first lease loads the file, later
ones reuse the pointer, and the last release frees it. Each holder keeps its
own context, KV cells and adapters; what they share is read-only, except the
model's list of LoRA adapters, which llama.cpp changes when an adapter is
loaded or freed and reads when a context plans a graph. :attr:`Weights.guard`
orders those: decodes and context creation read, adapter loads and frees write.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from ..errors import LoadError
from .backend import ensure_backend, use_extra_buffers
from .compute import compute

__all__ = [
    "LoadedWeights",
    "SharedGuard",
    "Weights",
    "lease_weights",
    "load_weights",
    "loaded_weights",
    "release_weights",
]


@dataclass(frozen=True, slots=True)
class LoadedWeights:
    """One model file whose weights this process holds (``oxillama_py.loaded_weights()``)."""

    path: Path
    """The resolved model file."""
    holders: int
    """Engines (decode workers) that use these weights now."""


class SharedGuard:
    """A readers-writer lock that lets a waiting writer in before new readers (decodes never starve it)."""

    __slots__ = ("_cond", "_readers", "_writer", "_writers_waiting")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writer and not self._readers)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Weights:
    """A loaded ``llama_model``: its pointer and vocabulary, and the guard of its adapter list."""

    def __init__(self, path: Path, *, vocab_only: bool) -> None:
        ensure_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        params.vocab_only = vocab_only  # a tokenizer needs no weights
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = use_extra_buffers()
        ptr = compute(llama_cpp.llama_model_load_from_file, str(path).encode("utf-8"), params)
        if not ptr:
            raise LoadError(f"llama.cpp could not load the model (truncated or corrupt GGUF?): {path}")
        vocab = llama_cpp.llama_model_get_vocab(ptr)
        if not vocab:
            llama_cpp.llama_model_free(ptr)
            raise LoadError(f"model has no vocabulary: {path}")
        self.path = path
        self.ptr = ptr
        self.vocab = vocab
        self.guard = SharedGuard()
        self._key: _Key | None = None  # set for a leased (shared) load

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


_Key = tuple[str, bool]  # the resolved file, use_extra_bufts: what makes two loads the same


@dataclass(eq=False)
class _Entry:
    key: _Key
    lock: threading.Lock  # held while loading, so that one load serves every lease
    weights: Weights | None = None
    holders: int = 0


_table: dict[_Key, _Entry] = {}
_table_lock = threading.Lock()


def load_weights(path: Path, *, vocab_only: bool = False) -> Weights:
    """Weights of one's own (a tokenizer's vocabulary, a draft model): freed by :func:`release_weights`."""
    return Weights(path, vocab_only=vocab_only)


def lease_weights(path: Path) -> Weights:
    """The process's weights of ``path``, loaded now unless an engine already holds them (blocking)."""
    key: _Key = (str(path.expanduser().resolve()), use_extra_buffers())
    with _table_lock:
        entry = _table.get(key)
        if entry is None:
            entry = _table[key] = _Entry(key, threading.Lock())
        entry.holders += 1
    try:
        with entry.lock:
            if entry.weights is None:
                weights = Weights(path, vocab_only=False)
                weights._key = key
                entry.weights = weights
            return entry.weights
    except BaseException:
        _drop(entry)
        raise


def release_weights(weights: Weights) -> None:
    """Give back a lease (or free one's own weights); the last holder frees them."""
    if weights._key is None:
        weights.free()
        return
    with _table_lock:
        entry = _table.get(weights._key)
    if entry is not None and entry.weights is weights:
        _drop(entry)


def _drop(entry: _Entry) -> None:
    with _table_lock:
        entry.holders -= 1
        if entry.holders:
            return
        if _table.get(entry.key) is entry:
            del _table[entry.key]
        weights, entry.weights = entry.weights, None
    if weights is not None:
        weights.free()


def loaded_weights() -> tuple[LoadedWeights, ...]:
    """The model files whose weights engines of this process share now, and how many engines hold each."""
    with _table_lock:
        return tuple(LoadedWeights(Path(e.key[0]), e.holders) for e in _table.values() if e.weights is not None)
