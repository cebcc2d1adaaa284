"""Speculative decoding: the same greedy text, fewer target decodes.

Why: when the output repeats its input (rewriting a passage, editing code,
filling a template), prompt lookup guesses the next tokens from the context and
the target checks a whole guess in one ``llama_decode``. Greedy output stays the
target's own; only the number of target calls falls. ``--draft-model`` uses a
second GGUF (same vocabulary) as the drafter instead.

How::

    pip install 'oxillama-py[model,tqdm]'
    python examples/speculative.py
    python examples/speculative.py --max-tokens 64 --draft-model path/to/small.gguf

The bar goes to stderr; the text and the draft statistics to stdout.
"""

from __future__ import annotations

import argparse
import time

from tqdm.auto import tqdm

from oxillama_py import Engine, EngineConfig, PromptLookup, SpeculativeConfig, SpeculativeEngine

PASSAGE = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single "
    "step. To be or not to be, that is the question. All that glitters is not gold."
)
PROMPT = f"Repeat the passage exactly.\nPassage: {PASSAGE}\nRepeat: {PASSAGE}\nPassage: {PASSAGE}\nRepeat:"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="target GGUF (default: Gemma 3 270M)")
    parser.add_argument(
        "--draft-model", default=None, help="draft GGUF with the same vocabulary (default: prompt lookup)"
    )
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument(
        "--num-speculative", type=int, default=None, help="draft length cap (default: what the drafter offers)"
    )
    parser.add_argument("--compare", action="store_true", help="also run plain decoding and compare")
    args = parser.parse_args(argv)

    target = EngineConfig(args.model, n_ctx=4096)
    draft = EngineConfig(args.draft_model, n_ctx=4096) if args.draft_model else PromptLookup()
    config = SpeculativeConfig(target, draft, num_speculative=args.num_speculative)
    with SpeculativeEngine(config) as engine:
        engine.load_model()
        with tqdm(desc="Speculating", unit="tok") as bar:
            start = time.perf_counter()
            result = engine.complete(args.prompt, args.max_tokens, temperature=0, progress=bar)
            secs = time.perf_counter() - start
    print(result.text)
    stats = result.speculative
    assert stats is not None
    print(
        f"\n[speculative] {result.completion_tokens} tokens in {secs:.2f} s "
        f"({result.completion_tokens / secs:.1f} tok/s); "
        f"drafted {stats.drafted}, accepted {stats.accepted} ({stats.acceptance_rate:.0%}); "
        f"{stats.target_calls} target decodes, {stats.tokens_per_target_call:.2f} tokens per decode"
    )
    if args.compare:
        with Engine(target) as plain_engine:
            plain_engine.load_model()
            start = time.perf_counter()
            plain = plain_engine.complete(args.prompt, args.max_tokens, temperature=0)
            plain_secs = time.perf_counter() - start
        same = "identical" if plain.text == result.text else "different"
        print(
            f"[plain] {plain.completion_tokens} tokens in {plain_secs:.2f} s "
            f"({plain.completion_tokens / plain_secs:.1f} tok/s); the texts are {same}"
        )


if __name__ == "__main__":
    main()
