"""A backend that restarts warm: snapshot the engine, restore it, and the cached prompt is still a hit.

Why: a web backend keeps its system prompt (and the conversations so far) in
the prefix cache, so a request prefills only what is new. A restart, a deploy
or a move to another machine would throw that away. ``engine.snapshot()``
saves the model reference, the config, the applied LoRA adapters and the
cache's KV cells; ``Engine.restore()`` brings them back, and the first request
after it is as fast as before the restart, with the same greedy answer.

How::

    pip install 'oxillama-py[model]'
    python examples/snapshot_restore.py
    python examples/snapshot_restore.py --max-tokens 12 --snapshot /tmp/bot.snap
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from oxillama_py import Engine, EngineConfig

INSTRUCTIONS = (
    "You are the support agent of ACME Ltd. Answer in one sentence.\n"
    + "".join(f"Policy {i + 1}: orders ship within {i % 5 + 1} working days of payment.\n" for i in range(30))
    + "\n"
)
QUESTION = "Customer: when will my order ship?\nAgent:"


def answer(engine: Engine, max_tokens: int) -> tuple[str, float, int]:
    """The answer, its time to first token, and how many prompt tokens came from the cache."""
    first: list[float] = []
    start = time.perf_counter()
    result = engine.complete(
        INSTRUCTIONS + QUESTION,
        max_tokens,
        temperature=0,
        progress=lambda event: first or first.append(time.perf_counter() - start),
    )
    return result.text, first[0] if first else float("nan"), result.cached_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=None, help="GGUF file (default: the bundled Gemma 3 270M)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--snapshot", type=Path, default=None, help="where to write it (default: a temp file)")
    args = parser.parse_args()
    path = args.snapshot or Path(tempfile.mkdtemp()) / "engine.snap"

    with Engine(EngineConfig(args.model, n_ctx=4096, max_concurrency=2)) as engine:
        engine.cache_prefix(INSTRUCTIONS)  # pinned: the instructions are prefilled once
        text, ttft, cached = answer(engine, args.max_tokens)
        print(f"before the restart: first token after {ttft * 1000:.0f} ms, {cached} prompt tokens cached")
        engine.snapshot(path)

    info = Engine.snapshot_info(path)  # metadata only: no model is loaded
    print(f"snapshot: {path.stat().st_size / 1e6:.1f} MB, {info.tokens_count} cached tokens of {info.arch_id}")

    with Engine.restore(path) as restored:
        again, ttft, cached = answer(restored, args.max_tokens)
        print(f"after the restore:  first token after {ttft * 1000:.0f} ms, {cached} prompt tokens cached")
    print(f"same answer: {again == text}")
    print(f"answer: {text.strip()}")


if __name__ == "__main__":
    main()
