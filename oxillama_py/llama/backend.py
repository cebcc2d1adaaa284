"""Process-wide llama.cpp set-up: initialise the backend once, route its log to ``logging``."""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp

__all__ = ["ensure_backend"]

_log = logging.getLogger("oxillama_py.llama")
_lock = threading.Lock()
_ready = False
# ggml log levels: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continue the previous line.
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.DEBUG


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp prints a lot to stderr by default; a library must not.
    global _last_level
    py_level = _last_level if level == 5 else _LEVELS.get(level, logging.DEBUG)
    _last_level = py_level
    if _log.isEnabledFor(py_level):
        _log.log(py_level, "%s", text.decode("utf-8", errors="replace").rstrip("\n"))


def ensure_backend() -> None:
    """Initialise llama.cpp once per process; safe from any thread."""
    global _ready
    with _lock:
        if _ready:
            return
        llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _ready = True
