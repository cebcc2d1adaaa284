"""The decode worker: one thread per loaded model that owns its llama.cpp context."""

from .worker import DecodeWorker

__all__ = ["DecodeWorker"]
