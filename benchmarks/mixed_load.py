"""Running streams while a long prompt arrives: their inter-token gaps, and the long prompt's time to first token.

Contenders, targets and how to read the numbers: ``benchmarks/README.md``. Writes ``results/mixed_load.json``/``.png``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import harness as h
import httpx

STREAM_TEMPLATE = "List of one hundred interesting facts about {topic}:\n1."
TOPICS = ("the ocean", "volcanoes", "honey bees", "the moon", "railways", "glaciers", "owls", "copper")
WORDS = (  # noqa: SIM905
    "the report notes that river trade grew along the valley while the council kept records of every "
    "harvest market bridge and tax so later readers could follow how towns changed over two centuries"
).split()
SETUPS = {
    "engine": "engine, bounded prefill (default)",
    "engine_whole_batch": "engine, whole batch per step",
    "server": "server, bounded prefill (default)",
}
GAP_TARGET = 3.0  # running streams' p99 gap during the long prefill / their median gap
TTFT_TARGET = 1.3  # the long prompt's time to first token under load / on an idle engine
UNBOUNDED_MS = 3_600_000.0  # a step target no step reaches: prompts take the whole batch, as before


def long_prompt(index: int, tokens: int) -> str:
    """A pasted document of about ``tokens`` tokens, different for every ``index`` (no prefix is shared)."""
    rng = random.Random(index)
    words = [rng.choice(WORDS) for _ in range(int(tokens * 0.93))]
    return f"Document {index}.\n" + " ".join(words) + "\n\nSummarise the document in one sentence:"


Pieces = Callable[[str, int], AbstractAsyncContextManager[AsyncIterator[Any]]]


async def scenario(pieces: Pieces, long_text: str, n_streams: int, max_tokens: int, warm_tokens: int) -> dict[str, Any]:
    """``n_streams`` greedy streams; once each has ``warm_tokens``, the long prompt; the streams stop after it."""
    arrivals: list[list[float]] = [[] for _ in range(n_streams)]
    warm = anyio.Event()
    done = anyio.Event()
    marks: dict[str, float] = {}

    ended = [False] * n_streams

    async def stream(index: int) -> None:
        try:
            async with pieces(STREAM_TEMPLATE.format(topic=TOPICS[index % len(TOPICS)]), max_tokens) as events:
                async for _ in events:
                    arrivals[index].append(time.perf_counter())
                    if all(len(a) >= warm_tokens or end for a, end in zip(arrivals, ended, strict=True)):
                        warm.set()
                    if done.is_set():
                        return
        finally:  # a stream that ended early (at an end of generation) holds nothing back
            ended[index] = True
            if all(len(a) >= warm_tokens or end for a, end in zip(arrivals, ended, strict=True)):
                warm.set()

    async def long_one() -> None:
        await warm.wait()
        marks["submitted"] = time.perf_counter()
        async with pieces(long_text, 4) as events:
            async for _ in events:
                marks.setdefault("first", time.perf_counter())
        await anyio.sleep(1.0)  # the streams' pace after the prefill, for the plot
        done.set()

    async with anyio.create_task_group() as tg:
        for index in range(n_streams):
            tg.start_soon(stream, index)
        tg.start_soon(long_one)
    return {"arrivals": arrivals, **marks}


def gaps(result: dict[str, Any]) -> dict[str, Any]:
    """The streams' gaps before the long prompt (steady) and those ending inside its prefill (the window)."""
    submitted, first = result["submitted"], result["first"]
    steady: list[float] = []
    window: list[float] = []
    for times in result["arrivals"]:
        for before, after in zip(times, times[1:], strict=False):
            if after <= submitted:
                steady.append(after - before)
            elif after <= first + 0.001 or before < first:
                window.append(after - before)
    median = h.median(steady)
    return {
        "steady_p50_ms": median * 1000,
        "window_p50_ms": h.percentile(window, 50) * 1000,
        "window_p99_ms": h.percentile(window, 99) * 1000,
        "window_max_ms": max(window, default=float("nan")) * 1000,
        "window_gaps": len(window),
        "p99_over_median": h.percentile(window, 99) / median if median else float("nan"),
        "tokens_during_prefill": len(window),
        "ttft_secs": first - submitted,
    }


async def first_token_secs(pieces: Pieces, text: str) -> float:
    began = time.perf_counter()
    async with pieces(text, 4) as events:
        async for _ in events:
            return time.perf_counter() - began
    return time.perf_counter() - began


def engine_pieces(engine: Any) -> Pieces:
    @asynccontextmanager
    async def pieces(prompt: str, max_tokens: int) -> AsyncIterator[AsyncIterator[Any]]:
        async with aclosing(engine.stream(prompt, max_tokens, temperature=0)) as stream:
            yield stream

    return pieces


def server_pieces(client: httpx.AsyncClient, base: str, model: str) -> Pieces:
    @asynccontextmanager
    async def pieces(prompt: str, max_tokens: int) -> AsyncIterator[AsyncIterator[Any]]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
            response.raise_for_status()

            async def chunks() -> AsyncIterator[str]:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield line

            yield chunks()

    return pieces


async def measure(pieces: Pieces, run: h.Run, round_no: int, key: str) -> dict[str, Any]:
    """The long prompt on the idle engine, then under load (each its own text: nothing comes from a cache)."""
    tokens, salt = run.args.long_tokens, 1000 * round_no + 10 * list(SETUPS).index(key)
    idle = await first_token_secs(pieces, long_prompt(salt, tokens))
    loaded = await scenario(pieces, long_prompt(salt + 1, tokens), run.args.streams, 2000, 8)
    out = gaps(loaded)
    out["idle_ttft_secs"] = idle
    out["ttft_over_idle"] = out["ttft_secs"] / idle
    h.say(
        f"  {key:<20} gaps p50 {out['steady_p50_ms']:6.0f} ms, during prefill p99 {out['window_p99_ms']:6.0f} ms "
        f"({out['p99_over_median']:4.1f}x); long prompt TTFT {out['ttft_secs']:5.1f} s vs idle {idle:5.1f} s "
        f"({out['ttft_over_idle']:4.2f}x)"
    )
    return out


def run_engine(run: h.Run, key: str, round_no: int) -> dict[str, Any]:
    from oxillama_py import AsyncEngine, EngineConfig

    target = UNBOUNDED_MS if key == "engine_whole_batch" else None
    config = EngineConfig(run.model, n_threads=run.args.threads, prefix_cache_tokens=0, step_target_ms=target)

    async def main() -> dict[str, Any]:
        async with AsyncEngine(config) as engine:
            await engine.generate("Hello", 8, temperature=0)  # warm-up
            return await measure(engine_pieces(engine), run, round_no, key)

    return anyio.run(main)


def run_server(run: h.Run, key: str, round_no: int) -> dict[str, Any]:
    import server as srv  # benchmarks/server.py: starting a server process and waiting until it is ready

    argv = [sys.executable, "-m", "oxillama_py", "serve", "--model", str(run.model), "--prefix-cache-tokens", "0"]
    argv += ["--threads", str(run.args.threads)]

    def command_at(port: int) -> tuple[list[str], str]:
        return [*argv, "--host", "127.0.0.1", "--port", str(port)], "/health"

    async def main(base: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            model = (await client.get(f"{base}/v1/models")).json()["data"][0]["id"]
            warm = {"model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0}
            (await client.post(f"{base}/v1/completions", json=warm)).raise_for_status()
            return await measure(server_pieces(client, base, model), run, round_no, key)

    with tempfile.TemporaryDirectory(prefix="oxillama-mixed-") as tmp, srv.running(key, command_at, Path(tmp)) as up:
        return anyio.run(main, up[0])


def raw_idle_ttft(run: h.Run) -> float:
    """llama-cpp-python's own time to first token for a long prompt of the same size (the reference)."""
    llm = h.llama(run.model, run.args.threads, 8192)
    llm.create_completion("Hello", max_tokens=2, temperature=0)
    llm.reset()
    began = time.perf_counter()
    for _ in llm.create_completion(long_prompt(99_999, run.args.long_tokens), max_tokens=4, temperature=0, stream=True):
        break
    secs = time.perf_counter() - began
    del llm
    return secs


RUNNERS: dict[str, Callable[[h.Run, str, int], dict[str, Any]]] = {
    "engine": run_engine,
    "engine_whole_batch": run_engine,
    "server": run_server,
}


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=8, help="streams decoding when the long prompt arrives")
    parser.add_argument("--long-tokens", type=int, default=None, help="tokens of the long prompt (default 3500)")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated: " + ", ".join(SETUPS))


def main() -> int:
    run = h.start("mixed_load", __doc__, rounds=(2, 1), arguments=arguments)
    run.args.long_tokens = run.args.long_tokens or (1500 if run.args.quick else 3500)
    keys = [key for key in run.args.setups.split(",") if key]
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    raw: list[float] = []
    for round_no, _, order in h.schedule(run.rounds, [None], keys):
        for key in order:
            results[key].append(RUNNERS[key](run, key, round_no))
        raw.append(raw_idle_ttft(run))
        h.say(f"  llama-cpp-python     long prompt TTFT {raw[-1]:5.1f} s (idle)")
    run.stop()
    data: dict[str, Any] = {
        **run.header(),
        "settings": {"streams": run.args.streams, "long_prompt_tokens": run.args.long_tokens, "setups": keys},
        "results": {key: {name: h.median([r[name] for r in rs]) for name in rs[0]} for key, rs in results.items()},
        "samples": results,
        "raw_idle_ttft_secs": h.summary(raw),
    }
    checks: dict[str, Any] = {}
    for key in ("engine", "server"):
        if key in data["results"]:
            r = data["results"][key]
            checks[f"{key}: p99 gap in prefill / p50 gap"] = h.check(r["p99_over_median"], GAP_TARGET, below=True)
            checks[f"{key}: long prompt TTFT / idle"] = h.check(r["ttft_over_idle"], TTFT_TARGET, below=True)
    data["checks"] = checks
    run.report(data)
    return 0 if h.all_pass(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
