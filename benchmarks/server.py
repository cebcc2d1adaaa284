"""Concurrent streaming clients against three OpenAI-compatible servers on the same model.

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
CONTENDERS = ("oxillama", "llama_cpp_server", "llama_server")
PRIMARY = "oxillama"
TARGETS = {"llama_cpp_server": 2.5, "llama_server": 1.0}  # oxillama / contender, aggregate tok/s at 8 clients
TARGET_LEVEL = 8
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
    if name == "oxillama":
        argv = [sys.executable, "-m", "oxillama_py", "serve", "--model", str(model), *host, "--log-level", "info"]
        argv += ["--max-concurrency", str(slots), "--threads", threads, "--n-ctx", str(slots * slot_ctx)]
        return [*argv, "--log-format", "json", *(["--backend", args.backend] if args.backend else [])], "/health"
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


async def stream_one(client: httpx.AsyncClient, base: str, model: str, prompt: str, max_tokens: int) -> h.Sample:
    """One streamed request; tokens as the server's ``usage`` counts them, else as ``max_tokens`` or the chunks."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    first, chunks, usage, finish = math.nan, 0, None, None
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


async def session(base: str, levels: Sequence[int], max_tokens: int, numbers: Iterator[int]) -> dict[int, h.Sample]:
    """Warm the server up, then run every client count once."""
    limits = httpx.Limits(max_connections=max(levels) * 2, max_keepalive_connections=max(levels) * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT), limits=limits) as client:
        models = await client.get(base + "/v1/models")
        models.raise_for_status()
        model = models.json()["data"][0]["id"]  # the name the server answers to
        await run_level(client, base, model, 1, 4, numbers)  # page in weights, first graphs
        await run_level(client, base, model, max(levels), 4, numbers)  # every batch size, every pooled connection
        return {level: await run_level(client, base, model, level, max_tokens, numbers) for level in levels}


def measure(
    run: h.Run,
    names: Sequence[str],
    command_at: Callable[[str, int], tuple[list[str], str]],
    levels: Sequence[int],
    stop_secs: float = 20,
) -> tuple[list[h.Contender], dict[str, Any]]:
    """Rounds of: each server in turn started, warmed up, run at every client count, stopped."""
    numbers = itertools.count(1)
    startup: dict[str, list[float]] = {name: [] for name in names}
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="oxillama-server-bench-") as tmp:

        def serve(name: str) -> dict[int, h.Sample]:
            with running(name, functools.partial(command_at, name), Path(tmp), stop_secs) as (base, argv, secs):
                commands[name] = argv
                startup[name].append(secs)
                return anyio.run(session, base, levels, run.max_tokens, numbers)

        contenders = [h.Contender(name, serve) for name in names]
        for _, _, order in h.schedule(run.rounds, [None], contenders):
            for contender in order:
                for level, sample in contender.run(contender.name).items():
                    contender.record(level, sample)
    return contenders, {"commands": commands, "startup_secs": {name: h.summary(startup[name]) for name in names}}


def analyse(run: h.Run, contenders: list[h.Contender], servers: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {c.name: {} for c in contenders}
    for contender in contenders:
        for level, samples in sorted(contender.samples.items()):
            requests = [r for s in samples for r in requests_of(s)]
            ttfts = [r.extra["ttft"] * 1000.0 for r in requests if not math.isnan(r.extra["ttft"])]
            ttft = {**h.spread(ttfts), "requests": len(ttfts), "without_text": len(requests) - len(ttfts)}
            counted_by = sorted({r.extra["counted_by"] for r in requests})
            table[contender.name][str(level)] = h.entry(samples) | {"ttft_ms": ttft, "counted_by": counted_by}

    def ratio(other: str, level: int, key: str) -> float:
        mine, theirs = table.get(PRIMARY, {}).get(str(level)), table.get(other, {}).get(str(level))
        if mine is None or theirs is None:
            return math.nan
        if key == "tok_per_sec":
            return float(mine["tok_per_sec"]["median"] / theirs["tok_per_sec"]["median"])
        return float(mine["ttft_ms"][key] / theirs["ttft_ms"][key])

    keys = {"tok_per_sec": "tok_per_sec", "ttft_p50": "p50", "ttft_p99": "p99"}
    ratios = {f"vs_{o}": {str(n): {k: ratio(o, n, v) for k, v in keys.items()} for n in LEVELS} for o in TARGETS}
    checks = {
        f"{PRIMARY}_vs_{other}_{TARGET_LEVEL}": h.check(ratios[f"vs_{other}"][str(TARGET_LEVEL)]["tok_per_sec"], target)
        for other, target in TARGETS.items()
    }
    return {
        **run.header(),
        "levels": list(LEVELS),
        "slots": run.args.slots,
        "slot_ctx": run.args.slot_ctx,
        "prompt_template": PROMPT,
        "request": "POST /v1/completions, stream true, temperature 0, stream_options include_usage",
        "contenders": {n: {"label": Server.labels[n], "command": argv} for n, argv in servers["commands"].items()},
        "startup_secs": servers["startup_secs"],
        "results": table,
        "ratios": ratios,
        "checks": checks,
        "all_targets_met": h.all_pass(checks),
        "stopped_early": h.stopped_early(contenders, run.max_tokens),
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
    add("--slots", type=int, default=8, help="slots of oxillama's server and of llama-server")
    add("--slot-ctx", type=int, default=2048, help="KV cells per slot (n_ctx = slots * this)")
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
    contenders, servers = measure(run, names, lambda name, port: command(name, args, run.model, port), LEVELS)
    run.stop()
    data = analyse(run, contenders, servers)
    run.report(data, [f"stopped early: {len(data['stopped_early'])} runs"])
    return 0 if data["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
