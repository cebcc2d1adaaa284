"""``AsyncEngine`` under trio: streaming, a cancel scope, and a nursery of concurrent requests.

Why: the engine is built on anyio, so it runs natively on trio (and on
asyncio, with or without uvloop) with no thread juggling on your side.
Decoding happens in the engine's worker thread; your tasks only await.
Cancellation is structured: cancelling the scope around ``stream()`` stops
that sequence at the next decode step and frees its KV cells before the scope
exits, so nothing outlives the block.

This script shows three things:

1. ``stream()``: print pieces as they are decoded.
2. A cancel scope: stop a stream after ``--cancel-after`` pieces (or after
   ``--timeout`` seconds, with a ``trio.move_on_after`` deadline around it).
3. A nursery: several ``generate`` calls from concurrent tasks, which the
   engine decodes together in one batch.

How::

    pip install 'oxillama-py[model,trio]'
    python examples/trio_app.py
    python examples/trio_app.py --max-tokens 16 --cancel-after 3 --tasks 2
"""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import aclosing

import trio

from oxillama_py import AsyncEngine, EngineConfig


async def stream_to_stdout(engine: AsyncEngine, prompt: str, max_tokens: int) -> str:
    """1. Print a completion piece by piece; leaving the ``async with`` ends the generation there and then."""
    pieces: list[str] = []
    print(f"[stream] {prompt}", end="", flush=True)
    async with aclosing(engine.stream(prompt, max_tokens, temperature=0.0)) as stream:
        async for piece in stream:
            pieces.append(piece)
            print(piece, end="", flush=True)
    print()
    return "".join(pieces)


async def stream_with_cancel(engine: AsyncEngine, prompt: str, max_tokens: int, after: int) -> None:
    """2. Leave a stream early by cancelling our own scope after ``after`` pieces."""
    received = 0
    with trio.CancelScope() as scope:
        async with aclosing(engine.stream(prompt, max_tokens, temperature=0.0)) as stream:
            async for piece in stream:
                received += 1
                print(f"[cancel] piece {received}: {piece!r}", flush=True)
                if received >= after:
                    scope.cancel()  # the generation stops at the next decode step
    reason = "the cancel scope" if scope.cancelled_caught else "the end of the generation"
    print(f"[cancel] stopped by {reason} after {received} pieces (cancelled_caught={scope.cancelled_caught})")


async def concurrent_requests(engine: AsyncEngine, tasks: int, max_tokens: int) -> None:
    """3. Concurrent tasks share the engine; their requests decode in the same batch."""
    subjects = ["the moon", "a lighthouse", "the ocean", "a mountain", "a library", "a train station"]
    results: dict[int, str] = {}

    async def one(index: int) -> None:
        prompt = f"A short description of {subjects[index % len(subjects)]}:"
        results[index] = await engine.generate(prompt, max_tokens, temperature=0.0)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(tasks):
            nursery.start_soon(one, index)
    elapsed = trio.current_time() - start
    for index in sorted(results):
        print(f"[nursery] task {index}: {results[index]!r}")
    print(f"[nursery] {tasks} concurrent generations in {elapsed:.2f}s")


async def main(args: argparse.Namespace) -> None:
    async with AsyncEngine(EngineConfig(args.model)) as engine:  # loads the model; closing stops the decode thread
        await stream_to_stdout(engine, args.prompt, args.max_tokens)
        budget = max(args.max_tokens, args.cancel_after + 1)
        # The caller owns the deadline: any enclosing scope (here trio.move_on_after) cancels the stream too.
        with trio.move_on_after(args.timeout) as deadline:
            await stream_with_cancel(engine, args.prompt, budget, args.cancel_after)
        if deadline.cancelled_caught:
            print(f"[cancel] stopped by the {args.timeout}s deadline")
        if args.tasks > 0:
            await concurrent_requests(engine, args.tasks, args.max_tokens)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="path to a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--prompt", default="The history of the printing press")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--cancel-after", type=int, default=5, help="pieces to read before cancelling")
    parser.add_argument("--timeout", type=float, default=math.inf, help="deadline in seconds for the cancel demo")
    parser.add_argument("--tasks", type=int, default=4, help="concurrent generations in the nursery demo (0 = skip)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
