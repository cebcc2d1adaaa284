"""Errors in the OpenAI API's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can see goes through :class:`APIError`, so the body
never carries a stack trace or a file path, whatever went wrong; the engine's
errors are mapped onto it here, once, for plain and streamed responses alike.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from starlette.responses import JSONResponse

from ..errors import GrammarError, KvCacheFullError, OxiLlamaError

__all__ = ["APIError", "bad_request", "engine_errors", "server_error", "shutting_down"]

_T = TypeVar("_T")
_log = logging.getLogger("oxillama_py.server")


class APIError(Exception):
    """An HTTP error with the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")


async def engine_errors(work: Awaitable[_T]) -> _T:
    """The engine's errors as API errors: bad input is the client's (400), the rest is ours (500)."""
    try:
        return await work
    except KvCacheFullError as exc:
        raise APIError(400, str(exc), code="context_length_exceeded") from None
    except GrammarError as exc:
        raise bad_request(str(exc), "response_format", code="invalid_schema") from None
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc)) from None
    except OxiLlamaError as exc:
        raise server_error(exc) from None


def server_error(exc: OxiLlamaError) -> APIError:
    """The client learns that it failed; the log learns why."""
    _log.error("generation failed: %s: %s", type(exc).__name__, exc)
    return APIError(500, f"the generation failed: {type(exc).__name__}", type="server_error", code="generation_failed")
