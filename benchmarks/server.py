"""Concurrent streaming clients against three OpenAI-compatible servers on the same model.

What it measures: for 1, 4, 8 and 16 concurrent clients, each streaming one
greedy ``POST /v1/completions`` (``stream: true``, ``temperature: 0``, a fixed
``max_tokens``, distinct prompts), the **aggregate tokens per second** (all
clients' completion tokens / wall seconds from the first request sent to the
last stream ended) and the **time to first token** of every request (from
sending it to its first chunk with text; p50 and p99 over the requests), from

* ``oxillama``: this project's server, ``python -m oxillama_py serve --model M
  --threads T --max-concurrency 8 --n-ctx 8*S`` (8 slots of S cells each;
  continuous batching in the engine);
* ``llama_cpp_server``: llama-cpp-python's own server, ``python -m
  llama_cpp.server --model M --n_threads T --n_threads_batch T --n_ctx S
  --interrupt_requests false`` (its ``[server]`` extra). It wraps one ``Llama``
  behind a lock, so it has one slot by design and decodes one request at a time;
  the others queue. ``--interrupt_requests false`` because its default makes a
  waiting request cut the running stream short, which would end concurrent
  clients' streams early; every other setting is its default;
* ``llama_server``: llama.cpp's C++ ``llama-server``, built from the llama.cpp
  sources vendored in the same llama-cpp-python sdist by
  ``benchmarks/build_llama_server.sh``, with ``-m M -t T -tb T -np 8 -c 8*S
  -fa off``: the same 8 slots of S cells, flash attention off as in the
  engine and in ``Llama``, every other setting its default.

Why: the server is a thin layer over ``AsyncEngine``, so HTTP clients should
get what batching gives in-process. Targets at 8 clients: oxillama / llama-cpp-
python's server >= 2.5 and oxillama / llama-server >= 0.9 (aggregate tok/s).

How: one server process is alive at a time (on a small machine two would fight
for the cores). Each round starts every contender in turn, in a rotating order,
on a free port of 127.0.0.1, waits until it answers (``/health``, or
``/v1/models`` for llama-cpp-python's server), asks ``/v1/models`` for the name
it serves (the requests' ``model``), warms it up (one request, then 16 at
once, 4 tokens each), runs the four client counts, and stops it; medians
over rounds are reported. Same model, same llama.cpp thread count
(``--threads``), greedy everywhere. Each prompt starts with a request number
unique in the run (``Request 17. List of one hundred interesting facts about
{topic}:\\n1.``), so no server can reuse a cached prompt prefix from an earlier
request. A sequence may end at an end-of-generation token before
``max_tokens`` (no portable ``ignore_eos``), so tokens are counted as streamed:
the ``usage`` a server reports in the stream (``stream_options:
{"include_usage": true}``), else ``max_tokens`` when the finish reason is
``length``, else the number of chunks with text. The clients (httpx, one
event loop) run in this process and share the machine with the server alike
for every contender.

Usage: ``python benchmarks/server.py [--quick] [--only oxillama,llama_server]
[--backend asyncio|uvloop|trio] [--llama-server PATH]``. Writes
``benchmarks/results/server.json`` and ``server.png``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as common
import anyio
import httpx
from batching import TOPICS

LEVELS = (1, 4, 8, 16)
CONTENDERS = ("oxillama", "llama_cpp_server", "llama_server")
PRIMARY = "oxillama"
LABELS = {
    "oxillama": "oxillama_py server",
    "llama_cpp_server": "llama-cpp-python server",
    "llama_server": "llama.cpp llama-server",
}
TARGETS = {"llama_cpp_server": 2.5, "llama_server": 0.9}  # oxillama / contender, aggregate tok/s at 8 clients
TARGET_LEVEL = 8
PROMPT = "Request {number}. List of one hundred interesting facts about {topic}:\n1."
READY_TIMEOUT = 300.0
REQUEST_TIMEOUT = 900.0
BUILD_SCRIPT = common.HERE / "build_llama_server.sh"


@dataclass
class Request:
    tokens: int
    counted_by: str  # "usage", "length" or "chunks"
    ttft: float  # seconds, NaN when no text came
    secs: float
    finish: str | None


@dataclass
class Sample:
    """One client count's run: every request, and the wall time of them all."""

    requests: list[Request]
    secs: float

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.requests)

    @property
    def tok_per_sec(self) -> float:
        return self.tokens / self.secs if self.secs > 0 else math.nan


@dataclass
class Contender:
    name: str
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    startup_secs: list[float] = field(default_factory=list)
    command: list[str] = field(default_factory=list)


# -- the servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_binary(path: Path | None) -> Path:
    """``--llama-server``, else what ``build_llama_server.sh`` builds (it returns at once when built)."""
    if path is not None:
        if not path.is_file():
            sys.exit(f"llama-server not found: {path}")
        return path
    print(f"llama-server: bash {BUILD_SCRIPT.relative_to(common.HERE.parent)} (builds it once, ~10 min)", flush=True)
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"building llama-server failed (exit {out.returncode}); see the output above")
    return Path(out.stdout.strip().splitlines()[-1])


def command(name: str, args: Any, model: Path, port: int) -> tuple[list[str], str]:
    """The command line that starts contender ``name`` on ``port``, and the path that says it is ready."""
    threads, slots, slot_ctx = str(args.threads), args.slots, args.slot_ctx
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "oxillama":
        argv = [sys.executable, "-m", "oxillama_py", "serve", "--model", str(model), *host]
        argv += ["--max-concurrency", str(slots), "--threads", threads, "--n-ctx", str(slots * slot_ctx)]
        if args.backend:
            argv += ["--backend", args.backend]
        return argv, "/health"
    if name == "llama_cpp_server":
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), *host]
        argv += ["--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", str(slot_ctx)]
        argv += ["--interrupt_requests", "false"]
        return argv, "/v1/models"
    if name == "llama_server":
        argv = [str(args.llama_server_binary), "-m", str(model), *host, "-t", threads, "-tb", threads]
        argv += ["-np", str(slots), "-c", str(slots * slot_ctx), "-fa", "off"]
        return argv, "/health"
    raise ValueError(name)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll ``url`` until it answers 200 (and ``"status": "ok"`` when the JSON has a status)."""
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before it was ready:\n{_tail(log)}")
            try:
                response = client.get(url)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                try:
                    status = response.json().get("status", "ok")
                except (ValueError, AttributeError):
                    status = "ok"
                if status == "ok":
                    return
            time.sleep(0.2)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT:.0f} s:\n{_tail(log)}")


@contextmanager
def running(name: str, args: Any, model: Path, logs: Path) -> Iterator[tuple[str, list[str], float]]:
    """Start contender ``name``, wait until it is ready; yield its base URL, command and start-up seconds."""
    port = free_port()
    argv, ready_path = command(name, args, model, port)
    log = logs / f"{name}-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base + ready_path, log)
        yield base, argv, time.perf_counter() - started
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


# -- the clients ---------------------------------------------------------------------------


async def stream_one(client: httpx.AsyncClient, base: str, model: str, prompt: str, max_tokens: int) -> Request:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = math.nan
    chunks = 0
    usage: int | None = None
    finish: str | None = None
    start = time.perf_counter()
    async with client.stream("POST", base + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode("utf-8", "replace")[:500]
            raise RuntimeError(f"{base}: HTTP {response.status_code}: {detail}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"{base}: error in stream: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens", usage)
            for choice in chunk.get("choices") or ():
                if choice.get("text"):
                    chunks += 1
                    if math.isnan(first):
                        first = time.perf_counter()
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    end = time.perf_counter()
    if usage is not None:
        tokens, how = int(usage), "usage"
    elif finish == "length":
        tokens, how = max_tokens, "length"
    else:
        tokens, how = chunks, "chunks"
    return Request(tokens, how, first - start, end - start, finish)


async def run_level(
    client: httpx.AsyncClient, base: str, model: str, level: int, max_tokens: int, numbers: Iterator[int]
) -> Sample:
    texts = [PROMPT.format(number=next(numbers), topic=TOPICS[i % len(TOPICS)]) for i in range(level)]
    results: list[Request | None] = [None] * level

    async def client_task(index: int) -> None:
        results[index] = await stream_one(client, base, model, texts[index], max_tokens)

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(level):
            group.start_soon(client_task, index)
    secs = time.perf_counter() - start
    return Sample([r for r in results if r is not None], secs)


async def session(base: str, levels: tuple[int, ...], max_tokens: int, numbers: Iterator[int]) -> dict[int, Sample]:
    """Warm the server up, then run every client count once."""
    limits = httpx.Limits(max_connections=max(levels) * 2, max_keepalive_connections=max(levels) * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT), limits=limits) as client:
        models = await client.get(base + "/v1/models")
        models.raise_for_status()
        model = models.json()["data"][0]["id"]  # the name the server answers to
        await run_level(client, base, model, 1, 4, numbers)  # page in weights, first graphs
        await run_level(client, base, model, max(levels), 4, numbers)  # every batch size, every pooled connection
        return {level: await run_level(client, base, model, level, max_tokens, numbers) for level in levels}


# -- the run -------------------------------------------------------------------------------


def measure(args: Any, model: Path, names: list[str], max_tokens: int, rounds: int) -> list[Contender]:
    contenders = [Contender(name) for name in names]
    numbers = itertools.count(1)
    with tempfile.TemporaryDirectory(prefix="oxillama-server-bench-") as tmp:
        logs = Path(tmp)
        for round_no in range(rounds):
            for contender in common.rotated(contenders, round_no):
                with running(contender.name, args, model, logs) as (base, argv, startup):
                    contender.command = argv
                    contender.startup_secs.append(startup)
                    samples = anyio.run(session, base, LEVELS, max_tokens, numbers)
                line = []
                for level, sample in samples.items():
                    contender.samples.setdefault(level, []).append(sample)
                    ttft = common.median([r.ttft for r in sample.requests]) * 1000.0
                    line.append(f"{level} clients {sample.tok_per_sec:6.1f} tok/s (ttft p50 {ttft:6.0f} ms)")
                print(
                    f"round {round_no + 1}/{rounds} {contender.name:<16} (up in {startup:4.1f} s): " + ", ".join(line),
                    flush=True,
                )
    return contenders


def analyse(contenders: list[Contender], info: dict[str, Any], args: Any, max_tokens: int, rounds: int) -> dict:
    table: dict[str, Any] = {}
    for contender in contenders:
        per_level: dict[str, Any] = {}
        for level, samples in sorted(contender.samples.items()):
            requests = [r for s in samples for r in s.requests]
            ttfts = [r.ttft * 1000.0 for r in requests if not math.isnan(r.ttft)]
            per_level[str(level)] = {
                "tok_per_sec": common.summary([s.tok_per_sec for s in samples]),
                "wall_secs": common.summary([s.secs for s in samples]),
                "tokens": [s.tokens for s in samples],
                "tokens_per_request": [[r.tokens for r in s.requests] for s in samples],
                "ttft_ms": {
                    "p50": common.percentile(ttfts, 50),
                    "p99": common.percentile(ttfts, 99),
                    "max": max(ttfts) if ttfts else math.nan,
                    "requests": len(ttfts),
                    "without_text": len(requests) - len(ttfts),
                },
                "counted_by": sorted({r.counted_by for r in requests}),
            }
        table[contender.name] = per_level

    def entry(name: str, level: int) -> dict[str, Any] | None:
        return table.get(name, {}).get(str(level))

    def ratio(name: str, other: str, level: int, key: str) -> float:
        mine, theirs = entry(name, level), entry(other, level)
        if mine is None or theirs is None:
            return math.nan
        if key == "tok_per_sec":
            return float(mine["tok_per_sec"]["median"] / theirs["tok_per_sec"]["median"])
        return float(mine["ttft_ms"][key] / theirs["ttft_ms"][key])

    ratios = {
        f"vs_{other}": {
            str(level): {
                "tok_per_sec": ratio(PRIMARY, other, level, "tok_per_sec"),
                "ttft_p50": ratio(PRIMARY, other, level, "p50"),
                "ttft_p99": ratio(PRIMARY, other, level, "p99"),
            }
            for level in LEVELS
        }
        for other in TARGETS
    }
    checks: dict[str, Any] = {}
    for other, target in TARGETS.items():
        value = ratios[f"vs_{other}"][str(TARGET_LEVEL)]["tok_per_sec"]
        checks[f"{PRIMARY}_vs_{other}_{TARGET_LEVEL}"] = {
            "value": value,
            "target": target,
            "verdict": common.verdict(value, target),
        }
    short = [
        f"{c.name} at {level}: {[r.tokens for r in s.requests]}"
        for c in contenders
        for level, samples in c.samples.items()
        for s in samples
        if min(r.tokens for r in s.requests) < max_tokens
    ]
    return {
        "benchmark": "server",
        "mode": "quick" if args.quick else "default",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "levels": list(LEVELS),
        "slots": args.slots,
        "slot_ctx": args.slot_ctx,
        "prompt_template": PROMPT,
        "request": "POST /v1/completions, stream true, temperature 0, stream_options include_usage",
        "machine": info,
        "contenders": {c.name: {"label": LABELS[c.name], "command": c.command} for c in contenders},
        "startup_secs": {c.name: common.summary(c.startup_secs) for c in contenders},
        "results": table,
        "ratios": ratios,
        "checks": checks,
        "all_targets_met": all(c["verdict"] == "PASS" for c in checks.values()),
        "stopped_early": short,
        "warning": common.load_warning(info),
    }


def print_table(data: dict) -> None:
    results, levels = data["results"], data["levels"]
    names = [name for name in CONTENDERS if name in results]
    print()
    print("aggregate tok/s (median over rounds) | time to first token p50 / p99 (ms)")
    print(f"{'contender':<18}" + "".join(f"{f'{n} clients':>24}" for n in levels))
    for name in names:
        cells = []
        for level in levels:
            e = results[name].get(str(level))
            if e is None:
                cells.append(f"{'-':>24}")
                continue
            t = e["ttft_ms"]
            cells.append(f"{e['tok_per_sec']['median']:7.1f} | {t['p50']:5.0f} /{t['p99']:6.0f}".rjust(24))
        print(f"{name:<18}" + "".join(cells))
    print()
    for other in TARGETS:
        per = data["ratios"][f"vs_{other}"]
        cells = ", ".join(f"{level}: {per[str(level)]['tok_per_sec']:.2f}" for level in levels)
        print(f"{PRIMARY} / {other} (tok/s): {cells}")
    print()
    for key, check in data["checks"].items():
        print(f"{key:<36} {check['value']:7.3f}  (target >= {check['target']})  {check['verdict']}")
    if data["stopped_early"]:
        print(f"note: {len(data['stopped_early'])} runs had a request end before max_tokens (counted as streamed)")
    if data["warning"]:
        print(f"NOTE: {data['warning']}")


def plot(data: dict, path: Path) -> None:
    plt = common.pyplot()
    results, levels = data["results"], data["levels"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    styles = {"oxillama": ("#3a7dc9", "o"), "llama_cpp_server": ("#999999", "x"), "llama_server": ("#c0392b", "d")}
    for name in CONTENDERS:
        if name not in results:
            continue
        color, marker = styles[name]
        have = [n for n in levels if str(n) in results[name]]
        tps = [results[name][str(n)]["tok_per_sec"] for n in have]
        left.plot(have, [t["median"] for t in tps], marker + "-", color=color, label=LABELS[name])
        left.fill_between(have, [t["min"] for t in tps], [t["max"] for t in tps], color=color, alpha=0.12)
        ttft = [results[name][str(n)]["ttft_ms"] for n in have]
        middle.plot(have, [t["p50"] for t in ttft], marker + "-", color=color, label=f"{LABELS[name]} p50")
        middle.plot(have, [t["p99"] for t in ttft], marker + "--", color=color, alpha=0.7, label=f"{LABELS[name]} p99")
    for axis in (left, middle, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(n) for n in levels])
        axis.set_xlabel("concurrent streaming clients")
    left.set_ylabel("aggregate tokens / s (median, min-max band)")
    left.set_title(f"greedy, {data['max_tokens']} tokens per request")
    left.legend(fontsize=8)
    middle.set_yscale("log")
    middle.set_ylabel("time to first token (ms)")
    middle.set_title("time to first token, p50 (solid) and p99 (dashed)")
    middle.legend(fontsize=7)
    colors = {"llama_cpp_server": "#555555", "llama_server": "#c0392b"}
    for other, target in TARGETS.items():
        per = data["ratios"][f"vs_{other}"]
        values = [per[str(n)]["tok_per_sec"] for n in levels]
        if all(math.isnan(v) for v in values):
            continue
        right.plot(levels, values, "o-", color=colors[other], label=f"/ {LABELS[other]}")
        right.axhline(target, color=colors[other], linestyle="--", linewidth=0.9, label=f"target at 8: {target}")
    right.axhline(1.0, color="#777777", linewidth=0.8)
    right.set_ylabel("oxillama_py server / other server (aggregate tok/s)")
    right.set_title("ratios", fontsize=10)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    info = data["machine"]
    fig.suptitle(
        f"OpenAI-compatible servers, {LABELS[PRIMARY]} {info['oxillama_py']} vs llama-cpp-python "
        f"{info['llama_cpp_python']} server and llama-server (same llama.cpp), {data['slots']} slots, "
        f"{info['threads']} threads, {data['rounds']} rounds ({data['mode']})",
        fontsize=10,
    )
    common.save_figure(fig, path, dpi=110)


def main() -> int:
    parser = common.base_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 64, quick 16)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default 3, quick 1)")
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help="comma-separated contenders to run: " + ", ".join(CONTENDERS)
    )
    parser.add_argument("--slots", type=int, default=8, help="slots of oxillama's server and of llama-server")
    parser.add_argument("--slot-ctx", type=int, default=2048, help="KV cells per slot (n_ctx = slots * this)")
    parser.add_argument(
        "--backend",
        choices=("asyncio", "uvloop", "trio"),
        default=None,
        help="event loop of oxillama_py's server (default: the server's own default)",
    )
    parser.add_argument("--llama-server", type=Path, default=None, help="llama-server binary (default: build it)")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        parser.error(f"--only: unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
    names = [name for name in CONTENDERS if name in names]
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    rounds = args.rounds or (1 if args.quick else 3)
    model = common.resolve_model(args.model)
    started = time.perf_counter()
    info = common.machine_info(args.threads, model)
    info["backend"] = args.backend
    args.llama_server_binary = None
    if "llama_server" in names:
        args.llama_server_binary = llama_server_binary(args.llama_server)
        version = subprocess.run(
            [str(args.llama_server_binary), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        info["llama_server"] = str(args.llama_server_binary)
        info["llama_server_version"] = (version.stdout + version.stderr).strip()
    print(
        f"model {model.name}, {args.threads} threads, {args.slots} slots of {args.slot_ctx} cells, "
        f"{max_tokens} tokens per request, {rounds} rounds, contenders {', '.join(names)}",
        flush=True,
    )
    contenders = measure(args, model, names, max_tokens, rounds)
    common.finish_info(info, started)
    data = analyse(contenders, info, args, max_tokens, rounds)
    print_table(data)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "server.json", data)
    plot(data, args.out / "server.png")
    print(f"wrote {args.out / 'server.json'} and {args.out / 'server.png'}")
    return 0 if data["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
