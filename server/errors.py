"""The API's error answers: ``{"success": false, "error": "<message>"}`` (every status and its
meaning: docs/api.md), and the one place pydantic's and FastAPI's validation errors become a 400."""

from __future__ import annotations

import json
import sys
import traceback
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError


class ApiError(Exception):
    """A request the API answers with ``{"success": false, "error": message}`` and ``status``."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting client input in messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JsonResponse(JSONResponse):
    """JSON as ``json.dumps`` writes it (``", "`` and ``": "``), as the answers always were."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


def error_response(status: int, message: str, headers: dict[str, str] | None = None, api: bool = True) -> Response:
    """``{"success": false, "error": message}`` (``api``), else a plain-text page; 405 from a
    static path has no body."""
    if api:
        return JsonResponse({"success": False, "error": message}, status_code=status, headers=headers)
    text = "" if status == HTTPStatus.METHOD_NOT_ALLOWED else f"{int(status)} {message}\n"
    return PlainTextResponse(text, status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> str:
    """The first of pydantic's errors (``ValidationError.errors()``) as one line: the parameter
    or field it concerns, what was wrong and the value given (``samples: Input should be less than
    or equal to 1000, got '1001'``); our own checks' messages (value errors) as they are."""
    if not errors:
        return "invalid request"
    first = errors[0]
    kind, message = first.get("type"), str(first.get("msg", "invalid"))
    if kind == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', message)}"
    message = message.removeprefix("Value error, ")
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query"))
    value = first.get("input")
    if kind not in ("value_error", "missing") and isinstance(value, (str, int, float)):
        message += f", got {short_repr(value)}"
    return f"{where}: {message}" if where else message


def parse_json(model: type[BaseModel], body: bytes) -> Any:
    """``model`` from a JSON body (pydantic parses and checks it).

    Raises:
        RequestValidationError: not JSON, or not such a document (a 400: ``invalid_request``).
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


async def invalid_request(request: Request, error: RequestValidationError) -> Response:
    """Every validation error, of a declared parameter or of a body, is our 400 (not FastAPI's 422)."""
    return error_response(HTTPStatus.BAD_REQUEST, validation_message(list(error.errors())))


async def api_error(request: Request, error: ApiError) -> Response:
    """An ``ApiError`` as its JSON answer."""
    return error_response(error.status, error.message, error.headers)


def log_failure(request: Request) -> None:
    """The traceback of the exception being handled, on stderr (the client gets one line)."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "-"
    sys.stderr.write(
        f"[serve] {client} {request.method} {short_repr(request.url.path, 60)} failed:\n{traceback.format_exc()}"
    )
