"""A support bot with a long system prompt: the prefix cache prefills it once.

Why: a web backend sends the same instructions before every user message, and
a chat repeats the conversation so far at every turn. The engine keeps the KV
cells of earlier requests, so each new request prefills only what is new:
time to first token drops from seconds to tens of milliseconds on a CPU.
``cache_prefix`` pins the instructions up front; ``result.cached_tokens`` and
``engine.stats.prefix_cache`` show what was reused.

How::

    pip install 'oxillama-py[model]'
    python examples/prefix_cache.py
    python examples/prefix_cache.py --questions 2 --max-tokens 12 --no-pin
"""

from __future__ import annotations

import argparse
import time

from oxillama_py import Engine, EngineConfig

POLICIES = [
    "Orders ship within two working days of payment.",
    "Refunds are paid to the original payment method within five days.",
    "Customers may return unused items within thirty days.",
    "Damaged items are replaced free of charge; ask for a photo first.",
    "Never share another customer's details.",
    "Escalate legal threats to a human agent.",
]
QUESTIONS = [
    "My order has not arrived after a week. What should I do?",
    "Can I return a jacket I bought three weeks ago?",
    "The mug I received is broken.",
    "When will my refund arrive?",
]


def instructions(repeats: int) -> str:
    body = "\n".join(f"Policy {i + 1}: {POLICIES[i % len(POLICIES)]}" for i in range(repeats * len(POLICIES)))
    return f"You are the support agent of ACME Ltd. Answer in one or two sentences.\n{body}\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=None, help="GGUF file (default: the bundled Gemma 3 270M)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--no-pin", action="store_true", help="let the first request fill the cache instead")
    args = parser.parse_args()
    system = instructions(repeats=10)
    with Engine(EngineConfig(args.model)) as engine:
        if not args.no_pin:
            kept = engine.cache_prefix(system)
            print(f"pinned {kept} tokens of instructions")
        for question in QUESTIONS[: args.questions]:
            start = time.perf_counter()
            result = engine.complete(
                f"{system}Customer: {question}\nAgent:", args.max_tokens, temperature=0, stop=["\nCustomer:"]
            )
            first = result.timings.queued_secs + result.timings.prompt_secs
            print(f"Q: {question}\nA:{result.text}")
            print(
                f"   {result.cached_tokens}/{result.prompt_tokens} prompt tokens from the cache, "
                f"first token after {first * 1000:.0f} ms, {time.perf_counter() - start:.2f} s in all\n"
            )
        stats = engine.stats.prefix_cache
        print(f"cache: {stats.entries} entries, {stats.tokens} tokens, hit rate {stats.hit_rate:.0%}")


if __name__ == "__main__":
    main()
