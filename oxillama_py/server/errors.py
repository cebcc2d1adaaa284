"""Errors in the OpenAI API's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can see goes through :class:`APIError`, so the body
never carries a stack trace or a file path, whatever went wrong.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["APIError", "bad_request"]


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
