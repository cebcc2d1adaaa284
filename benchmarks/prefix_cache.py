"""Prefix cache: time to first token and total time with a shared prefix, cache off and on.

Two workloads, each run by every contender in one process, interleaved:

* ``system``: a system prompt of about 1,000 tokens followed by a different
  question each time (``--questions`` per round, 6 by default), 32 greedy
  tokens each.
* ``chat``: a 10-turn chat (a 300-token system message, then user turns); turn
  N+1's prompt is turn N's prompt plus its answer plus the next question. The
  answers are fixed first (generated once, cache off) so that every contender
  sees exactly the same prompts.

Contenders (same model, same thread count, greedy):

* ``ox_cold``: ``Engine(EngineConfig(prefix_cache_tokens=0))``, every prompt prefilled in full.
* ``ox_cached``: ``Engine()`` with its default prefix cache.
* ``raw_cold``: ``llama_cpp.Llama``, ``reset()`` before each request.
* ``raw_reuse``: ``llama_cpp.Llama`` as it comes: it reuses the longest common
  prefix of the new prompt and the tokens it evaluated last.
* ``raw_ramcache``: ``llama_cpp.Llama`` with ``LlamaRAMCache`` (``reset()``
  before each request, so the state comes from the RAM cache), 192 MB. Its
  capacity counts the llama.cpp state only; each entry also holds a copy of
  the logits of every prompt token (1 MB a token with Gemma's 262,144-token
  vocabulary), which it does not count: at 1 GB this run was killed by the
  kernel for want of memory (24 GB). 192 MB holds several states of either
  workload (about 45 MB each), more than its hits need.

Time to first token is the wall time from the call until the first streamed
text; total is until the last. The first round of each workload is a warm-up
(it fills the caches) and is not counted. Within a round, each contender
serves its requests back to back, and its first request on the system prompt
is not counted either: the chat in between has pushed the system prompt out of
every cache (llama-cpp-python's reuse keeps only the last prompt; the prefix
cache's default share of the context cannot hold both), so it is a miss for
every contender alike, and the figure is the time to first token *with a hit*. Targets (issue 12): on ``system``,
``ox_cold / ox_cached`` time to first token >= 10, and ``raw_reuse /
ox_cached`` >= 1.0 (not slower than llama-cpp-python's own reuse).

Every greedy text of ``ox_cached`` is compared with ``ox_cold``'s and
``raw_cold``'s for the same prompt (a hit must not change the text).

Run: ``python benchmarks/prefix_cache.py [--quick] [--rounds N]``. Writes
``benchmarks/results/prefix_cache.json`` and ``prefix_cache.png``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _common as common

CONTENDERS = ("ox_cold", "ox_cached", "raw_cold", "raw_reuse", "raw_ramcache")
LABELS = {
    "ox_cold": "oxillama_py, cache off",
    "ox_cached": "oxillama_py, prefix cache",
    "raw_cold": "llama-cpp-python, reset",
    "raw_reuse": "llama-cpp-python, own reuse",
    "raw_ramcache": "llama-cpp-python, LlamaRAMCache",
}
MAX_TOKENS = 32
RAMCACHE_BYTES = 192 << 20  # see the module docstring: the logits it keeps beside each state are not counted
TOPICS = [
    "the water cycle",
    "how vaccines work",
    "why the sky is blue",
    "what a compiler does",
    "how tides form",
    "what inflation means",
    "how bees make honey",
    "why leaves change colour",
    "how a refrigerator works",
    "what a black hole is",
    "how bread rises",
    "why we sleep",
    "how a rainbow forms",
    "what a vaccine trial is",
    "how glass is made",
    "why the moon has phases",
    "how a bicycle stays upright",
    "what photosynthesis does",
    "how an election is counted",
    "why ice floats",
    "how a battery stores energy",
    "what a tariff is",
    "how coffee is roasted",
    "why cats purr",
    "how a bridge carries weight",
    "what an index fund is",
    "how volcanoes erupt",
    "why the sea is salty",
]
CHAT_TURNS = [
    "Hi! Can you help me plan a small vegetable garden?",
    "What should I plant first in spring?",
    "How much sun do tomatoes need?",
    "And how often should I water them?",
    "What about lettuce?",
    "Can I grow herbs next to them?",
    "Which herbs are easiest?",
    "How do I keep slugs away?",
    "When do I harvest the tomatoes?",
    "Thanks! Any last tip?",
]


def system_prompt(lines: int) -> str:
    rules = [
        "answer in plain words",
        "never invent a citation",
        "keep each reply short",
        "say so when you are unsure",
        "prefer metric units",
        "quote numbers with their units",
        "do not repeat the question",
        "use lists for steps",
        "write dates as year-month-day",
        "explain acronyms once",
    ]
    body = "\n".join(f"Rule {i + 1}: {rules[i % len(rules)]} (section {i // len(rules) + 1})." for i in range(lines))
    return f"You are a careful assistant. Follow these rules.\n{body}\n\n"


@dataclass
class Sample:
    ttft: float
    total: float
    text: str
    cached: int | None = None  # prompt tokens the engine reused (oxillama_py only)


@dataclass
class Contender:
    name: str
    run: Callable[[str], Sample]
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def ox_runner(engine: Any) -> Callable[[str], Sample]:
    def run(prompt: str) -> Sample:
        before = engine.stats.prefix_cache.hit_tokens
        start = time.perf_counter()
        first = None
        pieces = []
        for piece in engine.stream(prompt, MAX_TOKENS, temperature=0):
            if first is None and piece:
                first = time.perf_counter()
            pieces.append(piece)
        end = time.perf_counter()
        return Sample(
            (first or end) - start, end - start, "".join(pieces), engine.stats.prefix_cache.hit_tokens - before
        )

    return run


def raw_runner(llm: Any, *, reset: bool) -> Callable[[str], Sample]:
    def run(prompt: str) -> Sample:
        if reset:
            llm.reset()
        start = time.perf_counter()
        first = None
        pieces = []
        for chunk in llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True):
            text = chunk["choices"][0]["text"]
            if first is None and text:
                first = time.perf_counter()
            pieces.append(text)
        end = time.perf_counter()
        return Sample((first or end) - start, end - start, "".join(pieces))

    return run


def stats(samples: list[Sample]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ttft_secs": common.summary([s.ttft for s in samples]),
        "total_secs": common.summary([s.total for s in samples]),
    }
    if samples and samples[0].cached is not None:
        out["cached_tokens"] = [s.cached for s in samples]
    return out


def main() -> int:
    parser = common.base_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=None, help="counted rounds per workload (default 3, quick 1)")
    parser.add_argument("--questions", type=int, default=6, help="counted system-prompt questions per round")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    per_round = args.questions + 1  # the first one is the block's warm-up (a miss for everyone)
    model = common.resolve_model(args.model)
    common.quiet_llama_cpp()
    started = time.perf_counter()
    info = common.machine_info(args.threads, model)

    from llama_cpp import Llama, LlamaRAMCache

    from oxillama_py import Engine, EngineConfig

    system = system_prompt(76)
    chat_system = system_prompt(22).strip()
    threads = args.threads

    def llama() -> Any:
        return Llama(str(model), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)

    ram_llm = llama()
    ram_llm.set_cache(LlamaRAMCache(capacity_bytes=RAMCACHE_BYTES))
    cold_llm, reuse_llm = llama(), llama()
    with (
        Engine(EngineConfig(model, n_threads=threads, prefix_cache_tokens=0)) as cold,
        Engine(EngineConfig(model, n_threads=threads)) as cached,
    ):
        cold.load_model()
        cached.load_model()
        n_system = len(cold.tokenize(system))
        print(f"model {model.name}, {threads} threads, system prompt {n_system} tokens, {rounds} rounds", flush=True)
        contenders = [
            Contender("ox_cold", ox_runner(cold)),
            Contender("ox_cached", ox_runner(cached)),
            Contender("raw_cold", raw_runner(cold_llm, reset=True)),
            Contender("raw_reuse", raw_runner(reuse_llm, reset=False)),
            Contender("raw_ramcache", raw_runner(ram_llm, reset=True)),
        ]
        by_name = {c.name: c for c in contenders}

        # The chat's transcript: answers fixed once, so every contender sees the same prompts.
        messages: list[dict[str, str]] = [{"role": "system", "content": chat_system}]
        for question in CHAT_TURNS:
            messages.append({"role": "user", "content": question})
            prompt = cold.apply_chat_template(messages).removeprefix("<bos>")
            answer = cold.generate(prompt, MAX_TOKENS, temperature=0, stop=["<end_of_turn>"])
            messages.append({"role": "assistant", "content": answer})

        def chat_prompts_of(session: int) -> list[str]:
            """Each round is a new conversation (its system message names the session).

            Without the template's ``<bos>``: both libraries add BOS to a prompt themselves.
            """
            renamed = [{"role": "system", "content": f"Session {session}. {chat_system}"}, *messages[1:]]
            rendered = [cold.apply_chat_template(renamed[: 2 + 2 * turn]) for turn in range(len(CHAT_TURNS))]
            return [p.removeprefix("<bos>") for p in rendered]

        chat_tokens = [len(cold.tokenize(p)) for p in chat_prompts_of(0)]
        print(f"chat prompts {chat_tokens[0]}..{chat_tokens[-1]} tokens", flush=True)

        mismatches: list[dict[str, Any]] = []
        for round_no in range(rounds + 1):
            counted = round_no > 0
            questions = [TOPICS[(round_no * per_round + i) % len(TOPICS)] for i in range(per_round)]
            system_prompts = [f"{system}Question: Explain {topic} in two sentences.\nAnswer:" for topic in questions]
            workloads = {"system": system_prompts, "chat": chat_prompts_of(round_no)}
            for workload, prompts in workloads.items():
                line = []
                texts: dict[str, list[str]] = {}
                for contender in common.rotated(contenders, round_no):
                    samples = [contender.run(p) for p in prompts]
                    texts[contender.name] = [s.text for s in samples]
                    if counted:  # the first request of a block is cold for everyone (chat: turn 1)
                        contender.samples.setdefault(workload, []).extend(samples[1:])
                    line.append(f"{contender.name} {common.median([s.ttft for s in samples[1:]]) * 1000:6.0f} ms")
                for i in range(len(prompts)):
                    a, b, c = texts["ox_cached"][i], texts["ox_cold"][i], texts["raw_cold"][i]
                    if not a == b == c:
                        mismatches.append({"workload": workload, "index": i, "ox_cached": a, "ox_cold": b, "raw": c})
                tag = f"round {round_no}/{rounds}" if counted else "warm-up"
                print(f"{tag} {workload} median ttft: " + ", ".join(line), flush=True)
        cache_stats = cached.stats.prefix_cache

    def med(name: str, workload: str, key: str) -> float:
        return common.median([getattr(s, key) for s in by_name[name].samples[workload]])

    results: dict[str, Any] = {}
    for workload in ("system", "chat"):
        entry: dict[str, Any] = {name: stats(by_name[name].samples[workload]) for name in CONTENDERS}
        hit_ttft = med("ox_cached", workload, "ttft")
        hit_total = med("ox_cached", workload, "total")
        entry["ratios"] = {
            "ttft_cold_over_cached": med("ox_cold", workload, "ttft") / hit_ttft,
            "ttft_raw_reuse_over_cached": med("raw_reuse", workload, "ttft") / hit_ttft,
            "ttft_raw_ramcache_over_cached": med("raw_ramcache", workload, "ttft") / hit_ttft,
            "ttft_raw_cold_over_cached": med("raw_cold", workload, "ttft") / hit_ttft,
            "total_cold_over_cached": med("ox_cold", workload, "total") / hit_total,
            "total_raw_reuse_over_cached": med("raw_reuse", workload, "total") / hit_total,
            "total_raw_ramcache_over_cached": med("raw_ramcache", workload, "total") / hit_total,
        }
        results[workload] = entry
    ratios = results["system"]["ratios"]
    targets = {
        "ttft_cold_over_cached": {"target": 10.0, "verdict": common.verdict(ratios["ttft_cold_over_cached"], 10.0)},
        "ttft_raw_reuse_over_cached": {
            "target": 1.0,
            "verdict": common.verdict(ratios["ttft_raw_reuse_over_cached"], 1.0),
        },
    }
    common.finish_info(info, started)
    data = {
        "benchmark": "prefix_cache",
        "machine": info,
        "settings": {
            "rounds": rounds,
            "max_tokens": MAX_TOKENS,
            "llama_ram_cache_bytes": RAMCACHE_BYTES,
            "system_prompt_tokens": n_system,
            "system_requests_per_round": per_round,
            "system_requests_counted_per_round": per_round - 1,
            "chat_turns": len(CHAT_TURNS),
            "chat_prompt_tokens": chat_tokens,
        },
        "results": results,
        "targets": targets,
        "text_mismatches": mismatches,
        "prefix_cache_stats": {
            "hits": cache_stats.hits,
            "lookups": cache_stats.lookups,
            "hit_rate": cache_stats.hit_rate,
            "token_hit_rate": cache_stats.token_hit_rate,
            "tokens": cache_stats.tokens,
            "capacity": cache_stats.capacity,
        },
        "load_warning": common.load_warning(info),
    }
    out = args.out
    common.write_json(out / "prefix_cache.json", data)
    plot(data, out)
    for workload in ("system", "chat"):
        r = results[workload]["ratios"]
        print(
            f"{workload}: ttft cold/cached {r['ttft_cold_over_cached']:.1f}x, "
            f"raw reuse/cached {r['ttft_raw_reuse_over_cached']:.2f}x, "
            f"raw ramcache/cached {r['ttft_raw_ramcache_over_cached']:.2f}x; "
            f"total cold/cached {r['total_cold_over_cached']:.2f}x"
        )
    for key, value in targets.items():
        print(f"target {key} >= {value['target']}: {value['verdict']}")
    print(f"text mismatches (ox_cached vs ox_cold vs raw_cold): {len(mismatches)}")
    return 0


def plot(data: dict[str, Any], out: Any) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = ["#9e9e9e", "#1f77b4", "#d9a441", "#e07b39", "#8c564b"]
    for ax, (workload, title) in zip(
        axes, [("system", "1,000-token system prompt"), ("chat", "10-turn chat")], strict=True
    ):
        res = data["results"][workload]
        ttft = [res[name]["ttft_secs"]["median"] * 1000 for name in CONTENDERS]
        total = [res[name]["total_secs"]["median"] * 1000 for name in CONTENDERS]
        x = range(len(CONTENDERS))
        ax.bar([i - 0.2 for i in x], ttft, 0.4, color=colours, label="time to first token")
        ax.bar([i + 0.2 for i in x], total, 0.4, color=colours, alpha=0.45, label="total (32 tokens)")
        for i, value in enumerate(ttft):
            ax.text(i - 0.2, value, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(list(x))
        ax.set_xticklabels([LABELS[n].replace(", ", ",\n") for n in CONTENDERS], fontsize=7)
        ax.set_ylabel("ms (median, log scale)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper right")
    m = data["machine"]
    fig.suptitle(f"Prefix cache, Gemma 3 270M Q4_K_M, {m['threads']} threads: solid = first token, light = total")
    common.save_figure(fig, out / "prefix_cache.png", 110)


if __name__ == "__main__":
    sys.exit(main())
