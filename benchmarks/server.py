"""Concurrent streaming clients against three OpenAI-compatible servers on the same model (ours on two backends).

Contenders, targets and how to read the numbers: ``benchmarks/README.md``. Writes ``results/server.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import harness as h
import httpx
from batching import TOPICS
from figures import Server

LEVELS = (1, 4, 8, 16)
CONTENDERS = ("oxillama", "oxillama_trio", "engine", "llama_cpp_server", "llama_server")
PRIMARY = "oxillama"
TRIO = "oxillama_trio"  # the same server on hypercorn + trio
ENGINE = "engine"  # the same requests on the in-process AsyncEngine (one batch each), no HTTP
TARGETS = {"llama_cpp_server": 2.5, "llama_server": 1.0}  # oxillama / contender, aggregate tok/s at 8 clients
TARGET_LEVEL = 8
ENGINE_TARGETS = {8: 0.97, 16: 0.95}  # oxillama / engine, aggregate tok/s
TRIO_RATE, TRIO_P99 = 0.9, 1.5  # trio / asyncio: throughput at least, p99 latency below
MIXED = "32 mixed"
"""The mixed load (our server on both backends only): 32 clients at once, every other one a chat,
every fourth one leaving after half its tokens."""
MIXED_CLIENTS = 32
PROMPT = "Request {number}. List of one hundred interesting facts about {topic}:\n1."
READY_TIMEOUT = 300.0
REQUEST_TIMEOUT = 900.0
BUILD_SCRIPT = h.HERE / "build_llama_server.sh"


def requests_of(sample: h.Sample) -> list[h.Sample]:
    """The requests of one client count's run: each a ``Sample`` with ``ttft``, ``counted_by`` and ``finish``."""
    requests: list[h.Sample] = sample.extra["requests"]
    return requests


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
    h.say(f"llama-server: bash {BUILD_SCRIPT.relative_to(h.HERE.parent)} (builds it once, ~10 min)")
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"building llama-server failed (exit {out.returncode}); see the output above")
    return Path(out.stdout.strip().splitlines()[-1])


def command(name: str, args: Any, model: Path, port: int) -> tuple[list[str], str]:
    """The command line that starts contender ``name`` on ``port``, and the path that says it is ready."""
    threads, slots, slot_ctx = str(args.threads), args.slots, args.slot_ctx
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name in (PRIMARY, TRIO):  # its default slots and context (16 slots of 1024 cells)
        argv = [sys.executable, "-m", "oxillama_py", "serve", "--model", str(model), *host, "--log-level", "info"]
        argv += ["--threads", threads, "--log-format", "json"]
        backend = "trio" if name == TRIO else args.backend
        return [*argv, *(["--backend", backend] if backend else [])], "/health"
    if name == "llama_cpp_server":
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), *host]
        argv += ["--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", str(slot_ctx)]
        return [*argv, "--interrupt_requests", "false"], "/v1/models"
    argv = [str(args.llama_server_binary), "-m", str(model), *host, "-t", threads, "-tb", threads]
    return [*argv, "-np", str(slots), "-c", str(slots * slot_ctx), "-fa", "off"], "/health"


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


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) if path.is_file() else ""


@contextmanager
def running(
    name: str, command_at: Callable[[int], tuple[list[str], str]], logs: Path, stop_secs: float = 20
) -> Iterator[tuple[str, list[str], float]]:
    """Start ``command_at(port)``, wait until it is ready; yield its base URL, command and start-up seconds."""
    port = free_port()
    argv, ready_path = command_at(port)
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
            process.terminate()  # the Ray set-up takes its app and its Ray instance down on SIGTERM
            try:
                process.wait(timeout=stop_secs)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def stream_one(
    client: httpx.AsyncClient,
    base: str,
    model: str,
    prompt: str,
    max_tokens: int,
    chat: bool = False,
    leave_after: int | None = None,
) -> h.Sample:
    """One streamed request; tokens as the server's ``usage`` counts them, else as ``max_tokens`` or the chunks.

    ``chat``: the prompt as a user message to ``/v1/chat/completions``; ``leave_after``: close the stream
    after that many text chunks (those are its tokens).
    """
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body |= {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    body["stream_options"] = {"include_usage": True}
    first, chunks, usage, finish = math.nan, 0, None, None
    start = time.perf_counter()
    url = base + ("/v1/chat/completions" if chat else "/v1/completions")
    async with client.stream("POST", url, json=body) as response:
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
                if choice.get("text") or (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if math.isnan(first):
                        first = time.perf_counter()
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if leave_after is not None and chunks >= leave_after:
                finish = "left"
                break
    end = time.perf_counter()
    if finish == "left":
        return h.Sample(end - start, [chunks], extra={"counted_by": "chunks", "ttft": first - start, "finish": finish})
    tokens, how = (
        (usage, "usage") if usage is not None else (max_tokens, "length") if finish == "length" else (chunks, "chunks")
    )
    return h.Sample(end - start, [int(tokens)], extra={"counted_by": how, "ttft": first - start, "finish": finish})


async def run_level(
    client: httpx.AsyncClient, base: str, model: str, level: int, max_tokens: int, numbers: Iterator[int]
) -> h.Sample:
    texts = [PROMPT.format(number=next(numbers), topic=TOPICS[i % len(TOPICS)]) for i in range(level)]
    results: list[h.Sample | None] = [None] * level

    async def client_task(index: int) -> None:
        results[index] = await stream_one(client, base, model, texts[index], max_tokens)

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(level):
            group.start_soon(client_task, index)
    secs = time.perf_counter() - start
    requests = [r for r in results if r is not None]
    return h.Sample(secs, [r.tokens for r in requests], extra={"requests": requests})


async def run_mixed(
    client: httpx.AsyncClient, base: str, model: str, max_tokens: int, numbers: Iterator[int]
) -> h.Sample:
    """:data:`MIXED`: 32 clients at once, odd ones chats, every fourth leaving after half its tokens."""
    results: list[h.Sample | None] = [None] * MIXED_CLIENTS

    async def client_task(index: int, prompt: str) -> None:
        leave = max(1, max_tokens // 2) if index % 4 == 3 else None
        results[index] = await stream_one(client, base, model, prompt, max_tokens, index % 2 == 1, leave)

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(MIXED_CLIENTS):
            prompt = PROMPT.format(number=next(numbers), topic=TOPICS[index % len(TOPICS)])
            group.start_soon(client_task, index, prompt)
    secs = time.perf_counter() - start
    requests = [r for r in results if r is not None]
    return h.Sample(secs, [r.tokens for r in requests], extra={"requests": requests})


async def session(
    base: str, levels: Sequence[int], max_tokens: int, numbers: Iterator[int], mixed: bool = False
) -> dict[Any, h.Sample]:
    """Warm the server up, then run every client count once (and the mixed load, when asked)."""
    limits = httpx.Limits(max_connections=max(levels) * 2, max_keepalive_connections=max(levels) * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT), limits=limits) as client:
        models = await client.get(base + "/v1/models")
        models.raise_for_status()
        model = models.json()["data"][0]["id"]  # the name the server answers to
        await run_level(client, base, model, 1, 4, numbers)  # page in weights, first graphs
        await run_level(client, base, model, max(levels), 4, numbers)  # every batch size, every pooled connection
        out: dict[Any, h.Sample] = {}
        for level in levels:
            out[level] = await run_level(client, base, model, level, max_tokens, numbers)
        if mixed:
            out[MIXED] = await run_mixed(client, base, model, max_tokens, numbers)
        return out


async def engine_session(
    model: Path, threads: int, levels: Sequence[int], max_tokens: int, numbers: Iterator[int]
) -> dict[Any, h.Sample]:
    """The same requests on the in-process engine with the server's default config: each client count one batch."""
    from oxillama_py import AsyncEngine, EngineConfig

    def texts(level: int) -> list[str]:
        return [PROMPT.format(number=next(numbers), topic=TOPICS[i % len(TOPICS)]) for i in range(level)]

    out: dict[Any, h.Sample] = {}
    async with AsyncEngine(EngineConfig(model, n_threads=threads)) as engine:
        await engine.complete_batch(texts(1), 4, temperature=0)
        await engine.complete_batch(texts(max(levels)), 4, temperature=0)
        for level in levels:
            start = time.perf_counter()
            results = await engine.complete_batch(texts(level), max_tokens, temperature=0)
            secs = time.perf_counter() - start
            requests = [
                h.Sample(
                    r.timings.total_secs,
                    [r.completion_tokens],
                    extra={"counted_by": "usage", "ttft": r.timings.queued_secs + r.timings.prompt_secs},
                )
                for r in results
            ]
            out[level] = h.Sample(secs, [r.tokens for r in requests], extra={"requests": requests})
    return out


def measure(
    run: h.Run,
    names: Sequence[str],
    command_at: Callable[[str, int], tuple[list[str], str]],
    levels: Sequence[int],
    stop_secs: float = 20,
    mixed: Sequence[str] = (),
    in_process: dict[str, Callable[[Sequence[int], Iterator[int]], dict[Any, h.Sample]]] | None = None,
) -> tuple[list[h.Contender], dict[str, Any]]:
    """Rounds of: each server in turn started, warmed up, run at every client count, stopped.

    The servers named in ``mixed`` also run the mixed load; a name in ``in_process`` is no server: its function
    runs the client counts in this process.
    """
    in_process = in_process or {}
    numbers = itertools.count(1)
    startup: dict[str, list[float]] = {name: [] for name in names}
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="oxillama-server-bench-") as tmp:

        def serve(name: str) -> dict[Any, h.Sample]:
            if name in in_process:
                return in_process[name](levels, numbers)
            with running(name, functools.partial(command_at, name), Path(tmp), stop_secs) as (base, argv, secs):
                commands[name] = argv
                startup[name].append(secs)
                return anyio.run(session, base, levels, run.max_tokens, numbers, name in mixed)

        contenders = [h.Contender(name, serve) for name in names]
        for _, _, order in h.schedule(run.rounds, [None], contenders):
            for contender in order:
                for level, sample in contender.run(contender.name).items():
                    contender.record(level, sample)
    starts = {name: h.summary(startup[name]) for name in names if name not in in_process}
    return contenders, {"commands": commands, "startup_secs": starts}


def analyse(run: h.Run, contenders: list[h.Contender], servers: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {c.name: {} for c in contenders}
    for contender in contenders:
        for level, samples in sorted(contender.samples.items(), key=lambda item: str(item[0]).zfill(8)):
            requests = [r for s in samples for r in requests_of(s)]
            ttfts = [r.extra["ttft"] * 1000.0 for r in requests if not math.isnan(r.extra["ttft"])]
            ttft = {**h.spread(ttfts), "requests": len(ttfts), "without_text": len(requests) - len(ttfts)}
            counted_by = sorted({r.extra["counted_by"] for r in requests})
            latency = h.spread([r.secs for r in requests])  # each request's wall seconds, queueing included
            per_sec = h.summary([len(requests_of(s)) / s.secs for s in samples])
            extra = {"ttft_ms": ttft, "counted_by": counted_by, "latency_secs": latency, "requests_per_sec": per_sec}
            table[contender.name][str(level)] = h.entry(samples) | extra

    def ratio(other: str, level: int, key: str) -> float:
        mine, theirs = table.get(PRIMARY, {}).get(str(level)), table.get(other, {}).get(str(level))
        if mine is None or theirs is None:
            return math.nan
        if key == "tok_per_sec":
            return float(mine["tok_per_sec"]["median"] / theirs["tok_per_sec"]["median"])
        return float(mine["ttft_ms"][key] / theirs["ttft_ms"][key])

    keys = {"tok_per_sec": "tok_per_sec", "ttft_p50": "p50", "ttft_p99": "p99"}
    ratios = {f"vs_{o}": {str(n): {k: ratio(o, n, v) for k, v in keys.items()} for n in LEVELS} for o in TARGETS}
    ratios[f"vs_{ENGINE}"] = {str(n): {"tok_per_sec": ratio(ENGINE, n, "tok_per_sec")} for n in LEVELS}

    def trio(key: str) -> dict[str, float]:
        """trio / asyncio at one load: throughput (tokens and requests) and p99 request latency."""
        mine, theirs = table.get(TRIO, {}).get(key), table.get(PRIMARY, {}).get(key)
        if mine is None or theirs is None:
            return {"tok_per_sec": math.nan, "requests_per_sec": math.nan, "latency_p99": math.nan}
        return {
            "tok_per_sec": mine["tok_per_sec"]["median"] / theirs["tok_per_sec"]["median"],
            "requests_per_sec": mine["requests_per_sec"]["median"] / theirs["requests_per_sec"]["median"],
            "latency_p99": mine["latency_secs"]["p99"] / theirs["latency_secs"]["p99"],
        }

    ratios["trio_vs_asyncio"] = {key: trio(key) for key in [*map(str, LEVELS), MIXED]}
    checks = {
        f"{PRIMARY}_vs_{other}_{TARGET_LEVEL}": h.check(ratios[f"vs_{other}"][str(TARGET_LEVEL)]["tok_per_sec"], target)
        for other, target in TARGETS.items()
    }
    for level, target in ENGINE_TARGETS.items():
        checks[f"{PRIMARY}_vs_{ENGINE}_{level}"] = h.check(ratios[f"vs_{ENGINE}"][str(level)]["tok_per_sec"], target)
    for key, tag in ((str(max(LEVELS)), str(max(LEVELS))), (MIXED, "mixed")):
        trio_ratios = ratios["trio_vs_asyncio"][key]
        rate = "requests_per_sec" if key == MIXED else "tok_per_sec"
        checks[f"trio_vs_asyncio_{rate}_{tag}"] = h.check(trio_ratios[rate], TRIO_RATE)
        checks[f"trio_vs_asyncio_latency_p99_{tag}"] = h.check(trio_ratios["latency_p99"], TRIO_P99, below=True)
    checks = {name: c for name, c in checks.items() if not math.isnan(c["value"])}  # contenders left out: no check
    return {
        **run.header(),
        "levels": list(LEVELS),
        "scenarios": [*map(str, LEVELS), MIXED],
        "mixed": f"{MIXED_CLIENTS} clients at once, odd ones chats, every fourth leaves after half its tokens",
        "slots": run.args.slots,
        "oxillama_slots": servers.get("oxillama_slots"),
        "slot_ctx": run.args.slot_ctx,
        "prompt_template": PROMPT,
        "request": "POST /v1/completions, stream true, temperature 0, stream_options include_usage",
        "contenders": {n: {"label": Server.labels[n], "command": argv} for n, argv in servers["commands"].items()},
        "startup_secs": servers["startup_secs"],
        "results": table,
        "ratios": ratios,
        "checks": checks,
        "all_targets_met": h.all_pass(checks),
        "stopped_early": [
            line for line in h.stopped_early(contenders, run.max_tokens) if f" at {MIXED}:" not in line
        ],  # the mixed load's leavers stop early on purpose
    }


def contender_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
    return [name for name in CONTENDERS if name in names]


def arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--only", type=contender_list, default=",".join(CONTENDERS), help="comma-separated contenders to run")
    add("--slots", type=int, default=8, help="slots of llama-server (oxillama_py's server runs its defaults)")
    add("--slot-ctx", type=int, default=2048, help="KV cells per llama-server slot (n_ctx = slots * this)")
    backends = ("asyncio", "uvloop", "trio")
    add("--backend", choices=backends, default=None, help="event loop of oxillama_py's server (default: its own)")
    add("--llama-server", type=Path, default=None, help="llama-server binary (default: build it)")


def main() -> int:
    run = h.start("server", __doc__, rounds=(3, 1), max_tokens=(64, 16), arguments=arguments)
    args = run.args
    names: list[str] = args.only
    run.info["backend"] = args.backend
    args.llama_server_binary = None
    if "llama_server" in names:
        binary = args.llama_server_binary = llama_server_binary(args.llama_server)
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False)
        run.info |= {"llama_server": str(binary), "llama_server_version": (version.stdout + version.stderr).strip()}
    h.say(f"{args.slots} slots of {args.slot_ctx} cells, contenders {', '.join(names)}")

    def engine(levels: Sequence[int], numbers: Iterator[int]) -> dict[Any, h.Sample]:
        return anyio.run(engine_session, run.model, args.threads, levels, run.max_tokens, numbers)

    contenders, servers = measure(
        run,
        names,
        lambda name, port: command(name, args, run.model, port),
        LEVELS,
        mixed=(PRIMARY, TRIO),
        in_process={ENGINE: engine},
    )
    from oxillama_py import EngineConfig

    servers["oxillama_slots"] = EngineConfig().max_concurrency  # the default the server runs with
    run.stop()
    data = analyse(run, contenders, servers)
    run.report(data, [f"stopped early: {len(data['stopped_early'])} runs"])
    return 0 if data["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
