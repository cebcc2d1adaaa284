"""The decode worker: one thread per loaded model that owns its llama.cpp context.

Its parts: the thread loop (``worker``), the scheduler (``scheduler``, pure
Python), the runner that executes a step on the context (``runner``), the
sequence-id pool (``ids``), the prefix cache (``prefix_cache``), speculation
(``speculation``, ``drafters``, ``draft_model``, ``cost``), reads of
embeddings and logits (``reads``), adapters (``adapters``) and snapshots of
the cache (``persist``).
"""

from .worker import DecodeWorker

__all__ = ["DecodeWorker"]
