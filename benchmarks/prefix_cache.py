"""Prefix cache: time to first token and total time with a shared prefix, cache off and on.

Contenders, targets, how to read the numbers: ``benchmarks/README.md``. Writes ``results/prefix_cache.json``/``.png``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any

import harness as h

CONTENDERS = ("ox_cold", "ox_cached", "raw_cold", "raw_reuse", "raw_ramcache")
MAX_TOKENS = 32
TARGETS = {"ttft_cold_over_cached": 10.0, "ttft_raw_reuse_over_cached": 1.0}  # on the system prompt
# LlamaRAMCache counts the llama.cpp state only, not the logits of every prompt token it keeps beside each state
# (1 MB a token with Gemma's vocabulary): at 1 GB a run was killed for want of memory. 192 MB holds several states.
RAMCACHE_BYTES = 192 << 20
TOPICS = (  # noqa: SIM905
    "the water cycle; how vaccines work; why the sky is blue; what a compiler does; how tides form; "
    "what inflation means; how bees make honey; why leaves change colour; how a refrigerator works; "
    "what a black hole is; how bread rises; why we sleep; how a rainbow forms; what a vaccine trial is; "
    "how glass is made; why the moon has phases; how a bicycle stays upright; what photosynthesis does; "
    "how an election is counted; why ice floats; how a battery stores energy; what a tariff is; "
    "how coffee is roasted; why cats purr; how a bridge carries weight; what an index fund is; how volcanoes erupt; "
    "why the sea is salty"
).split("; ")
CHAT_TURNS = (  # noqa: SIM905
    "Hi! Can you help me plan a small vegetable garden?|What should I plant first in spring?|"
    "How much sun do tomatoes need?|And how often should I water them?|What about lettuce?|"
    "Can I grow herbs next to them?|Which herbs are easiest?|How do I keep slugs away?|"
    "When do I harvest the tomatoes?|Thanks! Any last tip?"
).split("|")
RULES = (  # noqa: SIM905
    "answer in plain words; never invent a citation; keep each reply short; say so when you are unsure; "
    "prefer metric units; quote numbers with their units; do not repeat the question; use lists for steps; "
    "write dates as year-month-day; explain acronyms once"
).split("; ")


def system_prompt(lines: int) -> str:
    body = "\n".join(f"Rule {i + 1}: {RULES[i % len(RULES)]} (section {i // len(RULES) + 1})." for i in range(lines))
    return f"You are a careful assistant. Follow these rules.\n{body}\n\n"


def ox_runner(engine: Any) -> Callable[[str], h.Sample]:
    def run(prompt: str) -> h.Sample:
        before = engine.stats.prefix_cache.hit_tokens
        sample = h.timed_stream(lambda: engine.stream(prompt, MAX_TOKENS, temperature=0))
        sample.extra["cached"] = engine.stats.prefix_cache.hit_tokens - before  # prompt tokens the engine reused
        return sample

    return run


def raw_runner(llm: Any, *, reset: bool) -> Callable[[str], h.Sample]:
    def run(prompt: str) -> h.Sample:
        if reset:
            llm.reset()

        def pieces() -> Iterator[str]:
            chunks = llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True)
            return (chunk["choices"][0]["text"] for chunk in chunks)

        return h.timed_stream(pieces)

    return run


def stats(samples: list[h.Sample]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ttft_secs": h.summary([s.extra["ttft"] for s in samples]),
        "total_secs": h.summary([s.secs for s in samples]),
    }
    if samples and "cached" in samples[0].extra:
        out["cached_tokens"] = [s.extra["cached"] for s in samples]
    return out


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=int, default=6, help="counted system-prompt questions per round")


def main() -> int:
    run = h.start("prefix_cache", __doc__, rounds=(3, 1), arguments=arguments)
    rounds, model, threads = run.rounds, run.model, run.args.threads
    per_round = run.args.questions + 1  # the first one is the block's warm-up (a miss for everyone)
    from llama_cpp import LlamaRAMCache

    from oxillama_py import Engine, EngineConfig

    system = system_prompt(76)
    chat_system = system_prompt(22).strip()

    ram_llm = h.llama(model, threads, 4096)
    ram_llm.set_cache(LlamaRAMCache(capacity_bytes=RAMCACHE_BYTES))
    cold_llm, reuse_llm = h.llama(model, threads, 4096), h.llama(model, threads, 4096)
    with (
        Engine(EngineConfig(model, n_threads=threads, prefix_cache_tokens=0)) as cold,
        Engine(EngineConfig(model, n_threads=threads)) as cached,
    ):
        cold.load_model()
        cached.load_model()
        n_system = len(cold.tokenize(system))
        h.say(f"system prompt {n_system} tokens")
        contenders = [
            h.Contender("ox_cold", ox_runner(cold)),
            h.Contender("ox_cached", ox_runner(cached)),
            h.Contender("raw_cold", raw_runner(cold_llm, reset=True)),
            h.Contender("raw_reuse", raw_runner(reuse_llm, reset=False)),
            h.Contender("raw_ramcache", raw_runner(ram_llm, reset=True)),
        ]

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
        h.say(f"chat prompts {chat_tokens[0]}..{chat_tokens[-1]} tokens")

        # The first round of each workload is a warm-up that fills the caches. Within a round, the first request
        # of a block is not counted: the other workload in between pushed its prefix out of every cache.
        mismatches: list[dict[str, Any]] = []
        for round_no, workload, order in h.schedule(rounds + 1, ("system", "chat"), contenders):
            counted = round_no > 0
            if workload == "system":
                questions = [TOPICS[(round_no * per_round + i) % len(TOPICS)] for i in range(per_round)]
                prompts = [f"{system}Question: Explain {topic} in two sentences.\nAnswer:" for topic in questions]
            else:
                prompts = chat_prompts_of(round_no)
            line = []
            texts: dict[str, list[str]] = {}
            for contender in order:
                samples = [contender.run(p) for p in prompts]
                texts[contender.name] = [s.text for s in samples]
                if counted:  # the first request of a block is cold for everyone (chat: turn 1)
                    contender.samples.setdefault(workload, []).extend(samples[1:])
                line.append(f"{contender.name} {h.median([s.extra['ttft'] for s in samples[1:]]) * 1000:6.0f} ms")
            for i in range(len(prompts)):
                a, b, c = texts["ox_cached"][i], texts["ox_cold"][i], texts["raw_cold"][i]
                if not a == b == c:
                    mismatches.append({"workload": workload, "index": i, "ox_cached": a, "ox_cold": b, "raw": c})
            tag = f"round {round_no}/{rounds}" if counted else "warm-up"
            h.say(f"{tag} {workload} median ttft: " + ", ".join(line))
        cache_stats = cached.stats.prefix_cache
    run.stop()
    by = {c.name: c for c in contenders}

    def med(name: str, workload: str, key: str) -> float:
        return h.median([s.extra["ttft"] if key == "ttft" else s.secs for s in by[name].samples[workload]])

    results: dict[str, Any] = {}
    for workload in ("system", "chat"):
        entry: dict[str, Any] = {name: stats(by[name].samples[workload]) for name in CONTENDERS}
        hit = {key: med("ox_cached", workload, key) for key in ("ttft", "total")}
        ratios = {f"ttft_{n}_over_cached": med(c, workload, "ttft") / hit["ttft"] for n, c in OTHERS}
        ratios |= {f"total_{n}_over_cached": med(c, workload, "total") / hit["total"] for n, c in OTHERS[:3]}
        entry["ratios"] = ratios
        results[workload] = entry
    ratios = results["system"]["ratios"]
    checks = {key: h.check(ratios[key], target) for key, target in TARGETS.items()}
    targets = {key: {"target": c["target"], "verdict": c["verdict"]} for key, c in checks.items()}
    data = {
        "benchmark": "prefix_cache",
        "machine": run.info,
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
            key: getattr(cache_stats, key)
            for key in ("hits", "lookups", "hit_rate", "token_hit_rate", "tokens", "capacity")
        },
        "load_warning": h.load_warning(run.info),
    }
    notes = [f"text mismatches (ox_cached vs ox_cold vs raw_cold): {len(mismatches)}"]
    run.report(data, notes)
    return 0


# (ratio name, contender) of the ratios over ox_cached; total time for the first three
OTHERS = (("cold", "ox_cold"), ("raw_reuse", "raw_reuse"), ("raw_ramcache", "raw_ramcache"), ("raw_cold", "raw_cold"))


if __name__ == "__main__":
    sys.exit(main())
