"""The OpenAI-compatible HTTP server: ``create_app()`` and ``python -m oxillama_py serve``.

Needs the ``server`` extra (``pip install 'oxillama-py[server]'``): Starlette,
and uvicorn or hypercorn to run it.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("oxillama_py.server needs Starlette: pip install 'oxillama-py[server]'") from exc

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
