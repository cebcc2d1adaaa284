"""A custom progress callable: ``progress=`` takes any ``Callable[[ProgressEvent], None]``.

Why: when the display is your own (a log line, a metrics gauge, a web
socket), pass a function. It is called on the first decoded token, then at
most once per throttle window (``progress_throttle_ms`` /
``progress_throttle_tokens``, default 50 ms or 4 tokens), and always once more
with ``is_final=True`` when the generation ends, however it ends. With
``progress_capture_text=True`` each event also carries the text so far.

How::

    pip install 'oxillama-py[model]'
    python examples/progress_callback.py
    python examples/progress_callback.py --max-tokens 16 --throttle-tokens 1 --prompt "Dear diary,"
"""

from __future__ import annotations

import argparse

from oxillama_py import Engine, EngineConfig
from oxillama_py.progress import ProgressEvent


def on_progress(event: ProgressEvent) -> None:
    """Print one line per tick; the final tick says how the run went."""
    eta = "?" if event.eta_secs is None else f"{event.eta_secs:.1f}s"
    tail = event.text_so_far[-30:].replace("\n", " ")
    label = "final" if event.is_final else "tick "
    print(
        f"[{label}] {event.tokens_generated:>4}/{event.tokens_total} tokens  "
        f"{event.tokens_per_sec:6.1f} tok/s  elapsed {event.elapsed_secs:5.2f}s  eta {eta:>6}  ...{tail!r}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="path to a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--prompt", default="The three most important inventions in history are")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible output")
    parser.add_argument("--throttle-ms", type=float, default=None, help="min ms between ticks (default 50)")
    parser.add_argument("--throttle-tokens", type=int, default=None, help="min tokens between ticks (default 4)")
    args = parser.parse_args(argv)

    with Engine(EngineConfig(args.model, seed=args.seed)) as engine:
        engine.load_model()
        text = engine.generate(
            args.prompt,
            max_tokens=args.max_tokens,
            progress=on_progress,
            progress_throttle_ms=args.throttle_ms,
            progress_throttle_tokens=args.throttle_tokens,
            progress_capture_text=True,
        )
    print("---")
    print(args.prompt + text)


if __name__ == "__main__":
    main()
