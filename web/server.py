"""The local web server of `invoke serve`: web/ over Python's http.server, plus a prediction API.

Static part: the front end under web/ (``.wasm`` as ``application/wasm``, so the browser
compiles it while it downloads; no caching so a rebuild shows at once; cross-origin isolated,
see ISOLATION_HEADERS) and one dynamic file, ``/config.json``: ``{"default": backend,
"backends": [built]}``, which tells the page what it may load. Python sources under web/ are
never served. Other methods than GET/HEAD on a static path: 405 (with ``Allow: GET, HEAD``)
where the file exists, 404 where it does not; unknown methods: 501.

API part, ``POST /api/predict``, one digit per request, in either form:

* ``Content-Type: multipart/form-data`` with a file field ``image`` (any format Pillow reads,
  any size, ink dark on light or light on dark): it goes through the page's MNIST-style
  preprocessing (``trainer.preprocess``: crop to the ink, 20 px longer side, centre of mass
  at the centre of 28x28). ``curl -X POST -F image=@7.png http://127.0.0.1:8000/api/predict``
* ``Content-Type: application/json`` with ``{"pixels": [784 numbers]}``: a 28x28 image,
  row-major, 0..255, ink = 255, already MNIST-style (used as is, no preprocessing).

Answers, always JSON (``Content-Type: application/json``), never a stack trace:

* 200 ``{"predictions": {"all": [{"class_name": "zero", "label": 0, "probability": p}, ...10],
  "prediction": {the most probable entry}}, "success": true}``
* ``{"success": false, "error": "<message>"}`` with
  400 bad input (not JSON, no ``pixels``, not 784 numbers, a value that is not a finite number
  in 0..255, all pixels 0, not an image, a blank image, an image over ``MAX_IMAGE_SIDE`` (4096) px a side,
  no ``image`` field, a missing or unsupported Content-Type, a body shorter than its
  Content-Length), 404 any other path under ``/api/``,
  405 another method on ``/api/predict`` (``Allow: POST``), 408 the body did not arrive within
  ``Handler.timeout`` seconds, 411 no Content-Length (chunked bodies are not accepted),
  413 Content-Length above ``max_body`` (refused before the body is read), 503 the native
  classifier ``mnist_infer`` is not built, 500 anything unexpected (logged to stderr with its
  traceback; the client gets a one-line message).

The server binds 127.0.0.1 unless told otherwise: the API is for this machine.
"""

from __future__ import annotations

import errno
import io
import json
import math
import re
import socket
import sys
import threading
import time
import traceback
import warnings
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

WEB_DIR = Path(__file__).resolve().parent

PREDICT_PATH = "/api/predict"
#: Largest request body accepted by default, in bytes (``make_server(max_body=...)``).
MAX_BODY = 2_000_000
#: Input layout of the classifier: 28x28 pixels, row-major.
NUM_PIXELS = 784
#: Most parts (fields, nested parts) a multipart/form-data body may have: the email parser
#: takes about 0.1 ms a part, so 2 MB of empty parts would hold the server for half a minute.
MAX_FORM_PARTS = 32
#: Largest image side accepted, in pixels (the preprocessing's cost grows with the image: a
#: 4096x4096 RGB image takes about 1.5 s and 0.7 GB; a 49 kB PNG of 10,000,000x4 px would take 5 GB).
MAX_IMAGE_SIDE = 4096
#: Images preprocessed at once; more wait their turn (bounds the memory: 0.7 GB each at most).
PREPROCESS_SLOTS = 4
_preprocess_slots = threading.BoundedSemaphore(PREPROCESS_SLOTS)
#: After refusing a request without reading its body, read and drop at most this much of it
#: (for at most LINGER_SECONDS), so that a client still sending sees the answer, not a reset.
LINGER_BYTES = 64 << 20
LINGER_SECONDS = 2.0
#: Sent with every response: they make the pages cross-origin isolated (`crossOriginIsolated`),
#: and only then does the browser give `performance.now()` its fine resolution (Chromium: 5 us
#: instead of 100 us), which timings of a ~0.3 ms predict need. Everything the pages load is
#: same-origin, so require-corp refuses nothing of ours.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}

#: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities.
ClassifyPixels = Callable[[np.ndarray], np.ndarray]


class ApiError(Exception):
    """A request the API answers with ``{"success": false, "error": message}`` and ``status``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting client input in messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pixels_from_json(body: bytes) -> np.ndarray:
    """``{"pixels": [784 numbers 0..255]}`` -> (784,) float32; ApiError 400 on anything else.

    Numbers are JSON integers or finite floats (booleans are not numbers here).
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF, over-long integers
        raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {e}") from None
    if not isinstance(document, dict) or "pixels" not in document:
        raise ApiError(HTTPStatus.BAD_REQUEST, 'expected a JSON object {"pixels": [784 numbers 0..255]}')
    pixels = document["pixels"]
    if not isinstance(pixels, list):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"pixels must be a list of {NUM_PIXELS} numbers: {short_repr(pixels)}")
    if len(pixels) != NUM_PIXELS:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"pixels must hold {NUM_PIXELS} numbers (28x28, row-major), got {len(pixels)}",
        )
    for i, value in enumerate(pixels):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"pixels[{i}] is not a number: {short_repr(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"pixels[{i}] is not finite: {value}")
        if not 0 <= value <= 255:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"pixels[{i}] is {short_repr(value)}, outside 0..255")
    if not any(pixels):
        raise ApiError(HTTPStatus.BAD_REQUEST, "the pixels are all 0, a blank drawing: no ink to classify")
    return np.asarray(pixels, dtype=np.float32)


def image_from_multipart(content_type: str, body: bytes) -> bytes:
    """The bytes of the ``image`` field of a multipart/form-data body; ApiError 400 if none.

    Parsed with the standard library's email parser (the form is a MIME multipart message);
    the first field named ``image`` wins. At most MAX_FORM_PARTS parts.
    """
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")  # http.client decoded it so
    try:
        message = BytesParser(form_part_counter(), policy=HTTP).parsebytes(head + body)
    except RecursionError:  # parts nested in parts, each with its own boundary
        raise ApiError(HTTPStatus.BAD_REQUEST, "the form nests multipart parts too deeply") from None
    if not message.get_boundary():
        raise ApiError(HTTPStatus.BAD_REQUEST, "multipart/form-data without a boundary parameter")
    names = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name != "image":
            names.append(name)
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the image field is not a file")
        if not data:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the image field is empty")
        return data
    found = ", ".join(short_repr(n, 20) for n in names[:5]) or "none"
    raise ApiError(HTTPStatus.BAD_REQUEST, f"no form field named 'image' (fields found: {found})")


def form_part_counter() -> Callable[..., EmailMessage]:
    """A message factory for the email parser that refuses a form of more than MAX_FORM_PARTS parts."""
    made = -1  # the parser makes one message to try the factory out

    def factory(policy=HTTP) -> EmailMessage:
        nonlocal made
        made += 1
        if made > MAX_FORM_PARTS + 1:  # the parts and the form itself
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the form has more than {MAX_FORM_PARTS} parts")
        return EmailMessage(policy=policy)

    return factory


def pixels_from_image(data: bytes) -> np.ndarray:
    """An image file -> (784,) float32 MNIST-style pixels; ApiError 400 for non-images and blanks."""
    from trainer import classify, preprocess  # imported on first use: `invoke serve` starts without them

    size = image_size(data)
    if size and max(size) > MAX_IMAGE_SIDE:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"the image is {size[0]}x{size[1]} px; the API takes at most {MAX_IMAGE_SIDE} px a side",
        )
    with _preprocess_slots:
        try:
            return classify.preprocess_file(data)
        except preprocess.BlankImageError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the image is blank: no ink to classify") from None
        except preprocess.ImageError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"cannot use the image field ({e})") from None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header (nothing is decoded), None if unreadable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the size check is ours
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # noqa: BLE001 (load_ink then says what is wrong with the file)
        return None


class Classifier:
    """``classify_pixels``, or the native ``mnist_infer.predict`` imported on first use.

    Calling it with (N, 784) float32 returns (N, 10) float32 probabilities, or raises ApiError
    503 when the native module is not built (the import is tried again on the next call).
    """

    def __init__(self, classify_pixels: ClassifyPixels | None = None) -> None:
        self._classify = classify_pixels

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        classify = self._classify or self._native()
        probabilities = np.asarray(classify(pixels), dtype=np.float32)
        if probabilities.shape != (len(pixels), 10):
            raise RuntimeError(f"the classifier returned shape {probabilities.shape} for {len(pixels)} images")
        return probabilities

    def _native(self) -> ClassifyPixels:
        try:
            import mnist_infer
        except ImportError as e:
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the native classifier mnist_infer is not built ({e}): "
                "run `./dev serve` (or `invoke setup` in the venv), which builds it, then retry",
            ) from None
        self._classify = mnist_infer.predict
        return self._classify


class Handler(SimpleHTTPRequestHandler):
    """Static files from web/, /config.json, and POST /api/predict (see the module docstring)."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
    }
    body_read = False  # set per request: whether the body has been read off the socket
    #: Seconds a client may stay silent (while sending its request) before it is dropped.
    timeout = 30

    def __init__(self, *args, config: dict, classifier: Classifier, max_body: int, log_requests: bool, **kwargs):
        self.config = config
        self.classifier = classifier
        self.max_body = max_body
        self.log_requests = log_requests
        super().__init__(*args, directory=str(WEB_DIR), **kwargs)

    # --- dispatch -------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.url_path()
        if is_api(path):
            self.api()
        elif path == "/config.json":
            self.reply_json(HTTPStatus.OK, self.config)
        elif is_hidden(path):
            self.send_error(HTTPStatus.NOT_FOUND)
        else:
            super().do_GET()

    def do_HEAD(self) -> None:
        path = self.url_path()
        if is_api(path):
            self.api()
        elif is_hidden(path):
            self.send_error(HTTPStatus.NOT_FOUND)
        else:
            super().do_HEAD()

    def do_POST(self) -> None:
        if is_api(self.url_path()):
            self.api()
        else:
            self.refuse_static_write()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_POST

    def url_path(self) -> str:
        return urlsplit(self.path).path

    def refuse_static_write(self) -> None:
        """405 for a method other than GET/HEAD on a static file that exists, else 404."""
        path = self.url_path()
        exists = path == "/config.json" or (not is_hidden(path) and Path(self.translate_path(self.path)).exists())
        if exists:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)
        self.linger()

    # --- the API --------------------------------------------------------------------------

    def api(self) -> None:
        """Answer a request under /api/ with JSON, whatever happens."""
        try:
            if self.url_path() != PREDICT_PATH:
                path = short_repr(self.url_path(), 60)
                raise ApiError(HTTPStatus.NOT_FOUND, f"no API at {path}; try POST {PREDICT_PATH}")
            if self.command != "POST":
                raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{PREDICT_PATH} takes POST, not {self.command}")
            self.reply_json(HTTPStatus.OK, self.predict())
        except ApiError as e:
            self.reply_error(e.status, e.message)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client is gone or stalled while we answered
        except Exception:
            self.log_error("POST %s failed:\n%s", PREDICT_PATH, traceback.format_exc())
            message = "internal error while predicting (details in the server log)"
            self.reply_error(HTTPStatus.INTERNAL_SERVER_ERROR, message)

    def predict(self) -> dict:
        """Read, check and classify the request body; returns the 200 payload."""
        body = self.read_body()
        content_type = self.headers.get("Content-Type")
        if content_type is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "no Content-Type: send multipart/form-data or application/json")
        kind = self.headers.get_content_type()
        if kind == "application/json":
            pixels = pixels_from_json(body)
        elif kind == "multipart/form-data":
            pixels = pixels_from_image(image_from_multipart(content_type, body))
        else:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"unsupported Content-Type {short_repr(content_type, 60)}: "
                "send multipart/form-data (field image) or application/json ({\"pixels\": [...]})",
            )
        probabilities = self.classifier(pixels.reshape(1, NUM_PIXELS))
        from trainer.classify import predictions_payload  # imported on first use, like preprocess

        return predictions_payload(probabilities[0])

    def read_body(self) -> bytes:
        """The request body, by its Content-Length (411 without one, 413 above max_body)."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required (chunked bodies are not accepted)")
        if not re.fullmatch(r"\s*[0-9]+\s*", length):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"Content-Length is not a number of bytes: {short_repr(length)}")
        size = int(length)
        if size > self.max_body:
            message = f"the body is {size} bytes; the limit is {self.max_body}"
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)
        if self.headers.get("Expect", "").lower() == "100-continue" and self.request_version == "HTTP/1.1":
            self.handle_expect_100()  # curl waits a second for this before sending a body > 1 MB
        try:
            body = self.rfile.read(size)
        except TimeoutError:
            raise ApiError(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {self.timeout} s") from None
        self.body_read = True
        if len(body) != size:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {size} bytes (Content-Length)")
        return body

    # --- replies --------------------------------------------------------------------------

    def reply_json(self, status: HTTPStatus, payload: dict, headers: dict[str, str] | None = None) -> None:
        """Send ``payload`` as the JSON answer (no body for HEAD)."""
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_error(self, status: HTTPStatus, message: str) -> None:
        """``{"success": false, "error": message}`` with ``status``; then drops an unread body."""
        headers = {"Allow": "POST"} if status == HTTPStatus.METHOD_NOT_ALLOWED else None
        self.reply_json(status, {"success": False, "error": message}, headers)
        self.linger()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unknown method...): JSON under /api/."""
        # The path, even when the request line was refused before http.server stored it.
        path = getattr(self, "path", None) or (getattr(self, "requestline", "").split() + ["", ""])[1]
        if is_api(urlsplit(path).path):
            self.close_connection = True
            self.reply_error(HTTPStatus(code), message or HTTPStatus(code).phrase)
        else:
            super().send_error(code, message, explain)

    def linger(self) -> None:
        """If the request announced a body that was not read, read and drop it before closing.

        Closing a socket with unread data resets the connection, and a client still sending
        its body would get that reset instead of our answer (a 413, say).
        """
        headers = getattr(self, "headers", None)  # None: the request line itself was refused
        announced = headers is not None and (headers.get("Content-Length") or headers.get("Transfer-Encoding"))
        if self.body_read or not announced:
            return
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            dropped = 0
            while dropped < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.rfile.read1(1 << 16)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:  # reset, timeout: the answer is out, the connection ends either way
            pass

    def handle_one_request(self) -> None:
        self.body_read = False
        super().handle_one_request()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        sys.stderr.write(f"[serve] {self.address_string()} {format % args}\n")

    def log_request(self, code="-", size="-") -> None:
        if self.log_requests:
            super().log_request(code, size)


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def is_hidden(path: str) -> bool:
    """Python sources and caches under web/ are never served."""
    return path.endswith((".py", ".pyc")) or "__pycache__" in path


class Server(ThreadingHTTPServer):
    """One thread per connection; a listen backlog that takes bursts of parallel clients."""

    request_queue_size = 128


def make_server(
    host: str,
    port: int,
    default_backend: str,
    backends: list[str],
    classify_pixels: ClassifyPixels | None = None,
    max_body: int = MAX_BODY,
    *,
    log_requests: bool = True,
) -> ThreadingHTTPServer:
    """A server bound to (host, port); port 0 picks a free one (see ``server.server_port``).

    Args:
        default_backend, backends: what ``/config.json`` tells the page.
        classify_pixels: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities, used by
            POST /api/predict; None: ``mnist_infer.predict`` (the native Rust module), imported
            on the first request (503 while it is not built).
        max_body: largest request body in bytes; larger ones get 413 before being read.
        log_requests: one stderr line per request (errors are logged regardless).

    Raises:
        SystemExit: the port is in use or the address cannot be bound, with a clear message.
    """
    config = {"default": default_backend, "backends": list(backends)}
    handler = partial(
        Handler, config=config, classifier=Classifier(classify_pixels), max_body=max_body, log_requests=log_requests
    )
    try:
        return Server((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(f"port {port} on {host} is already in use: pass --port to pick another") from e
        raise SystemExit(f"cannot listen on {host}:{port}: {e.strerror}") from e


def serve(host: str, port: int, default_backend: str, backends: list[str], **kwargs) -> None:
    """Serve until Ctrl-C; ``kwargs`` go to make_server (classify_pixels, max_body)."""
    server = make_server(host, port, default_backend, backends, **kwargs)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    print(
        f"Serving web/ at http://{shown}:{server.server_port}/ "
        f"(backend {default_backend}; built: {', '.join(backends)}). Ctrl-C stops.",
        flush=True,
    )
    if kwargs.get("classify_pixels") is None and find_spec("mnist_infer") is None:
        print(f"POST {PREDICT_PATH} answers 503 until the native module mnist_infer is built.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()
