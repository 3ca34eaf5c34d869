"""Two pure-ASGI middlewares: the headers of every response, and the one limit on request bodies
of the API (413, 408: docs/api.md)."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import is_api
from .errors import error_response

#: Sent with every response: they make the pages cross-origin isolated (`crossOriginIsolated`),
#: and only then does the browser give `performance.now()` its fine resolution (Chromium: 5 us
#: instead of 100 us), which timings of a ~0.3 ms predict need. Everything the pages load is
#: same-origin, so require-corp refuses nothing of ours.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}
#: The methods HTTP defines; any other gets 501, these 405 or 404 where a path does not take them.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
#: Largest request body accepted by default, in bytes.
MAX_BODY = 2_000_000
#: Seconds the API waits for the next piece of a request body before answering 408 (uvicorn
#: itself puts no time limit on a body).
BODY_TIMEOUT = 30.0


class ResponseHeaders:
    """``Cache-Control: no-cache`` (a rebuild shows at once) and the ISOLATION_HEADERS on every
    response; 501 for a method that is not in KNOWN_METHODS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-cache"
                headers.update(ISOLATION_HEADERS)
            await send(message)

        if scope["method"] not in KNOWN_METHODS:
            message = f"Unsupported method ({scope['method']!r})"
            response = error_response(HTTPStatus.NOT_IMPLEMENTED, message, api=is_api(scope["path"]))
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """The bodies of requests to /api/: at most ``max_body`` bytes, each piece within
    BODY_TIMEOUT seconds of the last.

    A larger Content-Length gets 413 at once (nothing is read, so ``Expect: 100-continue`` is
    never answered with 100). Reading a body (``request.body()``, ``request.form()``) raises
    HTTPException 413 once a chunked one grows past the limit, 408 when it stalls, and 400 when
    the client goes away before its end.
    """

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:  # uvicorn checked it is one number
            message = f"the body is {int(length)} bytes; the limit is {self.max_body}"
            await error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)(scope, receive, send)
            return
        size, done = 0, False

        async def limited() -> Message:
            nonlocal size, done
            if done:  # the body is read: what follows is http.disconnect, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT)
            except asyncio.TimeoutError:
                message = f"the body did not arrive within {BODY_TIMEOUT:g} s"
                raise HTTPException(HTTPStatus.REQUEST_TIMEOUT, message) from None
            if message["type"] == "http.disconnect":
                raise HTTPException(HTTPStatus.BAD_REQUEST, "the client closed the connection before the body ended")
            size += len(message.get("body", b""))
            if size > self.max_body:
                message = f"the body (chunked) grew past {self.max_body} bytes; the limit is {self.max_body}"
                raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)
            done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)
