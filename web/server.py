"""The local web server of `invoke serve`: web/ over Python's http.server.

Serves the static front end (``.wasm`` as ``application/wasm``, no caching so a rebuild shows
at once) and one dynamic file, ``/config.json``: ``{"default": backend, "backends": [built]}``,
which tells the page what it may load. Python sources under web/ are never served.
"""

from __future__ import annotations

import errno
import json
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

WEB_DIR = Path(__file__).resolve().parent


class Handler(SimpleHTTPRequestHandler):
    """Static files from web/, plus /config.json."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
    }

    def __init__(self, *args, config: dict, **kwargs):
        self.config = config
        super().__init__(*args, directory=str(WEB_DIR), **kwargs)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/config.json":
            body = json.dumps(self.config).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path.endswith((".py", ".pyc")) or "__pycache__" in path:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        if urlsplit(self.path).path.endswith((".py", ".pyc")):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        super().do_HEAD()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        sys.stderr.write(f"[serve] {self.address_string()} {format % args}\n")


def make_server(host: str, port: int, default_backend: str, backends: list[str]) -> ThreadingHTTPServer:
    """A server bound to (host, port); port 0 picks a free one (see ``server.server_port``).

    Raises:
        SystemExit: the port is in use or the address cannot be bound, with a clear message.
    """
    config = {"default": default_backend, "backends": list(backends)}
    try:
        return ThreadingHTTPServer((host, port), partial(Handler, config=config))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(f"port {port} on {host} is already in use: pass --port to pick another") from e
        raise SystemExit(f"cannot listen on {host}:{port}: {e.strerror}") from e


def serve(host: str, port: int, default_backend: str, backends: list[str]) -> None:
    """Serve until Ctrl-C."""
    server = make_server(host, port, default_backend, backends)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    print(
        f"Serving web/ at http://{shown}:{server.server_port}/ "
        f"(backend {default_backend}; built: {', '.join(backends)}). Ctrl-C stops.",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()
