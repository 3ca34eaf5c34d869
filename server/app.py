"""The local web server of `invoke serve`: a FastAPI application run by uvicorn that serves the
static page of web/, ``/config.json``, the listed weights files under ``/models/`` and the REST
API (``POST /api/predict``, its alias ``POST /api/mnist``, ``GET``/``POST /api/samples``).

What it answers, every status code and field, is described in one place: docs/api.md; a running
server also gives it as an OpenAPI document (``/openapi.json``) and as Swagger UI (``/docs``).
The parts: ``api`` (routes), ``schemas`` (pydantic documents), ``errors`` (the JSON errors),
``middleware`` (headers, body limit), ``native`` (``mnist_infer``), ``static`` (web/, /models/,
/config.json), ``settings``.

* ``make_server(...)``: the application on a bound socket, served by uvicorn in this process
  (``serve_forever()``, in a thread for tests and benchmarks; ``shutdown()`` stops it).
* ``serve(...)``: ``invoke serve``'s entry point, in this process or in ``workers`` processes.
* ``create_app(settings)``: the ASGI application; ``app_from_env()`` builds the same from the
  environment variable ``SETTINGS_ENV``: the factory each uvicorn worker process imports.

The server binds 127.0.0.1 unless told otherwise: the API is for this machine.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from importlib.util import find_spec

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from mnist_common.samples import StoreError

from . import api
from .api import PREDICT_PATH, SAMPLES_PATH
from .errors import ApiError, JsonResponse, api_error, error_response, invalid_request
from .middleware import BodyLimit, ResponseHeaders
from .native import NativeFunction, no_rule
from .settings import IN_PROCESS, SETTINGS_ENV, Settings, make_settings
from .static import Site


class App(FastAPI):
    """FastAPI with ``ResponseHeaders`` around everything, its own error pages included."""

    def build_middleware_stack(self) -> ASGIApp:
        return ResponseHeaders(super().build_middleware_stack())


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application serving ``settings`` (routes and answers: docs/api.md)."""
    app = App(
        title="MNIST in the browser: the local server",
        version="1",
        summary="Classify a handwritten digit with the project's Rust model; collect labelled drawings.",
        description="The page's own server (`invoke serve`); every status and field: docs/api.md.",
        redirect_slashes=False,
        redoc_url=None,
        default_response_class=JsonResponse,
    )
    app.state.settings = settings
    app.state.predict = NativeFunction("predict", settings.classify_pixels, settings.building)
    app.state.uncertainty = NativeFunction("uncertainty", settings.uncertainty, settings.building)
    rule = settings.not_a_digit or (None if settings.classify_pixels is None else no_rule)
    app.state.not_a_digit = NativeFunction("not_a_digit", rule, settings.building)
    app.state.samples = api.SampleDatabase(settings.samples_db)
    app.include_router(api.router)
    config = lambda: JsonResponse(settings.config)
    app.get("/config.json", summary="What the page may load: its builds and models")(config)
    app.head("/config.json", include_in_schema=False)(config)
    app.add_middleware(BodyLimit, max_body=settings.max_body)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StoreError, api.database_failed)
    app.add_exception_handler(HTTPException, api.http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, internal_error)
    site = Site(settings.model_files)

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        if api.is_api(scope["path"]):
            raise ApiError(HTTPStatus.NOT_FOUND, api.no_api(scope["path"]))
        await site(scope, receive, send)

    app.router.default = default
    return app


async def internal_error(request: Request, error: Exception) -> Response:
    """A bug outside ``api.in_thread``: one line to the client (uvicorn logs the traceback)."""
    message = "internal error (details in the server log)"
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, message, api=api.is_api(request.url.path))


def app_from_env() -> FastAPI:
    """The application of the ``Settings`` in the environment variable SETTINGS_ENV: what each
    uvicorn worker process imports (``uvicorn server.app:app_from_env --factory``).

    Raises:
        RuntimeError: SETTINGS_ENV is not set (``serve(workers=N)`` sets it).
    """
    text = os.environ.get(SETTINGS_ENV)
    if text is None:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start the workers through server.app.serve(workers=N)")
    return create_app(Settings.model_validate_json(text))


# --- the server -------------------------------------------------------------------------------


def uvicorn_options(log_requests: bool) -> dict:
    """uvicorn's settings for this server: the pure-Python h11 protocol (whatever else is
    installed, so the behaviour documented in docs/api.md holds), a listen backlog that takes
    bursts of parallel clients, the access log when ``log_requests``."""
    return {
        "http": "h11",
        "lifespan": "off",
        "backlog": 128,
        "access_log": log_requests,
        "log_level": "info" if log_requests else "warning",
        "timeout_graceful_shutdown": 5,
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one.

    Made with ``proto=IPPROTO_TCP``, as uvicorn makes its own: only then does asyncio set
    TCP_NODELAY on each accepted connection. Without it, Nagle's algorithm holds a response's
    body back until the client acknowledges its headers, which a client does after its delayed-ACK
    timer (40 ms on Linux) on a kept-alive connection: every request but a connection's first
    took 44 ms here, the page's twenty files and each API call alike.

    Raises:
        SystemExit: the port is in use or the address cannot be bound, with a clear message.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(f"port {port} on {host} is already in use: pass --port to pick another") from e
        raise SystemExit(f"cannot listen on {host}:{port}: {e.strerror}") from e
    return sock


class Server:
    """One uvicorn server of ``app`` on a socket bound (and listening) at construction, so that
    ``server_port`` is known and clients queue until ``serve_forever`` runs.

    ``serve_forever()`` blocks until ``shutdown()`` (from another thread) or Ctrl-C;
    ``server_close()`` closes the socket. ``config`` is the /config.json document it answers
    (a live dict: changing it changes the answer).
    """

    def __init__(self, app: FastAPI, sock: socket.socket, log_requests: bool = True) -> None:
        import uvicorn

        self.app = app
        self.socket = sock
        self.server_port: int = sock.getsockname()[1]
        self.config: dict = app.state.settings.config
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(log_requests)))
        self._started = threading.Event()
        self._done = threading.Event()

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until ``shutdown()``; ``poll_interval`` is ignored (http.server's argument)."""
        self._started.set()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 30) -> None:
        """Stop ``serve_forever`` (open connections get up to 5 s to finish) and wait for it."""
        self._uvicorn.should_exit = True
        if self._started.is_set():
            self._done.wait(timeout)

    def server_close(self) -> None:
        """Close the listening socket."""
        self.socket.close()


def make_server(host: str, port: int, default_backend: str, backends: list[str], *args, **kwargs) -> Server:
    """A server of ``make_settings(default_backend, backends, *args, **kwargs)`` (those are
    ``classify_pixels``, ``max_body``, ``uncertainty``, ``not_a_digit``, ``models_dir``, ``embedded``,
    ``samples_db``, ``log_requests``, ``building``: see ``settings.make_settings``) bound to
    (host, port); port 0 picks a free one (see ``server.server_port``).

    Raises:
        SystemExit: the port is in use or the address cannot be bound, or ``models_dir`` is
            not a folder, with a clear message.
    """
    settings = make_settings(default_backend, backends, *args, **kwargs)
    return Server(create_app(settings), bind(host, port), settings.log_requests)


def serve(
    host: str,
    port: int,
    default_backend: str,
    backends: list[str],
    background: Callable[[Server], None] | None = None,
    workers: int = 1,
    **kwargs,
) -> None:
    """Serve until Ctrl-C; ``kwargs`` go to ``make_server``.

    ``background(server)``, when given, runs in a thread once the server listens: ``invoke
    serve`` builds what the page can do without there, and updates ``server.config["backends"]``
    (the /config.json answer) as builds finish.

    ``workers`` > 1 serves from that many uvicorn worker processes sharing the socket, each
    with the application of ``app_from_env`` (same settings, same SQLite file). What lives in
    this process cannot reach them: ``background``, ``building``, ``classify_pixels``,
    ``uncertainty`` and ``not_a_digit`` must be None (they answer with ``mnist_infer`` as it is
    installed).

    Raises:
        SystemExit: ``workers`` < 1, or > 1 with one of those given; as ``make_server``.
    """
    if workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {workers}")
    in_process = [name for name in IN_PROCESS if kwargs.get(name) is not None] + ["background"] * bool(background)
    if workers > 1 and in_process:
        raise SystemExit(
            f"{workers} worker processes cannot share {', '.join(in_process)} with this process: "
            "serve with one worker while something is being built"
        )
    if workers > 1:
        import uvicorn

        settings = make_settings(default_backend, backends, **kwargs)
        bind(host, port).close()  # a clear message for a port in use, before uvicorn starts
        announce(host, port, settings, workers)
        os.environ[SETTINGS_ENV] = settings.to_env()
        options = uvicorn_options(settings.log_requests)
        uvicorn.run("server.app:app_from_env", factory=True, host=host, port=port, workers=workers, **options)
        return
    server = make_server(host, port, default_backend, backends, **kwargs)
    announce(host, server.server_port, server.app.state.settings, workers)
    if background is not None:
        threading.Thread(target=background, args=(server,), name="builds", daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()


def announce(host: str, port: int, settings: Settings, workers: int) -> None:
    """Where the server answers, what it serves, and what answers 503 for now: lines on stdout."""
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    config = settings.config
    models = [m["name"] + (" (embedded)" if m["embedded"] else "") for m in config["models"]]
    lines = [
        f"Serving web/ at http://{shown}:{port}/ (backend {config['default']}; built: {', '.join(config['backends'])}; "
        f"models: {', '.join(models) or 'none'}{f'; {workers} worker processes' if workers > 1 else ''}). Ctrl-C stops."
    ]
    if settings.classify_pixels is None and find_spec("mnist_infer") is None:
        while_ = "while it is built in the background" if settings.building else "until it is built"
        lines.append(f"POST {PREDICT_PATH} answers 503 (the native module mnist_infer) {while_}.")
    lines.append(f"Samples saved from the page ({SAMPLES_PATH}) go to {settings.samples_db}.")
    lines.append(f"The API as OpenAPI: http://{shown}:{port}/openapi.json, and to try it out: /docs.")
    print("\n".join(lines), flush=True)
