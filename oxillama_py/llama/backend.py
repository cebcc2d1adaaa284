"""Process-wide llama.cpp set-up: initialise the backend once, route its log to ``logging``."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from pathlib import Path

import llama_cpp

__all__ = ["BENIGN_NOTICES", "ensure_backend", "use_extra_buffers"]

_log = logging.getLogger("oxillama_py.llama")
_lock = threading.Lock()
_ready = False
# ggml log levels: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continue the previous line.
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.DEBUG

# What llama.cpp logs at WARNING on ordinary loads of ordinary models (the default Gemma 3 included):
# it says what it corrected in a vocabulary or chose by default, not that anything is wrong, so these
# are logged at INFO and a WARNING from this logger means something. Matched after the "function: ".
BENIGN_NOTICES = (
    "control-looking token:",  # a token llama.cpp itself re-types as control
    "control token:",  # "... is not marked as EOG" (older llama.cpp)
    "special_eos_id is not in special_eog_ids",  # llama.cpp adds it to the EOG set itself
    "special_eot_id is not in special_eog_ids",
    "special_eom_id is not in special_eog_ids",
    "special_eog_ids contains both",
    "'</s>' is a normal token here",
    "setting token '",  # "... attribute to USER_DEFINED": a chat-format token fixed up
    "using full-size SWA cache",  # llama.cpp's default, which the KV reuse across requests relies on
)


def _level(level: int, text: str) -> int:
    if level == 5:  # the rest of the previous message
        return _last_level
    py_level = _LEVELS.get(level, logging.DEBUG)
    if py_level == logging.WARNING and text.partition(": ")[2].startswith(BENIGN_NOTICES):
        return logging.INFO
    return py_level


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp prints a lot to stderr by default; a library must not.
    global _last_level
    message = text.decode("utf-8", errors="replace").rstrip("\n")
    _last_level = py_level = _level(level, message)
    if _log.isEnabledFor(py_level):
        _log.log(py_level, "%s", message)


def ensure_backend() -> None:
    """Initialise llama.cpp once per process; safe from any thread."""
    global _ready
    with _lock:
        if _ready:
            return
        llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _ready = True


EXTRA_BUFFERS_ENV = "OXILLAMA_PY_EXTRA_BUFFERS"


@functools.cache
def use_extra_buffers() -> bool:
    """Whether models may use llama.cpp's CPU "extra" buffer types (AMX, repacked weights).

    A llama-cpp-python built natively on an AMX machine carries ggml's AMX
    kernels, and on some AMX machines they die with a general-protection fault
    (SIGSEGV in ``ggml_backend_amx_mul_mat``), taking the process with them.
    They are only reached through the extra buffer types, so those are turned
    off when the build has AMX and the CPU offers it; nothing else changes.
    ``OXILLAMA_PY_EXTRA_BUFFERS=1`` or ``0`` overrides the guess.
    """
    forced = os.environ.get(EXTRA_BUFFERS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    if not amx_in_build(info) or not cpu_has_amx():
        return True
    _log.warning(
        "llama.cpp was built with AMX kernels, which crash on some AMX CPUs: loading models without "
        "llama.cpp's extra CPU buffer types (set %s=1 to keep them)",
        EXTRA_BUFFERS_ENV,
    )
    return False


def amx_in_build(system_info: str) -> bool:
    return "AMX_INT8 = 1" in system_info


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AMX in the CPU flags; ``True`` when they cannot be read (assume the worst)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines())
