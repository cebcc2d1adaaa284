"""Prefix-aware routing on Ray Serve: chat users with their own system prompts, one process against two replicas.

Set-ups, targets and how to read the numbers: ``benchmarks/README.md``. Writes ``results/routing.json`` and ``.png``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import harness as h
import httpx
from batching import TOPICS
from server import running

SETUPS = ("process", "pow2", "prefix")
USERS, TURNS, CLIENTS = 8, 6, 16
THINK = 2.0  # seconds a user may read before the next turn (uniform, seeded)
CTX, CACHE = 16384, 8192  # per replica; the one process has twice both (the same memory in all)
# The cache holds the working set (8 users x ~1,000 tokens, half of them per replica): what is
# measured is where the router sends a conversation, not how a too small cache evicts it.
TARGETS = {"hit_share": 0.85, "ttft_p50": 1.3, "unique_tok_per_sec": 0.9}


def command(name: str, model: Path, port: int) -> tuple[list[str], str]:
    """The command line of set-up ``name`` on ``port``, and the path that says it is ready."""
    argv = [sys.executable, "-m", "oxillama_py", "serve", "--model", str(model), "--port", str(port)]
    argv += ["--max-concurrency", "8", "--no-prefix-cache-exact"]  # users take turns: keep what they decoded together
    if name == "process":
        return [*argv, "--threads", "2", "--n-ctx", str(2 * CTX), "--prefix-cache-tokens", str(2 * CACHE)], "/health"
    ray = ["--ray", "--replicas", "2", "--num-cpus", "1", "--threads", "1", "--router", name]
    return [*argv, *ray, "--n-ctx", str(CTX), "--prefix-cache-tokens", str(CACHE)], "/health"


def system_prompt(user: int, round_no: int) -> str:
    """About 800 tokens of its own per user (and per round: a round finds no cache of the one before)."""
    topic = TOPICS[user % len(TOPICS)]
    rules = " ".join(
        f"Guideline {k} of {user}.{round_no}: when the question touches {topic}, give one concrete detail, "
        f"name a source of type {k % 7}, and keep it under {20 + k} words."
        for k in range(19)
    )
    return f"Session {round_no * 100 + user}. You are assistant {user}, an expert on {topic}. {rules}"


async def turn(client: httpx.AsyncClient, base: str, messages: list[dict[str, str]], max_tokens: int) -> h.Sample:
    """One streamed chat turn: ``ttft``, ``prompt`` and ``cached`` tokens in ``extra``, the answer in ``texts``."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    start, first, text, usage = time.perf_counter(), math.nan, "", {}
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        replica = response.headers.get("x-oxillama-replica", "process")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                if choice["delta"].get("content"):
                    first = time.perf_counter() if math.isnan(first) else first
                    text += choice["delta"]["content"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    extra = {"ttft": first - start, "prompt": usage["prompt_tokens"], "cached": cached, "replica": replica}
    return h.Sample(time.perf_counter() - start, [usage["completion_tokens"]], [text], extra)


async def chats(client: httpx.AsyncClient, base: str, round_no: int, max_tokens: int) -> h.Sample:
    """``USERS`` users at once, each ``TURNS`` turns one after the other; every turn in ``extra["turns"]``."""
    turns: list[h.Sample] = []

    async def user(number: int) -> None:
        # Users are not in lockstep: each starts and reads for its own (seeded) while, or a router that
        # balances load would keep a user on one replica by the accident of arrival order.
        pause = random.Random(round_no * 1000 + number)
        messages = [{"role": "system", "content": system_prompt(number, round_no)}]
        await anyio.sleep(pause.uniform(0, THINK))
        for k in range(TURNS):
            messages.append({"role": "user", "content": f"Question {k + 1}: tell me something new about it."})
            done = await turn(client, base, messages, max_tokens)
            messages.append({"role": "assistant", "content": done.text})
            done.extra |= {"user": number, "turn": k}
            turns.append(done)
            await anyio.sleep(pause.uniform(0, THINK))

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for number in range(USERS):
            group.start_soon(user, number)
    return h.Sample(time.perf_counter() - start, [t.tokens for t in turns], extra={"turns": turns})


async def unique(client: httpx.AsyncClient, base: str, round_no: int, max_tokens: int) -> h.Sample:
    """``CLIENTS`` chats at once whose prompts share no prefix: aggregate tok/s."""
    start, samples = time.perf_counter(), []

    async def one(i: int) -> None:
        opening = f"{(round_no * CLIENTS + i) * 7919 % 10007} {TOPICS[i % len(TOPICS)]}: list one hundred facts."
        samples.append(await turn(client, base, [{"role": "user", "content": opening}], max_tokens))

    async with anyio.create_task_group() as group:
        for i in range(CLIENTS):
            group.start_soon(one, i)
    return h.Sample(time.perf_counter() - start, [s.tokens for s in samples])


async def session(base: str, round_no: int, run: h.Run) -> dict[str, h.Sample]:
    limits = httpx.Limits(max_connections=2 * CLIENTS, max_keepalive_connections=2 * CLIENTS)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        await unique(client, base, -1 - round_no, 4)  # warm-up: weights paged in, every connection open
        return {
            "chat": await chats(client, base, round_no, run.max_tokens),
            "unique": await unique(client, base, round_no, 2 * run.max_tokens),
        }


def affinity(turns: list[dict[str, Any]]) -> float:
    """The share of follow-up turns served by the replica that served the user's turn before: the router's part."""
    by_user: dict[int, list[dict[str, Any]]] = {}
    for t in turns:
        by_user.setdefault(t["user"], []).append(t)
    pairs = [(a, b) for ts in by_user.values() for a, b in itertools.pairwise(sorted(ts, key=lambda t: t["turn"]))]
    return sum(a["replica"] == b["replica"] for a, b in pairs) / len(pairs) if pairs else math.nan


def follow_up_share(turns: list[dict[str, Any]]) -> float:
    """Hit tokens over prompt tokens of the turns after each user's first: the replica caches' part."""
    later = [t for t in turns if t["turn"] > 0]
    return sum(t["cached"] for t in later) / sum(t["prompt"] for t in later) if later else math.nan


def analyse(contenders: list[h.Contender]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for c in contenders:
        rounds = [[t.extra for t in s.extra["turns"]] for s in c.samples["chat"]]
        share = [sum(t["cached"] for t in r) / sum(t["prompt"] for t in r) for r in rounds]
        ms = [[t["ttft"] * 1000 for t in r] for r in rounds]
        results[c.name] = {
            "hit_share": h.summary(share),
            "affinity": h.summary([affinity(r) for r in rounds]),
            "follow_up_hit_share": h.summary([follow_up_share(r) for r in rounds]),
            "ttft_p50_ms": h.summary([h.percentile(m, 50) for m in ms]),
            "ttft_p95_ms": h.summary([h.percentile(m, 95) for m in ms]),
            "chat_tok_per_sec": h.summary(c.rates("chat")),
            "unique_tok_per_sec": h.summary(c.rates("unique")),
            "prompt_tokens_first_turn": h.median([r[0]["prompt"] for r in rounds]) if rounds else math.nan,
        }
    med = {name: {k: v["median"] for k, v in r.items() if isinstance(v, dict)} for name, r in results.items()}
    a, b, c = med["process"], med["pow2"], med["prefix"]
    ratios = {
        "prefix_hit_share_vs_process": c["hit_share"] / a["hit_share"],
        "prefix_ttft_p50_vs_process": c["ttft_p50_ms"] / a["ttft_p50_ms"],
        "prefix_unique_tok_per_sec_vs_pow2": c["unique_tok_per_sec"] / b["unique_tok_per_sec"],
        "pow2_hit_share_vs_process": b["hit_share"] / a["hit_share"],
        "pow2_ttft_p50_vs_process": b["ttft_p50_ms"] / a["ttft_p50_ms"],
    }
    checks = {
        "prefix_hit_share_vs_process": h.check(ratios["prefix_hit_share_vs_process"], TARGETS["hit_share"]),
        "prefix_ttft_p50_vs_process": h.check(ratios["prefix_ttft_p50_vs_process"], TARGETS["ttft_p50"], below=True),
        "prefix_unique_tok_per_sec_vs_pow2": h.check(
            ratios["prefix_unique_tok_per_sec_vs_pow2"], TARGETS["unique_tok_per_sec"]
        ),
    }
    return {"results": results, "ratios": ratios, "checks": checks}


def main() -> int:
    run = h.start("routing", __doc__, rounds=(3, 1), max_tokens=(16, 8), info_threads=2)
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="oxillama-routing-bench-") as tmp:

        def serve(name: str, round_no: int) -> dict[str, h.Sample]:
            with running(name, functools.partial(command, name, run.model), Path(tmp), 30) as (base, argv, _):
                commands[name] = argv[3:]
                return anyio.run(session, base, round_no, run)

        contenders = [h.Contender(name, serve) for name in SETUPS]
        for round_no, _, order in h.schedule(run.rounds, [None], contenders):
            for contender in order:
                for key, sample in contender.run(contender.name, round_no).items():
                    contender.record(key, sample)
    run.stop()
    data = run.header() | {
        "settings": {"users": USERS, "turns": TURNS, "clients": CLIENTS, "ctx": CTX, "cache": CACHE},
        "commands": commands,
        **analyse(contenders),
    }
    data["all_targets_met"] = h.all_pass(data["checks"])
    run.report(data)
    return 0 if data["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
