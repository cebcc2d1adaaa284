"""The decode worker's lifetime: started by the first use, stopped by ``aclose()``, shared by facades.

An :class:`~oxillama_py.Engine` and the :class:`~oxillama_py.AsyncEngine`
objects over it (upstream's ``AsyncEngine(engine)``) hold one
:class:`Lifetime`, so they share one decode thread and batch together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread

from ..config import EngineConfig
from ..decode import DecodeWorker
from ..errors import GenerateError
from ..llama.model import resolve_model_path

__all__ = ["Lifetime"]


@dataclass(eq=False)
class Lifetime:
    """One engine's decode worker and its guard; the lock makes load and close race-free across threads."""

    config: EngineConfig
    make_worker: Callable[[EngineConfig, Path], DecodeWorker] = DecodeWorker
    worker: DecodeWorker | None = None
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def check_open(self) -> None:
        if self.closed:
            raise GenerateError("the engine is closed")

    def load(self) -> DecodeWorker:
        """The running worker, started now if needed (blocking: a model load)."""
        with self.load_lock:
            self.check_open()
            if self.worker is None:
                worker = self.make_worker(self.config, resolve_model_path(self.config.model_path))
                worker.start()
                self.worker = worker
            return self.worker

    def close(self) -> None:
        """Stop the worker (blocking); a load in progress is waited for, then undone."""
        with self.load_lock:
            self.closed = True
            worker, self.worker = self.worker, None
        if worker is not None:
            worker.close()

    async def ready(self) -> DecodeWorker:
        """The running worker; the first call loads the model off the event loop."""
        self.check_open()
        worker = self.worker
        if worker is None:
            worker = await anyio.to_thread.run_sync(self.load)
        return worker
