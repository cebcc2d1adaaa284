"""One server process against two Ray Serve replicas, on this machine, under 16 streaming clients.

What it measures: the **aggregate tokens per second** (all clients' completion
tokens / wall seconds from the first request sent to the last stream ended)
and the time to first token of 16 concurrent clients, each streaming one
greedy ``POST /v1/completions`` (distinct prompts, a fixed ``max_tokens``), from

* ``process``: ``python -m oxillama_py serve --threads 2``, one process, one
  engine with two llama.cpp threads and its default 8 slots (the other 8
  clients wait in its queue);
* ``ray``: ``python -m oxillama_py serve --ray --replicas 2 --num-cpus 1
  --threads 1``: a local Ray instance started by the command, Serve's HTTP
  proxy in front of two replicas, each one engine with one llama.cpp thread
  and the default 8 slots;
* ``process16``: the single process with ``--max-concurrency 16``, as many
  slots as both replicas together: one batch of 16 reads the weights once per
  step where two replicas read them twice, so this is the upper bound one
  machine reaches, shown for reference.

Why: on a machine with 2 cores the set-ups have the same compute, so the
ratio ``ray / process`` is what Ray's routing (proxy, replica hops) costs; the
point of Ray is that more machines add replicas. Target (issue 13): ratio >=
0.85 at 16 clients. ``projection`` in the JSON writes out what N machines
would serve from the measured numbers.

How: one set-up is alive at a time; rounds alternate their order; medians over
rounds. Same model, same clients (``benchmarks/server.py``'s, httpx in this
process), each prompt unique in the run so no prefix is reused.

Usage: ``python benchmarks/scale.py [--quick] [--rounds N] [--max-tokens N]``.
Writes ``benchmarks/results/scale.json`` and ``scale.png``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as common
import anyio
from server import Sample, free_port, session, wait_ready

CONTENDERS = ("process", "ray", "process16")
LABELS = {
    "process": "1 process, 2 threads, 8 slots",
    "ray": "Ray Serve, 2 replicas x (1 thread, 8 slots)",
    "process16": "1 process, 2 threads, 16 slots",
}
CLIENTS = 16
TARGET = 0.85
SLOT_CTX = 512


def command(name: str, model: Path, port: int) -> list[str]:
    argv = [sys.executable, "-m", "oxillama_py", "serve", "--model", str(model), "--port", str(port)]
    if name == "ray":
        return [*argv, "--ray", "--replicas", "2", "--num-cpus", "1", "--threads", "1", "--n-ctx", str(8 * SLOT_CTX)]
    slots = 16 if name == "process16" else 8
    return [*argv, "--threads", "2", "--max-concurrency", str(slots), "--n-ctx", str(slots * SLOT_CTX)]


@contextmanager
def running(name: str, model: Path, logs: Path) -> Iterator[tuple[str, float]]:
    port = free_port()
    log = logs / f"{name}-{port}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(name, model, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base + "/health", log)
        yield base, time.perf_counter() - started
    finally:
        process.terminate()  # the Ray set-up takes its app and its Ray instance down on SIGTERM
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def main() -> int:
    parser = common.base_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 96, quick 32)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    max_tokens = args.max_tokens or (32 if args.quick else 96)
    model = common.resolve_model(args.model)
    started = time.perf_counter()
    info = common.machine_info(2, model)
    numbers = itertools.count(1)
    samples: dict[str, list[Sample]] = {name: [] for name in CONTENDERS}
    startup: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="oxillama-scale-") as tmp:
        for round_no in range(rounds):
            for name in common.rotated(CONTENDERS, round_no):
                with running(name, model, Path(tmp)) as (base, secs):
                    result = anyio.run(session, base, (CLIENTS,), max_tokens, numbers)[CLIENTS]
                samples[name].append(result)
                startup[name].append(secs)
                print(
                    f"round {round_no + 1}/{rounds} {name:8s} {result.tok_per_sec:6.1f} tok/s "
                    f"({result.tokens} tokens in {result.secs:.1f} s; started in {secs:.1f} s)",
                    flush=True,
                )
    tps = {name: common.median([s.tok_per_sec for s in samples[name]]) for name in CONTENDERS}
    ttft = {
        name: common.median([common.median([r.ttft for r in s.requests]) for s in samples[name]]) for name in CONTENDERS
    }
    ratio = tps["ray"] / tps["process"]
    ratio16 = tps["ray"] / tps["process16"]
    per_replica = tps["ray"] / 2
    common.finish_info(info, started)
    data: dict[str, Any] = {
        "benchmark": "scale",
        "machine": info,
        "settings": {
            "clients": CLIENTS,
            "max_tokens": max_tokens,
            "rounds": rounds,
            "commands": {name: command(name, model, 0)[3:] for name in CONTENDERS},
        },
        "results": {
            name: {
                "aggregate_tok_per_sec": common.summary([s.tok_per_sec for s in samples[name]]),
                "ttft_p50_secs": ttft[name],
                "startup_secs": common.summary(startup[name]),
            }
            for name in CONTENDERS
        },
        "ratio_ray_over_process": ratio,
        "ratio_ray_over_process16": ratio16,
        "target": {"ratio": TARGET, "verdict": common.verdict(ratio, TARGET)},
        "projection": {
            "per_replica_tok_per_sec": per_replica,
            "per_machine_tok_per_sec": tps["ray"],
            "note": (
                "N machines like this one, two 1-thread replicas each (or one 2-thread replica), serve about "
                f"N x {tps['ray']:.0f} tok/s under enough clients (16 per machine here): replicas share nothing "
                "but Serve's proxies, which route and stream; the measured ratio is what routing costs on top"
            ),
            "machines": {str(n): n * tps["ray"] for n in (1, 2, 4, 8)},
        },
        "load_warning": common.load_warning(info),
    }
    common.write_json(args.out / "scale.json", data)
    plot(data, args.out / "scale.png")
    print(f"ray / process: {ratio:.2f} (target {TARGET}: {data['target']['verdict']}); ray / process16: {ratio16:.2f}")
    return 0


def plot(data: dict[str, Any], path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    values = [data["results"][name]["aggregate_tok_per_sec"]["median"] for name in CONTENDERS]
    ax.bar([LABELS[n].replace(", ", ",\n", 1) for n in CONTENDERS], values, color=["#9e9e9e", "#1f77b4", "#c7c7c7"])
    ax.tick_params(axis="x", labelsize=7)
    for i, value in enumerate(values):
        ax.text(i, value, f"{value:.1f}", ha="center", va="bottom")
    ax.set_ylabel("aggregate tok/s (median)")
    ax.set_title(f"{CLIENTS} streaming clients, 2 cores: ray / process = {data['ratio_ray_over_process']:.2f}")
    common.save_figure(fig, path, 110)


if __name__ == "__main__":
    sys.exit(main())
