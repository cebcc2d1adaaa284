"""``python -m oxillama_py serve``: the app on uvicorn (asyncio, uvloop) or hypercorn (trio), or on Ray Serve.

On SIGINT or SIGTERM the server stops accepting connections, lets running
generations finish for ``--shutdown-grace`` seconds, cancels what is left,
then the lifespan closes the engine (with several models, the command closes
the registry it built, :mod:`.model_args`). With ``--ray`` the same app is deployed
as Ray Serve replicas (:mod:`oxillama_py.ray`) until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ..config import EngineConfig, PromptLookup
from ..errors import OxiLlamaError
from ..registry import ModelRegistry
from .admission import ServerSettings
from .model_args import served_models
from .observe import configure_logging, startup_line
from .routes import create_app

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m oxillama_py serve",
        description="Serve a GGUF model over an OpenAI-compatible HTTP API (default model: Gemma 3 270M).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        "-m",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="a GGUF file (default: the bundled Gemma 3 270M); repeat with NAME=PATH to serve several models, "
        "a request's 'model' picks one (the first when it names none)",
    )
    parser.add_argument(
        "--model-name", default=None, help="the name clients pass as 'model' (default: the file's stem)"
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=None,
        metavar="NAME=PATH[:SCALE]",
        help="serve the first model with this LoRA adapter as model NAME (repeatable; SCALE default 1.0)",
    )
    parser.add_argument(
        "--max-loaded-models",
        type=_positive_int,
        default=None,
        metavar="K",
        help="with several models: keep at most K loaded, unloading the least recently used idle one "
        "(default: no limit)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="sequences decoded together (slots; default: 16, where the measured step cost flattens, "
        "fewer when that leaves a slot under 1024 cells of --n-ctx)",
    )
    parser.add_argument("--max-queue", type=int, default=64, help="sequences that may wait for a slot; more get 429")
    parser.add_argument("--n-ctx", type=int, default=16384, help="context cells, one pool shared by the slots")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=None,
        help="KV cells kept for prompts that start like earlier ones (default: an eighth of --n-ctx; 0: off)",
    )
    parser.add_argument(
        "--prefix-cache-exact",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before a request that finds the engine idle, drop the cached prefixes of sequences decoded beside "
        "others, so that its hit gives a fresh engine's text (the default); --no-prefix-cache-exact keeps them "
        "for the next turns of every user (more hits; text may differ at a near tie)",
    )
    parser.add_argument(
        "--step-target-ms",
        type=float,
        default=None,
        metavar="MS",
        help="while streams generate, a step carrying prompt rows aims at MS milliseconds "
        "(default: 2.2 times the generating rows' own cost)",
    )
    parser.add_argument(
        "--speculative",
        default=None,
        metavar="lookup|DRAFT.gguf",
        help="speculate inside the batch: prompt lookup, or a draft model with the same vocabulary (default: off)",
    )
    parser.add_argument("--chat-template", default=None, help="built-in name (gemma, chatml, llama3, ...) or Jinja2")
    parser.add_argument("--api-key", default=None, help="required bearer token (default: $OXILLAMA_API_KEY, or none)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    parser.add_argument("--shutdown-grace", type=float, default=10.0, help="seconds running requests get at shutdown")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="info: a line per request; debug: llama.cpp's own messages too",
    )
    parser.add_argument("--log-format", default="text", choices=("text", "json"), help="json: one object a line")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="let web pages from ORIGIN call the server (repeatable; '*' for any; none: no CORS)",
    )
    parser.add_argument("--metrics-public", action="store_true", help="serve /metrics without the API key")
    parser.add_argument(
        "--sse-keepalive",
        type=float,
        default=15.0,
        metavar="SECS",
        help="a stream sends a comment line after SECS with nothing else sent (0: never)",
    )
    ray = parser.add_argument_group("Ray Serve (pip install 'oxillama-py[ray]')")
    ray.add_argument("--ray", action="store_true", help="deploy the app as Ray Serve replicas instead")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=None, help="a fixed number of replicas (default 1)")
    scale.add_argument(
        "--autoscale", default=None, metavar="MIN:MAX", help="let Serve scale between MIN and MAX replicas"
    )
    ray.add_argument(
        "--address", default=None, help="join this Ray cluster ('auto', host:port, ray://...); default: start one"
    )
    ray.add_argument(
        "--num-cpus", type=float, default=1.0, help="Ray CPUs each replica reserves (--threads defaults to it)"
    )
    ray.add_argument(
        "--router",
        choices=("prefix", "pow2"),
        default=None,
        help="prefix: a prompt goes to the replica holding its prefix (default); pow2: Serve's default router",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        extra: dict[str, Any] = {} if args.threads is None else {"n_threads": args.threads}
        speculative = _speculative(args.speculative, args.n_ctx)

        def config_for(path: str | None) -> EngineConfig:
            return EngineConfig(
                path,
                n_ctx=args.n_ctx,
                max_concurrency=args.max_concurrency,
                chat_template=args.chat_template,
                prefix_cache_tokens=args.prefix_cache_tokens,
                prefix_cache_exact=args.prefix_cache_exact,
                speculative=speculative,
                step_target_ms=args.step_target_ms,
                **extra,
            )

        served = served_models(args.model, args.model_name, args.lora, args.max_loaded_models, config_for)
        config, model_name = served if isinstance(served, tuple) else (served, None)
        settings = ServerSettings(
            model_name=model_name,
            api_key=args.api_key,
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            cors_origins=tuple(args.cors_origin or ()),
            metrics_public=args.metrics_public,
            keepalive_secs=args.sse_keepalive,
        )
        if args.shutdown_grace < 0:
            raise ValueError(f"--shutdown-grace must be >= 0, got {args.shutdown_grace}")
        ray_used = args.ray or args.replicas is not None or args.autoscale is not None or args.address is not None
        ray_used = ray_used or args.router is not None
        if ray_used:
            return _serve_on_ray(args, config, settings)
        app = create_app(config, settings)
    except (OxiLlamaError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # llama.cpp's own chatter (the oxillama_py.llama logger) only at --log-level debug.
    missing = _missing_backend(args.backend)
    if missing:
        print(f"error: --backend {args.backend} needs {missing}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, args.log_format)
    line = f"oxillama_py: serving on http://{args.host}:{args.port} ({args.backend})"
    print(startup_line(line, args.log_format), file=sys.stderr, flush=True)
    registry = None if isinstance(config, EngineConfig) else config  # ours to close once the server stopped
    try:
        if args.backend == "trio":
            _run_hypercorn(app, args.host, args.port, args.shutdown_grace, args.log_level, registry)
        else:
            uvloop = args.backend == "uvloop"
            _run_uvicorn(app, args.host, args.port, args.shutdown_grace, args.log_level, uvloop, registry)
    except KeyboardInterrupt:
        pass
    return 0


def _serve_on_ray(args: argparse.Namespace, config: EngineConfig | ModelRegistry, settings: ServerSettings) -> int:
    """Deploy on Ray; several models go to each replica's own registry, as their names and configs."""
    if not args.ray:
        raise ValueError("--replicas, --autoscale, --address and --router need --ray")
    if args.backend != "asyncio":
        raise ValueError("--backend does not apply with --ray: Serve runs each replica's own asyncio loop")
    try:
        from ..ray import RayServeConfig, serve_until_signal
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    autoscale = None
    if args.autoscale is not None:
        low, sep, high = args.autoscale.partition(":")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"--autoscale must be MIN:MAX (two integers), got {args.autoscale!r}")
        autoscale = (int(low), int(high))
    models: dict[str, Any] = {}
    if isinstance(config, ModelRegistry):
        names = config.names
        bases = tuple((name, config.config(name)) for name in names if config.parent(name) is None)
        lora = tuple((name, *config.config(name).lora[-1]) for name in names if config.parent(name) is not None)
        models = {"models": bases, "adapters": lora, "max_loaded_models": config.max_loaded}
        config = bases[0][1]
    ray_config = RayServeConfig(
        engine=config,
        settings=settings,
        **models,
        replicas=1 if args.replicas is None else args.replicas,
        autoscale=autoscale,
        num_cpus=args.num_cpus,
        n_threads=args.threads,
        router=args.router or "prefix",
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    serve_until_signal(ray_config, address=args.address, host=args.host, port=args.port)
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (argparse answers ``error: ...`` and exit 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _missing_backend(backend: str) -> str | None:
    """What to install for ``backend``, or None when it is there."""
    import importlib.util

    needs = {"asyncio": ["uvicorn"], "uvloop": ["uvicorn", "uvloop"], "trio": ["hypercorn", "trio"]}[backend]
    absent = [name for name in needs if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    extras = "server" + (",trio" if "trio" in absent else "") + (",uvloop" if "uvloop" in absent else "")
    return f"{', '.join(absent)}: pip install 'oxillama-py[{extras}]'"


async def _then_close(serve: Callable[[], Awaitable[None]], registry: ModelRegistry | None) -> None:
    """Serve, then close the registry the command built (the app closes only what it built itself)."""
    try:
        await serve()
    finally:
        if registry is not None:
            with anyio.CancelScope(shield=True):
                await registry.aclose()


def _run_uvicorn(
    app: Any, host: str, port: int, grace: float, log_level: str, uvloop: bool, registry: ModelRegistry | None
) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # anyio.run below brings the loop (uvloop or not)
        lifespan="on",
        log_level=log_level,
        log_config=None,  # its loggers propagate to ours (configure_logging): one format for all lines
        timeout_graceful_shutdown=math.ceil(grace),
        access_log=False,  # the app logs a richer line per request
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM itself (graceful shutdown), then re-raises the signal to the
    # handler that was there before it: make that a no-op, so a clean shutdown exits with 0.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: None)
    anyio.run(_then_close, server.serve, registry, backend="asyncio", backend_options={"use_uvloop": uvloop})
    if not server.started:
        raise SystemExit(1)  # uvicorn logged why (port in use, startup failed)


def _run_hypercorn(
    app: Any, host: str, port: int, grace: float, log_level: str, registry: ModelRegistry | None
) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = grace
    config.loglevel = log_level.upper()
    config.accesslog = None  # the app logs a richer line per request
    errors = logging.getLogger("hypercorn.error")  # propagates to ours (configure_logging)
    errors.setLevel(log_level.upper())
    config.errorlog = errors

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def shutdown_trigger() -> None:
                async for _ in signals:
                    return

            await serve(app, config, shutdown_trigger=shutdown_trigger)

    anyio.run(_then_close, run, registry, backend="trio")


def _speculative(value: str | None, n_ctx: int) -> PromptLookup | EngineConfig | None:
    """``--speculative``: ``lookup``, or the path of a draft model (its context as large as the target's)."""
    if value is None:
        return None
    if value == "lookup":
        return PromptLookup()
    return EngineConfig(value, n_ctx=n_ctx)
