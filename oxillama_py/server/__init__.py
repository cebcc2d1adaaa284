"""The OpenAI-compatible HTTP server: ``create_app()`` and ``python -m oxillama_py serve``.

Needs the ``server`` extra (``pip install 'oxillama-py[server]'``): Starlette,
and uvicorn or hypercorn to run it. One module per concept: :mod:`.routes`
(the application, its lifespan and its handlers), :mod:`.admission`
(settings, key, body limit, 429), :mod:`.requests` and :mod:`.responses`
(OpenAI's shapes), :mod:`.sse` (event streams), :mod:`.jobs` (a request as
one engine call), :mod:`.errors` (OpenAI's error body), :mod:`.embeddings`
(embeddings, tokenize, detokenize), :mod:`.metrics` (``/metrics``),
:mod:`.observe` (request ids, the line per request), :mod:`.cli` (the
command).
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("oxillama_py.server needs Starlette: pip install 'oxillama-py[server]'") from exc

from .admission import ServerSettings
from .routes import create_app

__all__ = ["ServerSettings", "create_app"]
