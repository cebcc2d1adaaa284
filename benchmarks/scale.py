"""One server process against two Ray Serve replicas, on this machine, under 16 streaming clients.

Set-ups, target and how to read the numbers: ``benchmarks/README.md``. Writes ``results/scale.json`` and ``.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import harness as h
from server import measure, requests_of

CONTENDERS = ("process", "ray", "process16")
CLIENTS = 16
TARGET = 0.85
SLOT_CTX = 512


def command(name: str, model: Path, port: int) -> tuple[list[str], str]:
    """The command line of set-up ``name`` on ``port``, and the path that says it is ready."""
    argv = [sys.executable, "-m", "oxillama_py", "serve", "--model", str(model), "--port", str(port)]
    if name == "ray":
        ray = ["--ray", "--replicas", "2", "--num-cpus", "1", "--threads", "1", "--n-ctx", str(8 * SLOT_CTX)]
        return [*argv, *ray], "/health"
    slots = 16 if name == "process16" else 8
    return [*argv, "--threads", "2", "--max-concurrency", str(slots), "--n-ctx", str(slots * SLOT_CTX)], "/health"


def main() -> int:
    run = h.start("scale", __doc__, rounds=(3, 1), max_tokens=(96, 32), info_threads=2)
    contenders, servers = measure(run, CONTENDERS, lambda name, port: command(name, run.model, port), [CLIENTS], 60)
    by = {c.name: c for c in contenders}
    tps = {name: h.median(by[name].rates(CLIENTS)) for name in CONTENDERS}
    ttft = {
        n: h.median([h.median([r.extra["ttft"] for r in requests_of(s)]) for s in by[n].samples[CLIENTS]])
        for n in CONTENDERS
    }
    ratio = tps["ray"] / tps["process"]
    ratio16 = tps["ray"] / tps["process16"]
    run.stop()
    data: dict[str, Any] = {
        "benchmark": "scale",
        "machine": run.info,
        "settings": {
            "clients": CLIENTS,
            "max_tokens": run.max_tokens,
            "rounds": run.rounds,
            "commands": {name: command(name, run.model, 0)[0][3:] for name in CONTENDERS},
        },
        "results": {
            name: {
                "aggregate_tok_per_sec": h.summary(by[name].rates(CLIENTS)),
                "ttft_p50_secs": ttft[name],
                "startup_secs": servers["startup_secs"][name],
            }
            for name in CONTENDERS
        },
        "ratio_ray_over_process": ratio,
        "ratio_ray_over_process16": ratio16,
        "target": {"ratio": TARGET, "verdict": h.check(ratio, TARGET)["verdict"]},
        # N machines like this one serve about N times its tok/s under enough clients (16 per machine here):
        # replicas share nothing but Serve's proxies, which route and stream; the ratio is what routing costs.
        "projection": {
            "per_replica_tok_per_sec": tps["ray"] / 2,
            "machines": {str(n): n * tps["ray"] for n in (1, 2, 4, 8)},
        },
        "load_warning": h.load_warning(run.info),
    }
    run.report(data)
    h.say(f"ray / process16: {ratio16:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
