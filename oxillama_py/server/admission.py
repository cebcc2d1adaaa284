"""What a request must pass before it reaches the engine, and the settings that say how.

:class:`ServerSettings` is what the HTTP layer adds to the engine (names,
limits, the key); :func:`authorize` checks the bearer key, :func:`read_json`
the body limit, and :class:`Admission` counts the sequences let in against
slots plus queue, so a request beyond them gets 429 at once instead of a long
wait.
"""

from __future__ import annotations

import hmac
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from ..config import EngineConfig
from ..llama.model import resolve_model_path
from .errors import APIError, bad_request

__all__ = ["Admission", "ServerSettings", "authorize", "read_json"]


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTP layer adds to the engine: names, limits, the key.

    ``max_queue`` requests may wait for a slot beyond the engine's
    ``max_concurrency`` ones that decode (each choice of ``n`` counts); more get
    429. ``api_key`` (or ``OXILLAMA_API_KEY``) is required as a bearer token on
    ``/v1/*`` when set.
    """

    model_name: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 512
    """A chat's ``max_tokens`` when the client gives none (capped by what fits the context)."""
    retry_after_secs: int = 1
    replica: str | None = None
    """Which copy of the app this is (set by :mod:`oxillama_py.ray`): shown in ``/health``."""
    cors_origins: tuple[str, ...] = ()
    """Origins whose web pages may call the server (CORS); ``("*",)`` allows any; empty: no CORS headers."""
    metrics_public: bool = False
    """Serve ``/metrics`` without the API key (for a Prometheus that has none)."""
    keepalive_secs: float = 15.0
    """A stream sends a comment line after this many seconds with nothing else sent (0: never)."""

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_body_bytes", "default_max_tokens", "retry_after_secs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < (0 if name == "max_queue" else 1):
                raise ValueError(f"{name} must be positive, got {value}")
        if isinstance(self.cors_origins, str) or not all(isinstance(o, str) and o for o in self.cors_origins):
            raise TypeError("cors_origins must be a tuple of non-empty origin strings")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if not isinstance(self.metrics_public, bool):
            raise TypeError(f"metrics_public must be a bool, got {type(self.metrics_public).__name__}")
        keepalive = self.keepalive_secs
        if isinstance(keepalive, bool) or not isinstance(keepalive, (int, float)) or not 0 <= keepalive < math.inf:
            raise ValueError(f"keepalive_secs must be a number >= 0 (0: off), got {keepalive!r}")
        for name in ("model_name", "api_key", "replica"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty str or None")

    def key(self) -> str | None:
        """The key in force: the setting's, else ``OXILLAMA_API_KEY``'s (read once, when the app is built)."""
        return self.api_key or os.environ.get("OXILLAMA_API_KEY") or None

    def served_name(self, config: EngineConfig) -> str:
        """The name clients pass as ``model``: the setting's, else the model file's stem."""
        return self.model_name or Path(resolve_model_path(config.model_path)).stem


@dataclass
class Admission:
    """Counts the sequences admitted (decoding or queued) against slots + queue."""

    capacity: int
    admitted: int = 0
    served: int = 0

    def reserve(self, count: int, retry_after: int) -> None:
        if self.admitted + count > self.capacity:
            raise APIError(
                429,
                f"the server is busy: {self.admitted} sequences are decoding or queued (limit {self.capacity}); "
                "retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after)},
            )
        self.admitted += count

    def release(self, count: int) -> None:
        self.admitted -= count
        self.served += 1


def authorize(request: Request, key: str | None) -> None:
    """Compare in constant time, so the answer's timing does not leak the key."""
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8")):
        raise APIError(
            401,
            "missing or incorrect API key: send it as 'Authorization: Bearer <key>'",
            code="invalid_api_key",
        )


async def read_json(request: Request, limit: int) -> object:
    """The body as JSON, counted as it arrives: a client cannot make us buffer more than ``limit``."""
    too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None
