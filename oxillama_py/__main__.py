"""The main job as a command: ``python -m oxillama_py "Once upon a time"``.

``python -m oxillama_py serve ...`` runs the OpenAI-compatible server instead
(see :mod:`oxillama_py.server.cli`).

The text goes to stdout and the tqdm bar to stderr, so ``> out.txt`` captures
only the generation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .config import EngineConfig, SamplerConfig
from .engine import Engine
from .errors import GenerationCancelled, OxiLlamaError

__all__ = ["main"]

# tqdm's default bar without its own rate: the progress adapter's postfix shows it.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m oxillama_py",
        description="Generate text from a GGUF model with a progress bar (default model: Gemma 3 270M).",
    )
    parser.add_argument("prompt", help="the prompt to continue")
    parser.add_argument("--model", "-m", default=None, help="path to a GGUF file (default: the bundled Gemma 3 270M)")
    parser.add_argument("--max-tokens", "-n", type=int, default=128, help="tokens to generate at most (default 128)")
    parser.add_argument(
        "--temperature", "-t", type=float, default=None, help="0 for greedy decoding (default: 0.8, llama.cpp's)"
    )
    parser.add_argument("--seed", "-s", type=int, default=None, help="sampling seed, for reproducible runs")
    parser.add_argument("--n-ctx", type=int, default=None, help="context size in tokens (default 16384)")
    parser.add_argument(
        "--backend",
        choices=("asyncio", "uvloop", "trio"),
        default="asyncio",
        help="event loop that drives the engine (default asyncio)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    return parser


def _backend(name: str) -> tuple[str, dict[str, Any]]:
    if name == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return name, {}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        try:
            from .server.cli import main as serve
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return serve(argv[1:])
    args = _parser().parse_args(argv)
    try:
        sampler = SamplerConfig().with_overrides(temperature=args.temperature, seed=args.seed)
        extra: dict[str, Any] = {} if args.n_ctx is None else {"n_ctx": args.n_ctx}
        config = EngineConfig(args.model, sampler=sampler, **extra)
        backend, options = _backend(args.backend)
        if args.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        with Engine(config, backend=backend, backend_options=options) as engine:  # type: ignore[arg-type]
            engine.load_model()  # before the bar opens, so its clock measures generation only
            if args.no_progress:
                text = engine.generate(args.prompt, args.max_tokens)
            else:
                from tqdm import tqdm

                with tqdm(
                    desc="Generating",
                    total=args.max_tokens,
                    unit="tok",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    bar_format=BAR_FORMAT,
                ) as bar:
                    text = engine.generate(args.prompt, args.max_tokens, progress=bar)
    except (OxiLlamaError, ValueError, TypeError) as exc:
        if isinstance(exc, GenerationCancelled):
            return 130
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ImportError as exc:
        print(f"error: {exc} (install the progress bar with: pip install 'oxillama-py[tqdm]')", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
