"""The local web server of `invoke serve`: a FastAPI application run by uvicorn that serves the
static page of web/, ``/config.json``, the listed weights files under ``/models/`` and the REST
API (``POST /api/predict``, its alias ``POST /api/mnist``, ``GET``/``POST /api/samples``).

What it answers, every status code and field, is described in one place:
docs/api.md ("The REST API" and "Everything `invoke serve` answers"); a running server also
gives it as an OpenAPI document (``/openapi.json``, built from the pydantic models below) and
as Swagger UI (``/docs``).

* ``make_server(...)``: the application on a bound socket, served by uvicorn in this process
  (``serve_forever()``, in a thread for tests and benchmarks; ``shutdown()`` stops it).
* ``serve(...)``: ``invoke serve``'s entry point, in this process or in ``workers`` processes.
* ``create_app(settings)``: the ASGI application; ``app_from_env()`` builds the same from the
  environment variable ``SETTINGS_ENV``: the factory each uvicorn worker process imports.

The server binds 127.0.0.1 unless told otherwise: the API is for this machine.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import io
import json
import math
import mimetypes
import os
import re
import socket
import stat
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from mnist_common.constants import NUM_PIXELS
from mnist_common.paths import DEFAULT_WEIGHTS as EMBEDDED_WEIGHTS
from mnist_common.paths import MODELS_DIR, WEB_DIR
from mnist_common.samples import DEFAULT_DB, MAX_CANVAS_SIDE, MAX_TEXT, SampleStore, StoreError, open_store
from mnist_common.samples import validate as validate_sample

# WEB_DIR: the static page. MODELS_DIR: the weights files listed in /config.json by default;
# EMBEDDED_WEIGHTS: the one the wasm embeds by default (``invoke serve`` passes its own:
# ``--models`` and ``tasks.weights_path()``).
#: URL prefix of the listed weights files (``models/<file name>`` relative to the page).
MODELS_PATH = "/models/"

PREDICT_PATH = "/api/predict"
#: The seed project's name of the same endpoint: ``curl -X POST -F image=@7.png .../api/mnist``.
MNIST_PATH = "/api/mnist"
SAMPLES_PATH = "/api/samples"
#: The methods each API path takes: the ``Allow`` header of its 405, and its message's words.
API_METHODS = {PREDICT_PATH: "POST", MNIST_PATH: "POST", SAMPLES_PATH: "GET, HEAD, POST"}
API_TAKES = {PREDICT_PATH: "POST", MNIST_PATH: "POST", SAMPLES_PATH: "GET or POST"}
#: The methods HTTP defines; any other gets 501, these 405 or 404 where a path does not take them.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
#: Samples per ``GET /api/samples`` page: the default and the most ``limit`` may ask for.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Most MC-dropout passes ``?samples=N`` may ask for (the native module's own limit).
MAX_SAMPLES = 1000
#: Seed of the MC-dropout masks: the same request always gets the same numbers.
UNCERTAINTY_SEED = 0
#: Largest request body accepted by default, in bytes (``make_server(max_body=...)``): a larger
#: Content-Length gets 413 before the body is read; a chunked body gets it once it passes this.
MAX_BODY = 2_000_000
#: Seconds the API waits for the next piece of a request body before answering 408.
BODY_TIMEOUT = 30.0
#: Most parts a multipart/form-data body may have (an image needs one; more is a client bug).
MAX_FORM_PARTS = 32
#: Largest image side accepted, in pixels (the preprocessing's cost grows with the image: a
#: 4096x4096 RGB image takes about 1.5 s and 0.7 GB; a 49 kB PNG of 10,000,000x4 px would take 5 GB).
MAX_IMAGE_SIDE = 4096
#: Images preprocessed at once; more wait their turn (bounds the memory: 0.7 GB each at most).
PREPROCESS_SLOTS = 4
_preprocess_slots = threading.BoundedSemaphore(PREPROCESS_SLOTS)
#: Sent with every response: they make the pages cross-origin isolated (`crossOriginIsolated`),
#: and only then does the browser give `performance.now()` its fine resolution (Chromium: 5 us
#: instead of 100 us), which timings of a ~0.3 ms predict need. Everything the pages load is
#: same-origin, so require-corp refuses nothing of ours.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}
#: Content types of the static files by extension (others: Python's mimetypes, else bytes).
#: ``.wasm`` as ``application/wasm`` lets the browser compile the module while it downloads.
CONTENT_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".html": "text/html",
    ".css": "text/css",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".safetensors": "application/octet-stream",
}
#: The environment variable that carries ``Settings`` (as JSON) to uvicorn's worker processes.
SETTINGS_ENV = "MNIST_SERVE_SETTINGS"

#: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities.
ClassifyPixels = Callable[[np.ndarray], np.ndarray]
#: ``(pixels, samples=N, seed=S) -> dict``, the contract of ``mnist_infer.uncertainty``: pixels
#: (784,) float32 0..255 (one image), N MC-dropout passes (1..1000), S the mask seed; returns
#: ``{"probabilities": (10,), "std": (10,), "entropy": float, "mutual_information": float,
#: "samples": N, "unsure": bool or None}`` (units and ranges: ``UncertaintyOut``).
UncertaintyFn = Callable[..., dict]
#: Building: what the server is waiting for, in words, with a rough time left in seconds (None:
#: no time, e.g. the build failed, which the words say); or None when nothing is being built.
#: ``invoke serve`` passes one while it builds the native module in the background.
Building = Callable[[], "tuple[str, float | None] | None"]


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


# --- the API's documents (pydantic): request checks and the OpenAPI schema -------------------


class PixelsIn(BaseModel):
    """``POST /api/predict``'s JSON body: one 28x28 image, already MNIST-style (used as is).

    Validation keeps the API's own messages (``pixels[3] is -1, outside 0..255``): the checks
    run before pydantic's (``check_pixels``), whose types then describe the schema.
    """

    model_config = ConfigDict(extra="ignore")

    pixels: Annotated[
        list[float],
        Field(
            min_length=NUM_PIXELS,
            max_length=NUM_PIXELS,
            description="784 numbers 0..255: 28x28, row-major, ink = 255 (not all 0)",
        ),
    ]

    @model_validator(mode="before")
    @classmethod
    def _check(cls, document: Any) -> Any:
        if not isinstance(document, dict) or "pixels" not in document:
            raise ValueError('expected a JSON object {"pixels": [784 numbers 0..255]}')
        check_pixels(document["pixels"])
        return document


def check_pixels(pixels: object) -> None:
    """Raise ValueError (the message names the first bad value) unless ``pixels`` is a list of
    784 JSON numbers (integers or finite floats; booleans are not numbers here) in 0..255, not
    all 0."""
    if not isinstance(pixels, list):
        raise ValueError(f"pixels must be a list of {NUM_PIXELS} numbers: {short_repr(pixels)}")
    if len(pixels) != NUM_PIXELS:
        raise ValueError(f"pixels must hold {NUM_PIXELS} numbers (28x28, row-major), got {len(pixels)}")
    for i, value in enumerate(pixels):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"pixels[{i}] is not a number: {short_repr(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"pixels[{i}] is not finite: {value}")
        if not 0 <= value <= 255:
            raise ValueError(f"pixels[{i}] is {short_repr(value)}, outside 0..255")
    if not any(pixels):
        raise ValueError("the pixels are all 0, a blank drawing: no ink to classify")


class ClassProbability(BaseModel):
    """One digit's entry in a prediction."""

    class_name: str = Field(description='"zero" .. "nine"')
    label: int = Field(ge=0, le=9)
    probability: float = Field(ge=0, le=1)


class Predictions(BaseModel):
    """The ten digits' probabilities and the most probable one."""

    all: list[ClassProbability] = Field(min_length=10, max_length=10, description="digits 0..9 in order, sum 1")
    prediction: ClassProbability = Field(description="the entry with the highest probability")


class UncertaintyOut(BaseModel):
    """MC dropout over ``samples`` forward passes with dropout on (mask seed 0: the same request
    gives the same numbers)."""

    probabilities: list[float] = Field(min_length=10, max_length=10, description="means of the passes' softmax")
    std: list[float] = Field(min_length=10, max_length=10, description="standard deviations of the passes' softmax")
    entropy: float = Field(ge=0, description="of the mean, in nats, 0..ln 10")
    mutual_information: float = Field(description="in nats, 0..entropy")
    samples: int = Field(ge=1, le=MAX_SAMPLES)
    unsure: bool | None = Field(description="null when the weights carry no calibrated threshold")


class PredictionOut(BaseModel):
    """200 of ``POST /api/predict``."""

    predictions: Predictions
    success: Literal[True]
    uncertainty: UncertaintyOut | None = Field(None, description="only with ?samples=N")


class ErrorOut(BaseModel):
    """Every error of the API (never a stack trace)."""

    success: Literal[False]
    error: str


Stroke = list[Annotated[tuple[float, float, float], Field(description="[x, y, t_ms]: canvas px, ms >= 0")]]


class SampleIn(BaseModel):
    """``POST /api/samples``'s body: one labelled drawing (no other key is accepted).

    The checks and their messages are ``mnist_common.samples.validate``'s (also what
    ``invoke samples --import`` checks), run before pydantic's, whose types give the schema.
    """

    model_config = ConfigDict(extra="forbid")

    label: int = Field(ge=0, le=9, description="the digit the writer meant")
    pixels: list[float] = Field(
        min_length=NUM_PIXELS, max_length=NUM_PIXELS, description="784 numbers 0..255, ink = 255; stored as uint8"
    )
    strokes: list[Stroke] = Field(min_length=1, max_length=1000, description="1..1000 strokes of >= 1 point")
    pen_width: float = Field(gt=0, le=MAX_CANVAS_SIDE, description="canvas px")
    canvas: tuple[int, int] = Field(description=f"[width, height], integers 1..{MAX_CANVAS_SIDE} px")
    writer: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    predicted: int | None = Field(None, ge=0, le=9, description="what the model said")
    model: str | None = Field(None, min_length=1, max_length=MAX_TEXT, description="the model that predicted")
    created_at: str | None = Field(None, description='UTC, "YYYY-MM-DDTHH:MM:SS.mmmZ" (default: now)')

    @model_validator(mode="before")
    @classmethod
    def _check(cls, document: Any) -> Any:
        validate_sample(document)  # ValueError naming the field
        return document


class SampleOut(SampleIn):
    """A stored sample, as ``GET /api/samples`` lists it."""

    id: int = Field(ge=1)
    created_at: str


class SamplesPage(BaseModel):
    """200 of ``GET /api/samples``."""

    samples: list[SampleOut]
    next: int | None = Field(description="the id to pass as after= for the next page; null on the last")
    total: int = Field(description="samples in the database")


class Saved(BaseModel):
    """201 of ``POST /api/samples``: the sample is committed to disk."""

    success: Literal[True]
    id: int = Field(ge=1)


def validation_message(error: ValidationError) -> str:
    """The first problem pydantic found, as one line (our own checks' messages as they are)."""
    first = error.errors(include_url=False)[0]
    message = first["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query"))
    return message if first["type"] == "value_error" or not where else f"{where}: {message}"


# --- reading a request ------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes.

    Raises:
        ApiError: 413 when its Content-Length is above ``limit`` (before anything is read) or a
            body without one grows past it; 408 when BODY_TIMEOUT seconds pass without the next
            piece; 400 when the client goes away before the end.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:  # uvicorn checked it is one number
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {length} bytes; the limit is {limit}")
    chunks, size = [], 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), BODY_TIMEOUT)
        except asyncio.TimeoutError:
            raise ApiError(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
        if message["type"] == "http.disconnect":
            raise ApiError(HTTPStatus.BAD_REQUEST, "the client closed the connection before the body ended")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            message = f"the body (chunked) grew past {limit} bytes; the limit is {limit}"
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def media_type(content_type: str | None) -> str | None:
    """``multipart/form-data; boundary=x`` -> ``multipart/form-data`` (lower case); None for none."""
    return None if content_type is None else content_type.split(";", 1)[0].strip().lower()


def pixels_from_json(body: bytes) -> np.ndarray:
    """``{"pixels": [784 numbers 0..255]}`` -> (784,) float32; ApiError 400 on anything else
    (``PixelsIn``; other keys are ignored)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF, over-long integers
        raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {e}") from None
    try:
        pixels = PixelsIn.model_validate(document).pixels
    except ValidationError as e:
        raise ApiError(HTTPStatus.BAD_REQUEST, validation_message(e)) from None
    return np.asarray(pixels, dtype=np.float32)


def image_from_multipart(content_type: str, body: bytes) -> bytes:
    """The bytes of the ``image`` field of a multipart/form-data body, exactly as sent (a file
    part or a plain field); the first field named ``image`` wins. ApiError 400 without one, for
    an empty one, a body that is not such a form, or more than MAX_FORM_PARTS parts."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(HTTPStatus.BAD_REQUEST, "multipart/form-data without a boundary parameter")
    parts: list[tuple[bytes | None, bytes]] = []  # (field name, data) of each complete part
    part: dict = {}

    def begin() -> None:
        if len(parts) >= MAX_FORM_PARTS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the form has more than {MAX_FORM_PARTS} parts")
        part.update(header=b"", value=b"", name=None, data=bytearray())

    def header_end() -> None:
        if part["header"].strip().lower() == b"content-disposition":
            part["name"] = parse_options_header(part["value"])[1].get(b"name")
        part.update(header=b"", value=b"")

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": lambda data, start, end: part.update(header=part["header"] + data[start:end]),
        "on_header_value": lambda data, start, end: part.update(value=part["value"] + data[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: part["data"].extend(data[start:end]),
        "on_part_end": lambda: parts.append((part["name"], bytes(part["data"]))),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        message = f"the body is not a multipart/form-data form with an image field ({e})"
        raise ApiError(HTTPStatus.BAD_REQUEST, message) from None
    for name, data in parts:
        if name == b"image":
            if not data:
                raise ApiError(HTTPStatus.BAD_REQUEST, "the image field is empty")
            return data
    names = [None if n is None else n.decode("utf-8", "replace") for n, _ in parts]
    found = ", ".join(short_repr(n, 20) for n in names[:5]) or "none"
    raise ApiError(HTTPStatus.BAD_REQUEST, f"no form field named 'image' (fields found: {found})")


def pixels_from_image(data: bytes) -> np.ndarray:
    """An image file -> (784,) float32 MNIST-style pixels; ApiError 400 for non-images and blanks."""
    from mnist_common import preprocess  # imported on first use: `invoke serve` starts without them

    from . import classify

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


def samples_from_query(query: str) -> int | None:
    """The ``samples`` parameter of a query string: None when absent, else an int 1..MAX_SAMPLES.

    Raises:
        ApiError: 400 for a value that is not a decimal integer in 1..MAX_SAMPLES (``abc``,
            ``0``, ``2.5``, ``-1``, empty) or for ``samples`` given more than once.
    """
    values = parse_qs(query, keep_blank_values=True).get("samples")
    if values is None:
        return None
    if len(values) > 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"samples is given {len(values)} times; give it once")
    text = values[0]
    # At most 7 digits before int(): the bound check then needs no huge integers.
    if not re.fullmatch(r"[0-9]{1,7}", text) or not 1 <= int(text) <= MAX_SAMPLES:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"samples must be an integer from 1 to {MAX_SAMPLES} (MC-dropout passes), got {short_repr(text)}",
        )
    return int(text)


def int_from_query(query: str, name: str, low: int, high: int, default: int) -> int:
    """The integer parameter ``name`` of a query string, ``default`` when absent.

    Raises:
        ApiError: 400 for a value that is not a decimal integer in low..high, or for ``name``
            given more than once.
    """
    values = parse_qs(query, keep_blank_values=True).get(name)
    if values is None:
        return default
    if len(values) > 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} is given {len(values)} times; give it once")
    text = values[0]
    # At most 19 digits before int(): the bound check then needs no huge integers.
    if not re.fullmatch(r"[0-9]{1,19}", text) or not low <= int(text) <= high:
        message = f"{name} must be an integer from {low} to {high}, got {short_repr(text)}"
        raise ApiError(HTTPStatus.BAD_REQUEST, message)
    return int(text)


def uncertainty_payload(result: dict, samples: int) -> dict:
    """The ``uncertainty`` object of the API answer from an ``UncertaintyFn`` result (plain
    Python types: lists of 10 floats, floats, an int, a bool or None).

    Raises:
        RuntimeError: the result does not hold 10 finite probabilities and 10 finite stds >= 0,
            finite entropy and mutual information, ``samples`` passes and a bool-or-None
            ``unsure`` (a broken uncertainty function: the API answers 500).
    """
    try:
        probabilities = np.asarray(result["probabilities"], dtype=np.float64)
        std = np.asarray(result["std"], dtype=np.float64)
        entropy = float(result["entropy"])
        mutual_information = float(result["mutual_information"])
        unsure, passes = result["unsure"], result["samples"]
    except (KeyError, TypeError, ValueError) as e:
        raise RuntimeError(f"the uncertainty function returned an unusable result ({e!r})") from None
    if probabilities.shape != (10,) or std.shape != (10,):
        raise RuntimeError(f"the uncertainty function returned shapes {probabilities.shape} and {std.shape}, not (10,)")
    values = np.concatenate([probabilities, std, [entropy, mutual_information]])
    if not np.isfinite(values).all() or (std < 0).any():
        raise RuntimeError("the uncertainty function returned non-finite values or a negative std")
    if passes != samples or not (unsure is None or isinstance(unsure, bool)):
        raise RuntimeError(f"the uncertainty function returned samples={passes!r}, unsure={unsure!r}")
    return {
        "probabilities": probabilities.tolist(),
        "std": std.tolist(),
        "entropy": entropy,
        "mutual_information": mutual_information,
        "samples": samples,
        "unsure": unsure,
    }


def native_module(building: Building | None = None):
    """The native module ``mnist_infer``, imported now or on a later call once it is installed.

    Raises:
        ApiError: 503 while it cannot be imported; the message says what is still being built
            and about how long it takes (from ``building``) and a ``Retry-After`` header comes
            with it, or how to build it when nothing is building it.
    """
    try:
        import mnist_infer
    except ImportError:
        # Installed since the last try (`invoke serve` builds it while the page is served): the
        # import system caches folder listings, so look again before giving up.
        importlib.invalidate_caches()
        try:
            import mnist_infer
        except ImportError as e:
            raise not_built(e, building() if building else None) from None
    return mnist_infer


def not_built(error: ImportError, building: tuple[str, float | None] | None) -> ApiError:
    """The 503 for a missing native module: what is being built and for how long, or how to build it."""
    if building is None:
        return ApiError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"the native classifier mnist_infer is not built ({error}): "
            "run `./dev serve` (or `invoke setup` in the venv), which builds it, then retry",
        )
    what, seconds_left = building
    if seconds_left is None:  # e.g. the build failed: ``what`` says so
        return ApiError(HTTPStatus.SERVICE_UNAVAILABLE, what)
    minutes = max(1, round(seconds_left / 60))
    return ApiError(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"{what}: about {minutes} min left; this API answers once it is done, without a restart",
        {"Retry-After": str(max(10, min(120, round(seconds_left))))},
    )


class Classifier:
    """``classify_pixels``, or the native ``mnist_infer.predict`` imported on first use.

    Calling it with (N, 784) float32 returns (N, 10) float32 probabilities, or raises ApiError
    503 when the native module is not built (the import is tried again on the next call).
    """

    def __init__(self, classify_pixels: ClassifyPixels | None = None, building: Building | None = None) -> None:
        self._classify = classify_pixels
        self._building = building

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        classify = self._classify or self._native()
        probabilities = np.asarray(classify(pixels), dtype=np.float32)
        if probabilities.shape != (len(pixels), 10):
            raise RuntimeError(f"the classifier returned shape {probabilities.shape} for {len(pixels)} images")
        return probabilities

    def _native(self) -> ClassifyPixels:
        self._classify = native_module(self._building).predict
        return self._classify


class Uncertainty:
    """``uncertainty``, or the native ``mnist_infer.uncertainty`` imported on first use.

    Calling it with (784,) float32 pixels and a number of passes 1..MAX_SAMPLES returns the
    API's ``uncertainty`` object (``uncertainty_payload``; masks seeded with UNCERTAINTY_SEED),
    or raises ApiError 503 when the native module is not built (tried again on the next call).
    """

    def __init__(self, uncertainty: UncertaintyFn | None = None, building: Building | None = None) -> None:
        self._uncertainty = uncertainty
        self._building = building

    def __call__(self, pixels: np.ndarray, samples: int) -> dict:
        uncertainty = self._uncertainty or self._native()
        return uncertainty_payload(uncertainty(pixels, samples=samples, seed=UNCERTAINTY_SEED), samples)

    def _native(self) -> UncertaintyFn:
        self._uncertainty = native_module(self._building).uncertainty
        return self._uncertainty


class Samples:
    """The sample database at ``path``, opened (created, migrated: ``mnist_common.samples.open_store``)
    on first use; ``store()`` raises ApiError 503 while it cannot be opened (tried again on the
    next call), with the reason."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store: SampleStore | None = None
        self._lock = threading.Lock()

    def store(self) -> SampleStore:
        with self._lock:  # one opener at a time: the others wait and get its store
            if self._store is None:
                try:
                    self._store = open_store(self.path)
                except StoreError as e:
                    raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot save or list samples: {e}") from None
            return self._store


@dataclass(frozen=True)
class ModelListing:
    """The weights files the server offers (``list_models``).

    Attributes:
        entries: config.json's ``models`` list (fields: docs/api.md), embedded one first.
        files: file name, as in each entry's ``url`` after ``models/`` -> the file served.
        embedded: the ``name`` of the embedded entry, None when it is not listed.
    """

    entries: list[dict]
    files: dict[str, Path]
    embedded: str | None


def warn(message: str) -> None:
    """One line on stderr, prefixed ``[serve]``."""
    sys.stderr.write(f"[serve] {' '.join(message.split())}\n")


def list_models(models_dir: Path, embedded: Path | None = EMBEDDED_WEIGHTS) -> ModelListing:
    """Describe every ``*.safetensors`` file directly in ``models_dir`` (not in subfolders, not
    hidden ones) for /config.json, reading only the files' headers (no tensor is loaded).

    ``embedded`` is the weights file the wasm and the native module embed: its entry has
    ``"embedded": true``, comes first, and is named by its architecture's short name (``cnn``)
    unless another listed file already has that stem (then by its own stem). When it lies
    outside ``models_dir`` it is listed too (it is what the page runs without a download); a
    file of the same name in ``models_dir`` then gives way to it, with a warning. The others
    follow sorted by name, each named by its file stem.

    A file that is not a readable model (not safetensors, no ``architecture``, a bad layer plan:
    ``mnist_common.weights.read_model_metadata``) is left out with one warning line on stderr.

    Raises:
        SystemExit: ``models_dir`` is not a folder.
    """
    from safetensors import SafetensorError, safe_open

    from mnist_common.plan import ARCHITECTURES
    from mnist_common.weights import WeightsError, read_model_metadata

    if not models_dir.is_dir():
        raise SystemExit(f"the models folder {models_dir} is not a folder")
    files = {
        path.name: path
        for path in sorted(models_dir.iterdir())
        if path.suffix == ".safetensors" and not path.name.startswith(".") and path.is_file()
    }
    embedded_file = None  # its file name, a key of `files`
    if embedded is not None:
        target = embedded.resolve()
        embedded_file = next((name for name, path in files.items() if path.resolve() == target), None)
        if embedded_file is None and target.is_file():
            if target.name in files:
                warn(f"{files[target.name]}: not listed, the embedded weights {embedded} have its name")
            files[target.name] = embedded
            embedded_file = target.name
        elif embedded_file is None:
            warn(f"the embedded weights {embedded} are not a file: not listed")

    by_id = {a.id: a for a in ARCHITECTURES.values()}
    entries, served = [], {}
    for name, path in files.items():
        try:
            metadata = read_model_metadata(path)
            with safe_open(str(path), framework="numpy") as f:
                parameters = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
            size = path.stat().st_size
        except (WeightsError, SafetensorError, OSError, ValueError) as e:
            reason = str(e) if str(path) in str(e) else f"{path}: {e}"
            warn(f"model not listed, not a readable model file: {reason}")
            continue
        architecture = by_id.get(metadata["architecture"])
        entries.append(
            {
                "name": Path(name).stem,  # the embedded one is renamed below
                "url": "models/" + quote(name),
                "architecture": metadata["architecture"],
                "summary": architecture.summary if architecture else None,
                "test_accuracy": fraction(metadata.get("test_accuracy")),
                "parameters": int(parameters),
                "bytes": size,
                "embedded": name == embedded_file,
            }
        )
        served[name] = path
    embedded_name = None
    for entry in entries:
        if entry["embedded"]:
            architecture = by_id.get(entry["architecture"])
            stems = {e["name"] for e in entries if not e["embedded"]}
            short = architecture.name if architecture else None
            if short and short not in stems:
                entry["name"] = short
            embedded_name = entry["name"]
    entries.sort(key=lambda e: (not e["embedded"], e["name"]))
    return ModelListing(entries, served, embedded_name)


def fraction(text: str | None) -> float | None:
    """A metadata string holding a number 0..1 (``"0.9931"``) as a float, else None."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if 0 <= value <= 1 else None


def is_api(path: str) -> bool:
    """Paths of the API (``/api`` and under): their errors are JSON."""
    return path == "/api" or path.startswith("/api/")


def is_models(path: str) -> bool:
    """Paths of the weights files: ``/models/...`` (none other than the listed ones is served)."""
    return path == MODELS_PATH.rstrip("/") or path.startswith(MODELS_PATH)


def is_hidden(path: str) -> bool:
    """Python sources and caches are never served (web/ holds none; a stray one stays hidden)."""
    return path == "/server" or path.startswith("/server/") or path.endswith((".py", ".pyc")) or "__pycache__" in path


def page_config(default_backend: str, backends: list[str], listing: ModelListing) -> dict:
    """The /config.json document: ``{"default", "backends", "embedded", "models"}`` (see the
    fields in docs/api.md). ``invoke build-wasm`` writes it to web/config.json too, for static hosts."""
    return {
        "default": default_backend,
        "backends": list(backends),
        "embedded": listing.embedded,
        "models": listing.entries,
    }


# --- the application ---------------------------------------------------------------------------


#: The settings that are callables of this process: they cannot reach worker processes.
IN_PROCESS = ("classify_pixels", "uncertainty", "building")


@dataclass
class Settings:
    """What one server answers with; everything but the callables travels to worker processes
    (``to_env``/``from_env``).

    Attributes:
        config: the /config.json document (``page_config``); ``invoke serve`` updates its
            ``backends`` as background builds finish (the answer follows, in this process).
        model_files: file name -> weights file served at ``/models/<file name>``.
        samples_db: the SQLite file of /api/samples, opened (created) on first use.
        max_body: largest request body in bytes (413 above).
        log_requests: one access-log line per request (errors are logged regardless).
        classify_pixels: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities; None:
            ``mnist_infer.predict``, imported on the first request (503 while it is not built).
        uncertainty: ``UncertaintyFn`` for ``?samples=N``; None: ``mnist_infer.uncertainty``.
        building: while the native module is not importable, what builds it and for how long
            (``Building``), for the 503 answers; None: nothing is.
    """

    config: dict
    model_files: dict[str, Path]
    samples_db: Path = DEFAULT_DB
    max_body: int = MAX_BODY
    log_requests: bool = True
    classify_pixels: ClassifyPixels | None = None
    uncertainty: UncertaintyFn | None = None
    building: Building | None = None

    def to_env(self) -> str:
        """The settings as JSON for ``SETTINGS_ENV``.

        Raises:
            ValueError: a callable is set (it cannot reach another process).
        """
        given = [name for name in IN_PROCESS if getattr(self, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot be passed to worker processes")
        return json.dumps(
            {
                "config": self.config,
                "model_files": {name: str(path) for name, path in self.model_files.items()},
                "samples_db": str(self.samples_db),
                "max_body": self.max_body,
                "log_requests": self.log_requests,
            }
        )

    @classmethod
    def from_env(cls, text: str) -> Settings:
        """The settings ``to_env`` wrote."""
        document = json.loads(text)
        return cls(
            config=document["config"],
            model_files={name: Path(path) for name, path in document["model_files"].items()},
            samples_db=Path(document["samples_db"]),
            max_body=int(document["max_body"]),
            log_requests=bool(document["log_requests"]),
        )


def make_settings(
    default_backend: str,
    backends: list[str],
    classify_pixels: ClassifyPixels | None = None,
    max_body: int = MAX_BODY,
    *,
    uncertainty: UncertaintyFn | None = None,
    models_dir: Path | None = None,
    embedded: Path | None = None,
    samples_db: Path | None = None,
    log_requests: bool = True,
    building: Building | None = None,
) -> Settings:
    """``Settings`` from ``make_server``'s arguments (see there): lists the models folder now.

    Raises:
        SystemExit: ``models_dir`` is not a folder.
    """
    listing = list_models(
        MODELS_DIR if models_dir is None else Path(models_dir), EMBEDDED_WEIGHTS if embedded is None else Path(embedded)
    )
    return Settings(
        config=page_config(default_backend, backends, listing),
        model_files=listing.files,
        samples_db=DEFAULT_DB if samples_db is None else Path(samples_db),
        max_body=max_body,
        log_requests=log_requests,
        classify_pixels=classify_pixels,
        uncertainty=uncertainty,
        building=building,
    )


class App(FastAPI):
    """FastAPI with ``ResponseHeaders`` around everything, its own error pages included."""

    def build_middleware_stack(self) -> ASGIApp:
        return ResponseHeaders(super().build_middleware_stack())


class ResponseHeaders:
    """ASGI middleware: ``Cache-Control: no-cache`` (a rebuild shows at once) and the
    ISOLATION_HEADERS on every response; 501 for a method that is not in KNOWN_METHODS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
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


def log_failure(request: Request) -> None:
    """The traceback of the exception being handled, on stderr (the client gets one line)."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "-"
    sys.stderr.write(
        f"[serve] {client} {request.method} {short_repr(request.url.path, 60)} failed:\n{traceback.format_exc()}"
    )


ERRORS = {
    400: {"model": ErrorOut, "description": "bad input; the message says what"},
    405: {"model": ErrorOut, "description": "another method (Allow says which)"},
    413: {"model": ErrorOut, "description": "a body over the limit (2 MB)"},
    500: {"model": ErrorOut, "description": "a bug; details in the server log"},
}
SERVICE_UNAVAILABLE = {"model": ErrorOut, "description": "the native module mnist_infer is not built (yet)"}
PREDICT_OPENAPI = {
    "parameters": [
        {
            "name": "samples",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLES},
            "description": "also run MC dropout with this many passes (adds `uncertainty`)",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "an image file of one digit: any format Pillow reads, any size, "
                            f"either polarity, at most {MAX_IMAGE_SIDE} px a side",
                        }
                    },
                }
            },
            "application/json": {"schema": PixelsIn.model_json_schema()},
        },
    },
}
SAMPLES_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": SampleIn.model_json_schema()}}}
}
PAGE_OPENAPI = {
    "parameters": [
        {
            "name": "after",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "default": 0},
            "description": "list samples with ids above this one",
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
            "description": "samples per page",
        },
    ]
}


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application serving ``settings`` (routes and answers: docs/api.md)."""
    classifier = Classifier(settings.classify_pixels, settings.building)
    uncertainty = Uncertainty(settings.uncertainty, settings.building)
    samples = Samples(settings.samples_db)
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

    async def in_thread(request: Request, doing: str, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` in a worker thread; any exception but ApiError becomes a logged 500."""
        try:
            return await run_in_threadpool(work, *args)
        except ApiError:
            raise
        except Exception:
            log_failure(request)
            raise ApiError(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error while {doing} (details in the server log)"
            ) from None

    def predict_payload(content_type: str | None, body: bytes, samples: int | None) -> dict:
        """Check and classify one request body (with ``samples``: also MC dropout on it)."""
        kind = media_type(content_type)
        if kind is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "no Content-Type: send multipart/form-data or application/json")
        if kind == "application/json":
            pixels = pixels_from_json(body)
        elif kind == "multipart/form-data":
            pixels = pixels_from_image(image_from_multipart(content_type, body))
        else:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"unsupported Content-Type {short_repr(content_type, 60)}: "
                'send multipart/form-data (field image) or application/json ({"pixels": [...]})',
            )
        probabilities = classifier(pixels.reshape(1, NUM_PIXELS))
        from .classify import predictions_payload  # imported on first use, like preprocess

        payload = predictions_payload(probabilities[0])
        if samples is not None:
            payload["uncertainty"] = uncertainty(pixels.reshape(NUM_PIXELS), samples)
        return payload

    async def predict(request: Request) -> Response:
        samples = samples_from_query(request.url.query)
        body = await read_body(request, settings.max_body)
        payload = await in_thread(
            request, "predicting", predict_payload, request.headers.get("content-type"), body, samples
        )
        return JsonResponse(payload)

    predict_responses = {200: {"model": PredictionOut}, **ERRORS, 503: SERVICE_UNAVAILABLE}
    app.post(
        PREDICT_PATH,
        summary="Classify one digit",
        description='Multipart `image` (preprocessed as the page does) or JSON `{"pixels": [784]}`; '
        "`?samples=N` adds MC dropout. Every error: docs/api.md.",
        responses=predict_responses,
        openapi_extra=PREDICT_OPENAPI,
    )(predict)
    app.post(
        MNIST_PATH,
        summary="Classify one digit (the seed project's URL)",
        description=f"Exactly `POST {PREDICT_PATH}`: `curl -X POST -F image=@7.png http://127.0.0.1:8000/api/mnist`.",
        responses=predict_responses,
        openapi_extra=PREDICT_OPENAPI,
    )(predict)

    def add_sample(content_type: str | None, body: bytes) -> dict:
        if media_type(content_type) != "application/json":
            shown = short_repr(content_type, 60)
            raise ApiError(HTTPStatus.BAD_REQUEST, f"send the sample as Content-Type: application/json, not {shown}")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF, over-long integers
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {e}") from None
        try:
            SampleIn.model_validate(document)
        except ValidationError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"not a valid sample: {validation_message(e)}") from None
        store = samples.store()
        try:
            sample_id = store.add(document)  # as sent: strokes keep their integers
        except StoreError as e:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"the sample was not saved: {e}") from None
        return {"success": True, "id": sample_id}

    @app.post(
        SAMPLES_PATH,
        status_code=201,
        summary="Save a labelled drawing",
        description="201 once the sample is committed to the SQLite file (it survives a killed server).",
        responses={201: {"model": Saved}, **ERRORS, 503: {"model": ErrorOut, "description": "the database failed"}},
        openapi_extra=SAMPLES_OPENAPI,
    )
    async def post_sample(request: Request) -> Response:
        body = await read_body(request, settings.max_body)
        saved = await in_thread(request, "handling the samples", add_sample, request.headers.get("content-type"), body)
        return JsonResponse(saved, status_code=HTTPStatus.CREATED)

    def browse(query: str) -> dict:
        after = int_from_query(query, "after", 0, 2**63 - 1, 0)
        limit = int_from_query(query, "limit", 1, MAX_PAGE, DEFAULT_PAGE)
        store = samples.store()
        try:
            return store.browse(after, limit)
        except StoreError as e:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot list samples: {e}") from None

    @app.get(
        SAMPLES_PATH,
        summary="Page through the saved drawings",
        responses={
            200: {"model": SamplesPage},
            **ERRORS,
            503: {"model": ErrorOut, "description": "the database failed"},
        },
        openapi_extra=PAGE_OPENAPI,
    )
    async def list_samples(request: Request) -> Response:
        return JsonResponse(await in_thread(request, "handling the samples", browse, request.url.query))

    app.head(SAMPLES_PATH, include_in_schema=False)(list_samples)

    @app.get("/config.json", summary="What the page may load: its builds and models")
    async def config_json() -> Response:
        return JsonResponse(settings.config)

    app.head("/config.json", include_in_schema=False)(config_json)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        path, status = request.url.path, error.status_code
        headers = dict(error.headers or {})
        if not is_api(path):
            if status == HTTPStatus.METHOD_NOT_ALLOWED:
                headers["Allow"] = "GET, HEAD"
            return error_response(status, HTTPStatus(status).phrase, headers, api=False)
        if status == HTTPStatus.METHOD_NOT_ALLOWED and path in API_METHODS:
            message = f"{path} takes {API_TAKES[path]}, not {request.method}"
            return error_response(status, message, {**headers, "Allow": API_METHODS[path]})
        if status == HTTPStatus.NOT_FOUND:
            return error_response(status, no_api(path), headers)
        return error_response(status, str(error.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        errors = error.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query"))
        message = str(first["msg"]).removeprefix("Value error, ")
        return error_response(HTTPStatus.BAD_REQUEST, f"{where}: {message}" if where else message)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:  # a bug outside in_thread
        message = "internal error (details in the server log)"
        return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, message, api=is_api(request.url.path))

    app.router.default = Site(settings.model_files)
    return app


def no_api(path: str) -> str:
    """The 404 message of a path under /api/ that is no endpoint."""
    return f"no API at {short_repr(path, 60)}; try POST {PREDICT_PATH}, or GET/POST {SAMPLES_PATH}"


def content_type(path: str | os.PathLike) -> str:
    """The Content-Type of a static file, by its extension (CONTENT_TYPES, then mimetypes)."""
    suffix = Path(path).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"


class WebFiles(StaticFiles):
    """web/ as Starlette serves a folder (``index.html`` for a folder, 304 for a fresh copy,
    ranges), with our content types, and 405 (``Allow: GET, HEAD``) for another method only
    where the file exists (404 elsewhere)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            exists = await anyio.to_thread.run_sync(self.servable, path)
            raise HTTPException(HTTPStatus.METHOD_NOT_ALLOWED if exists else HTTPStatus.NOT_FOUND)
        return await super().get_response(path, scope)

    def servable(self, path: str) -> bool:
        """Whether a GET of ``path`` (relative to web/) would find a file or a folder's index.html."""
        try:
            _, found = self.lookup_path(path)
            if found is not None and stat.S_ISDIR(found.st_mode):
                _, found = self.lookup_path(os.path.join(path, "index.html"))
        except (OSError, ValueError):  # a name too long, a NUL byte
            return False
        return found is not None and stat.S_ISREG(found.st_mode)

    def file_response(
        self, full_path: Any, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = FileResponse(
            full_path, status_code=status_code, stat_result=stat_result, media_type=content_type(full_path)
        )
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


class Site:
    """The router's default, for every path no API route takes: JSON 404 under /api/, the listed
    weights files under /models/ (404 for any other name there), sources and caches 404, and
    the static files of web/ (``WebFiles``)."""

    def __init__(self, model_files: dict[str, Path]) -> None:
        self.model_files = model_files
        self.files = WebFiles(directory=WEB_DIR, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]  # percent-decoded by the server, not normalised
        if is_api(path):
            raise ApiError(HTTPStatus.NOT_FOUND, no_api(path))
        if is_models(path):
            response = await self.model_file(path[len(MODELS_PATH) :], scope["method"])
        elif is_hidden(path):
            raise HTTPException(HTTPStatus.NOT_FOUND)
        else:
            await self.files(scope, receive, send)
            return
        await response(scope, receive, send)

    async def model_file(self, name: str, method: str) -> Response:
        """``/models/<name>``: the listed file's bytes (application/octet-stream), or 404 when
        the name is not listed (or the file is gone since the server started)."""
        file = self.model_files.get(name)
        try:
            if file is None:
                raise FileNotFoundError(name)
            stat_result = await anyio.to_thread.run_sync(os.stat, file)
        except OSError:
            raise HTTPException(HTTPStatus.NOT_FOUND) from None
        if method not in ("GET", "HEAD"):
            raise HTTPException(HTTPStatus.METHOD_NOT_ALLOWED)
        return FileResponse(file, stat_result=stat_result, media_type="application/octet-stream")


def app_from_env() -> FastAPI:
    """The application of the ``Settings`` in the environment variable SETTINGS_ENV: what each
    uvicorn worker process imports (``uvicorn server.app:app_from_env --factory``).

    Raises:
        RuntimeError: SETTINGS_ENV is not set (``serve(workers=N)`` sets it).
    """
    text = os.environ.get(SETTINGS_ENV)
    if text is None:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start the workers through server.app.serve(workers=N)")
    return create_app(Settings.from_env(text))


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

    Raises:
        SystemExit: the port is in use or the address cannot be bound, with a clear message.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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


def make_server(
    host: str,
    port: int,
    default_backend: str,
    backends: list[str],
    classify_pixels: ClassifyPixels | None = None,
    max_body: int = MAX_BODY,
    *,
    uncertainty: UncertaintyFn | None = None,
    models_dir: Path | None = None,
    embedded: Path | None = None,
    samples_db: Path | None = None,
    log_requests: bool = True,
    building: Building | None = None,
) -> Server:
    """A server bound to (host, port); port 0 picks a free one (see ``server.server_port``).

    Args:
        default_backend, backends: what ``/config.json`` tells the page.
        classify_pixels: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities, used by
            POST /api/predict; None: ``mnist_infer.predict`` (the native Rust module), imported
            on the first request (503 while it is not built).
        max_body: largest request body in bytes; larger ones get 413 before being read.
        uncertainty: MC dropout for ``POST /api/predict?samples=N`` (``UncertaintyFn``: (784,)
            float32 pixels, ``samples=N``, ``seed=0`` -> dict); None: ``mnist_infer.uncertainty``
            on the embedded model, imported on the first such request (503 while not built).
        models_dir: the folder whose ``*.safetensors`` files /config.json lists and /models/
            serves (None: the repo's models/). Listed once, here: see ``list_models``.
        embedded: the weights file the wasm and the native module embed, flagged and named by
            its architecture in the listing (None: the repo's models/model.safetensors).
        samples_db: the SQLite file of /api/samples (None: the repo's data/samples.db); opened,
            created if missing, on the first samples request, not here (503 while it cannot be).
        log_requests: one stderr line per request (errors are logged regardless).
        building: while the native module is not importable, what is building it and about how
            long it has left (see ``Building``), for the 503 answers; None: nothing is.

    Raises:
        SystemExit: the port is in use or the address cannot be bound, or ``models_dir`` is
            not a folder, with a clear message.
    """
    settings = make_settings(
        default_backend,
        backends,
        classify_pixels,
        max_body,
        uncertainty=uncertainty,
        models_dir=models_dir,
        embedded=embedded,
        samples_db=samples_db,
        log_requests=log_requests,
        building=building,
    )
    return Server(create_app(settings), bind(host, port), log_requests)


def serve(
    host: str,
    port: int,
    default_backend: str,
    backends: list[str],
    background: Callable[[Server], None] | None = None,
    workers: int = 1,
    **kwargs,
) -> None:
    """Serve until Ctrl-C; ``kwargs`` go to make_server (classify_pixels, max_body,
    uncertainty, models_dir, embedded, samples_db, log_requests, building).

    ``background(server)``, when given, runs in a thread once the server listens: ``invoke
    serve`` builds what the page can do without there, and updates ``server.config["backends"]``
    (the /config.json answer) as builds finish.

    ``workers`` > 1 serves from that many uvicorn worker processes sharing the socket, each
    with the application of ``app_from_env`` (same settings, same SQLite file). What lives in
    this process cannot reach them: ``background``, ``building``, ``classify_pixels`` and
    ``uncertainty`` must be None (they answer with ``mnist_infer`` as it is installed).

    Raises:
        SystemExit: ``workers`` < 1, or > 1 with one of those given; as ``make_server``.
    """
    if workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {workers}")
    in_process = [name for name in IN_PROCESS if kwargs.get(name) is not None]
    in_process += ["background"] if background is not None else []
    if workers > 1 and in_process:
        raise SystemExit(
            f"{workers} worker processes cannot share {', '.join(in_process)} with this process: "
            "serve with one worker while something is being built"
        )
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    if workers == 1:
        server = make_server(host, port, default_backend, backends, **kwargs)
        config, port = server.config, server.server_port
    else:
        settings = make_settings(default_backend, backends, **kwargs)
        bind(host, port).close()  # a clear message for a port in use, before uvicorn starts
        config = settings.config
    models = [m["name"] + (" (embedded)" if m["embedded"] else "") for m in config["models"]]
    print(
        f"Serving web/ at http://{shown}:{port}/ "
        f"(backend {default_backend}; built: {', '.join(backends)}; "
        f"models: {', '.join(models) or 'none'}"
        f"{f'; {workers} worker processes' if workers > 1 else ''}). Ctrl-C stops.",
        flush=True,
    )
    if kwargs.get("classify_pixels") is None and find_spec("mnist_infer") is None:
        while_ = "while it is built in the background" if kwargs.get("building") else "until it is built"
        print(f"POST {PREDICT_PATH} answers 503 (the native module mnist_infer) {while_}.", flush=True)
    print(f"Samples saved from the page ({SAMPLES_PATH}) go to {kwargs.get('samples_db') or DEFAULT_DB}.", flush=True)
    print(f"The API as OpenAPI: http://{shown}:{port}/openapi.json, and to try it out: /docs.", flush=True)
    if workers > 1:
        import uvicorn

        os.environ[SETTINGS_ENV] = settings.to_env()
        options = uvicorn_options(settings.log_requests)
        uvicorn.run("server.app:app_from_env", factory=True, host=host, port=port, workers=workers, **options)
        return
    if background is not None:
        threading.Thread(target=background, args=(server,), name="builds", daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()
