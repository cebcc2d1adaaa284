"""The engines: :class:`AsyncEngine`, the core, and :class:`Engine`, its blocking facade over any ``AsyncEngine``.

One concept a module: the worker's lifetime (:mod:`.lifetime`), a prepared
call and its ending (:mod:`.call`), preparing one (:mod:`.prepare`), the
pulled stream (:mod:`.stream`), the async surface by concept
(:mod:`.async_engine` for generation and chat, :mod:`.model_state`,
:mod:`.reads`), the snapshot file (:mod:`.snapshot_file`) and the files a
restore reads (:mod:`.files`), the facade (:mod:`.sync`), and the engines configured to
speculate every request (:mod:`.speculative`), and upstream's wrapper of a
foreign engine (:mod:`.wrapped`). See
``docs/architecture.rst``.
"""

from .async_engine import AsyncEngine
from .call import Call
from .speculative import AsyncSpeculativeEngine, SpeculativeEngine
from .sync import Backend, Engine
from .wrapped import WrappedEngine, WrappedStream

__all__ = [
    "AsyncEngine",
    "AsyncSpeculativeEngine",
    "Backend",
    "Call",
    "Engine",
    "SpeculativeEngine",
    "WrappedEngine",
    "WrappedStream",
]
