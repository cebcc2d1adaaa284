"""Request ids and logs: the ASGI middleware every request passes first, and the process's log setup.

Each request gets an id, the client's ``X-Request-Id`` when it sent a sane
one, else a new one. It goes back on every response (errors, 404s and streams
included) and sits in a context variable while the request runs: a logging
filter adds it to every record logged meanwhile (tasks and worker threads
started by the request copy the context, on asyncio and trio alike). When the
request ends, one line says what it was (``oxillama_py.server.access`` at
INFO), as text or as JSON (``--log-format json``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

__all__ = [
    "JsonFormatter",
    "RequestContext",
    "RequestIdFilter",
    "RequestInfo",
    "configure_logging",
    "current_request",
    "startup_line",
]

_log = logging.getLogger("oxillama_py.server")
_access = logging.getLogger("oxillama_py.server.access")
_current: ContextVar[RequestInfo | None] = ContextVar("oxillama_py_request", default=None)
_SANE_ID = re.compile(r"[\x21-\x7e]{1,128}")
"""Visible ASCII only: a client's id must not break a header or forge a log line."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


@dataclass(slots=True)
class RequestInfo:
    """What the request's log line says; the handlers and the metrics tap fill in the tokens."""

    id: str
    method: str
    path: str
    route: str | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None
    cancelled: bool = False
    started: float = field(default_factory=time.perf_counter)

    def fields(self) -> dict[str, Any]:
        ttft = self.time_to_first_token
        return {
            "request_id": self.id,
            "method": self.method,
            "route": self.route or _printable(self.path),
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "time_to_first_token": None if ttft is None else round(ttft, 6),
            "total_secs": round(time.perf_counter() - self.started, 6),
            "cancelled": self.cancelled,
        }


def _printable(path: str) -> str:
    """A path a client chose, with no character that could fake a second log line."""
    if path.isprintable():
        return path
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path)


def current_request() -> RequestInfo | None:
    """The request being served by the calling task (``None`` outside one)."""
    return _current.get()


class RequestContext:
    """Gives each HTTP request its id, counts its answer (``on_response(endpoint, status)``), logs its line.

    It is the outermost middleware, so an error no handler caught is answered
    here (a 500 in OpenAI's shape) and still carries the id.
    """

    def __init__(self, app: ASGIApp, on_response: Callable[[str, int], None] | None = None) -> None:
        self.app = app
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given is not None and _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        info = RequestInfo(request_id, scope.get("method", ""), scope.get("path", ""))
        raw_id = request_id.encode("ascii")
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                info.status = message["status"]
                info.route = getattr(scope.get("route"), "path", None)
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", raw_id)]}
                if self.on_response is not None:
                    self.on_response(info.route or "unmatched", info.status)
            await send(message)

        token = _current.set(info)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            _log.exception("the request failed")
            if started:
                raise
            await APIError(500, "internal server error", type="server_error").response()(scope, receive, send_with_id)
        finally:
            if _access.isEnabledFor(logging.INFO):
                log_request(info)
            _current.reset(token)


def log_request(info: RequestInfo) -> None:
    fields = info.fields()
    ttft = fields["time_to_first_token"]
    message = (
        f"{fields['method']} {fields['route']} {fields['status']} prompt_tokens={fields['prompt_tokens']} "
        f"completion_tokens={fields['completion_tokens']} ttft={'-' if ttft is None else f'{ttft:.3f}s'} "
        f"total={fields['total_secs']:.3f}s{' cancelled' if fields['cancelled'] else ''}"
    )
    _access.info(message, extra={"fields": fields})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (``-`` outside a request) to every record a handler formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = _current.get()
        record.request_id = info.id if info is not None else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, request id, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """One stderr handler on the root logger; the servers' own loggers propagate to it.

    ``level`` applies to the server's loggers (``info`` shows a line per
    request); llama.cpp's chatter (``oxillama_py.llama``) shows only at
    ``debug``.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("oxillama_py").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("oxillama_py.server").setLevel(level.upper())


def startup_line(message: str, log_format: str) -> str:
    """The line printed at startup (whatever the level), in the log's format so every line parses alike."""
    if log_format != "json":
        return message
    record = logging.LogRecord("oxillama_py.server", logging.INFO, __file__, 0, message, None, None)
    record.request_id = "-"
    return JsonFormatter().format(record)
