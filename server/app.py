"""The local web server of `invoke serve`: web/ over Python's http.server, plus a prediction API
and the collection of drawn samples.

Static part: the front end under web/ (``.wasm`` as ``application/wasm``, so the browser
compiles it while it downloads; no caching so a rebuild shows at once; cross-origin isolated,
see ISOLATION_HEADERS) and one dynamic file, ``/config.json``, which tells the page what it may
load::

    {"default": backend, "backends": [built backends],
     "embedded": name of the model the wasm embeds, or null,
     "models": [{"name": "cnn", "url": "models/model.safetensors",
                 "architecture": "mnist-conv-bn-gelu-v1", "summary": "..." or null,
                 "test_accuracy": 0.993 or null, "parameters": 260810, "bytes": 1045712,
                 "embedded": true}, ...]}

``models`` describes every ``*.safetensors`` file directly in the models folder
(``make_server(models_dir=...)``, default the repo's models/), embedded one first, then by
name (see ``list_models``): ``name`` is the file stem, except that the file the wasm embeds is
named by its architecture (``cnn``); ``architecture`` is the file's metadata id and ``summary``
its description from ``mnist_common.plan.ARCHITECTURES`` (null for an id this code does not know);
``test_accuracy`` is a fraction 0..1 from the metadata; ``parameters`` counts every tensor
element (BatchNorm running statistics included); ``bytes`` is the file size. Files that are not
readable models are left out, with one warning line on stderr each. The list is made once, when
the server starts: restart it to list files added later. Each file is served at its ``url``
(relative: ``GET/HEAD /models/<file name>``, ``application/octet-stream``); any other path under
``/models/`` (another name, a subfolder, ``..``, another extension) is 404.

Python sources under web/ are never served. Other methods than GET/HEAD on a static path: 405
(with ``Allow: GET, HEAD``) where the file exists, 404 where it does not; unknown methods: 501.

API part, ``POST /api/predict``, one digit per request, in either form:

* ``Content-Type: multipart/form-data`` with a file field ``image`` (any format Pillow reads,
  any size, ink dark on light or light on dark): it goes through the page's MNIST-style
  preprocessing (``mnist_common.preprocess``: crop to the ink, 20 px longer side, centre of mass
  at the centre of 28x28). ``curl -X POST -F image=@7.png http://127.0.0.1:8000/api/predict``
* ``Content-Type: application/json`` with ``{"pixels": [784 numbers]}``: a 28x28 image,
  row-major, 0..255, ink = 255, already MNIST-style (used as is, no preprocessing).

``POST /api/predict?samples=N`` (N an integer 1..``MAX_SAMPLES`` (1000)) also runs MC dropout:
N forward passes of the embedded model with dropout on (native ``mnist_infer.uncertainty``, mask
seed 0, so the same request gives the same numbers), and the answer gains an ``uncertainty``
object (below). Other query parameters are ignored.

Answers, always JSON (``Content-Type: application/json``), never a stack trace:

* 200 ``{"predictions": {"all": [{"class_name": "zero", "label": 0, "probability": p}, ...10],
  "prediction": {the most probable entry}}, "success": true}``; with ``?samples=N`` also
  ``"uncertainty": {"probabilities": [10 means of the passes' softmax, 0..1, sum 1],
  "std": [10 standard deviations of the passes' softmax, >= 0], "entropy": H (nats, 0..ln 10),
  "mutual_information": I (nats, 0..H), "samples": N, "unsure": true/false, or null when the
  weights carry no calibrated threshold}`` (see ``trainer.uncertainty``)
* ``{"success": false, "error": "<message>"}`` with
  400 bad input (``samples`` not an integer 1..1000 or given twice, not JSON, no ``pixels``,
  not 784 numbers, a value that is not a finite number
  in 0..255, all pixels 0, not an image, a blank image, an image over ``MAX_IMAGE_SIDE`` (4096) px a side,
  no ``image`` field, a missing or unsupported Content-Type, a body shorter than its
  Content-Length), 404 any other path under ``/api/``,
  405 another method on ``/api/predict`` (``Allow: POST``), 408 the body did not arrive within
  ``Handler.timeout`` seconds, 411 no Content-Length (chunked bodies are not accepted),
  413 Content-Length above ``max_body`` (refused before the body is read), 503 the native
  classifier ``mnist_infer`` is not built (for ``predict``, or for ``uncertainty`` when
  ``samples`` is given; while ``invoke serve`` builds it, the error says so, with the time left
  and a ``Retry-After`` header, and the API answers once it is installed), 500 anything unexpected (logged to stderr with its traceback; the
  client gets a one-line message).

Sample collection, ``/api/samples``: drawn digits with their labels, kept in a SQLite database
(``make_server(samples_db=...)``, default ``data/samples.db``; format, durability and the
sample's fields in ``mnist_common/samples.py``), opened (created, migrated) on first use:

* ``POST /api/samples``, ``Content-Type: application/json``, one sample::

    {"label": 0..9, "pixels": [784 numbers 0..255: 28x28, row-major, ink = 255],
     "strokes": [[[x, y, t_ms], ...], ...]  (1..1000 strokes of >= 1 point, canvas px, t_ms >= 0),
     "pen_width": number of canvas px > 0, "canvas": [width, height]  (integers 1..10000),
     optional: "writer": text or null, "predicted": 0..9 or null, "model": text or null (1..200
     characters), "created_at": "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC, when drawn; default: now)}

  Pixels are stored as uint8, rounded half up. 201 ``{"success": true, "id": n}`` once the
  sample is committed to disk (it survives the server being killed right after); no other key
  is accepted.
* ``GET /api/samples?after=ID&limit=N`` (``after`` an integer >= 0, default 0; ``limit``
  1..``MAX_PAGE`` (1000), default 100; other parameters ignored): 200 ``{"samples": [up to N
  samples with id > ID, in id order, each {"id": n, "created_at": "...", "label", "predicted",
  "model", "writer", "pixels": [784 ints 0..255], "strokes", "pen_width", "canvas": [w, h]}],
  "next": the id to pass as ``after`` for the next page, or null on the last page,
  "total": the number of samples in the database}``. HEAD: the same headers, no body.

Errors as above: 400 a body that is not such a sample (the message names the field:
``label must be an integer 0..9, got 10``, ``pixels[3] is -1, not a number in 0..255``,
``unknown field 'lable'``...), not JSON or not ``Content-Type: application/json``, ``after`` or
``limit`` not an integer in range or given twice; 405 another method (``Allow: GET, HEAD,
POST``); 411, 413 (``max_body``), 408 as for predict; 503 the database cannot be used (its
folder cannot be created or written, a newer schema version, another application's file, SQLite
failing): the message says which file and why; the next request tries again; 500 anything
unexpected.

The server binds 127.0.0.1 unless told otherwise: the API is for this machine.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

from mnist_common.constants import NUM_PIXELS
from mnist_common.paths import DEFAULT_WEIGHTS as EMBEDDED_WEIGHTS
from mnist_common.paths import MODELS_DIR, WEB_DIR
from mnist_common.samples import DEFAULT_DB, SampleStore, StoreError, open_store

# WEB_DIR: the static page. MODELS_DIR: the weights files listed in /config.json by default;
# EMBEDDED_WEIGHTS: the one the wasm embeds by default (``invoke serve`` passes its own:
# ``--models`` and ``tasks.weights_path()``).
#: URL prefix of the listed weights files (``models/<file name>`` relative to the page).
MODELS_PATH = "/models/"

PREDICT_PATH = "/api/predict"
SAMPLES_PATH = "/api/samples"
#: The methods each API path takes (the ``Allow`` header of its 405).
API_METHODS = {PREDICT_PATH: "POST", SAMPLES_PATH: "GET, HEAD, POST"}
#: Samples per ``GET /api/samples`` page: the default and the most ``limit`` may ask for.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Most MC-dropout passes ``?samples=N`` may ask for (the native module's own limit).
MAX_SAMPLES = 1000
#: Seed of the MC-dropout masks: the same request always gets the same numbers.
UNCERTAINTY_SEED = 0
#: Largest request body accepted by default, in bytes (``make_server(max_body=...)``).
MAX_BODY = 2_000_000
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
#: ``(pixels, samples=N, seed=S) -> dict``, the contract of ``mnist_infer.uncertainty``: pixels
#: (784,) float32 0..255 (one image), N MC-dropout passes (1..1000), S the mask seed; returns
#: ``{"probabilities": (10,), "std": (10,), "entropy": float, "mutual_information": float,
#: "samples": N, "unsure": bool or None}`` (see the module docstring for units and ranges).
UncertaintyFn = Callable[..., dict]


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


#: Building: what the server is waiting for, in words, with a rough time left in seconds (None:
#: no time, e.g. the build failed, which the words say); or None when nothing is being built. ``invoke serve`` passes one while it builds
#: the native module in the background.
Building = Callable[[], "tuple[str, float | None] | None"]


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
        entries: config.json's ``models`` list (see the module docstring), embedded one first.
        files: file name, as in each entry's ``url`` after ``models/`` -> the file served.
        embedded: the ``name`` of the embedded entry, None when it is not listed.
    """

    entries: list[dict]
    files: dict[str, Path]
    embedded: str | None


def warn(message: str) -> None:
    """One line on stderr, as the request log writes them."""
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


class Handler(SimpleHTTPRequestHandler):
    """Static files from web/, /config.json, the listed weights files under /models/,
    POST /api/predict and GET/POST /api/samples (see the module docstring)."""

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

    def __init__(
        self,
        *args,
        config: dict,
        classifier: Classifier,
        uncertainty: Uncertainty,
        samples: Samples,
        model_files: dict[str, Path],
        max_body: int,
        log_requests: bool,
        **kwargs,
    ):
        self.config = config
        self.classifier = classifier
        self.uncertainty = uncertainty
        self.samples = samples
        self.model_files = model_files
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
        elif is_models(path):
            self.send_model(path)
        elif is_hidden(path):
            self.send_error(HTTPStatus.NOT_FOUND)
        else:
            super().do_GET()

    def do_HEAD(self) -> None:
        path = self.url_path()
        if is_api(path):
            self.api()
        elif is_models(path):
            self.send_model(path)
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
        if is_models(path):
            exists = self.model_file(path) is not None
        else:
            exists = path == "/config.json" or (not is_hidden(path) and Path(self.translate_path(self.path)).exists())
        if exists:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)
        self.linger()

    # --- the weights files -------------------------------------------------------------------

    def model_file(self, path: str) -> Path | None:
        """The listed file that ``/models/<file name>`` names (percent-decoded), else None."""
        return self.model_files.get(unquote(path[len(MODELS_PATH) :]))

    def send_model(self, path: str) -> None:
        """GET/HEAD ``/models/<file name>``: the file's bytes as application/octet-stream, or 404
        when the name is not in the listing (or the file is gone since the server started)."""
        file = self.model_file(path)
        try:
            if file is None:
                raise FileNotFoundError(path)
            f = open(file, "rb")  # noqa: SIM115 (closed below, after the headers)
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "no such model file")
            return
        with f:
            stat = os.fstat(f.fileno())
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(stat.st_size))
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(f, self.wfile)

    # --- the API --------------------------------------------------------------------------

    def api(self) -> None:
        """Answer a request under /api/ with JSON, whatever happens."""
        path = self.url_path()
        try:
            if path == PREDICT_PATH:
                if self.command != "POST":
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{PREDICT_PATH} takes POST, not {self.command}")
                self.reply_json(HTTPStatus.OK, self.predict())
            elif path == SAMPLES_PATH:
                if self.command == "POST":
                    self.reply_json(HTTPStatus.CREATED, self.add_sample())
                elif self.command in ("GET", "HEAD"):
                    self.reply_json(HTTPStatus.OK, self.list_samples())
                else:
                    message = f"{SAMPLES_PATH} takes GET or POST, not {self.command}"
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, message)
            else:
                shown = short_repr(path, 60)
                raise ApiError(
                    HTTPStatus.NOT_FOUND, f"no API at {shown}; try POST {PREDICT_PATH}, or GET/POST {SAMPLES_PATH}"
                )
        except ApiError as e:
            self.reply_error(e.status, e.message, e.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client is gone or stalled while we answered
        except Exception:
            self.log_error("%s %s failed:\n%s", self.command, short_repr(path, 60), traceback.format_exc())
            doing = "predicting" if path == PREDICT_PATH else "handling the samples"
            message = f"internal error while {doing} (details in the server log)"
            self.reply_error(HTTPStatus.INTERNAL_SERVER_ERROR, message)

    def predict(self) -> dict:
        """Read, check and classify the request body (and with ``?samples=N`` run MC dropout on
        it); returns the 200 payload."""
        samples = samples_from_query(urlsplit(self.path).query)
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
                'send multipart/form-data (field image) or application/json ({"pixels": [...]})',
            )
        probabilities = self.classifier(pixels.reshape(1, NUM_PIXELS))
        from .classify import predictions_payload  # imported on first use, like preprocess

        payload = predictions_payload(probabilities[0])
        if samples is not None:
            payload["uncertainty"] = self.uncertainty(pixels.reshape(NUM_PIXELS), samples)
        return payload

    def add_sample(self) -> dict:
        """POST /api/samples: read, check and store one sample; returns the 201 payload."""
        body = self.read_body()
        if self.headers.get("Content-Type") is None or self.headers.get_content_type() != "application/json":
            shown = short_repr(self.headers.get("Content-Type"), 60)
            raise ApiError(HTTPStatus.BAD_REQUEST, f"send the sample as Content-Type: application/json, not {shown}")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF, over-long integers
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {e}") from None
        store = self.samples.store()
        try:
            sample_id = store.add(document)
        except ValueError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"not a valid sample: {e}") from None
        except StoreError as e:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"the sample was not saved: {e}") from None
        return {"success": True, "id": sample_id}

    def list_samples(self) -> dict:
        """GET /api/samples?after=ID&limit=N: one page of samples; returns the 200 payload."""
        query = urlsplit(self.path).query
        after = int_from_query(query, "after", 0, 2**63 - 1, 0)
        limit = int_from_query(query, "limit", 1, MAX_PAGE, DEFAULT_PAGE)
        store = self.samples.store()
        try:
            return store.browse(after, limit)
        except StoreError as e:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot list samples: {e}") from None

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

    def reply_error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        """``{"success": false, "error": message}`` with ``status`` (and ``headers``); then drops
        an unread body."""
        allow = API_METHODS.get(self.url_path(), "POST") if hasattr(self, "path") else "POST"
        headers = {**(headers or {}), **({"Allow": allow} if status == HTTPStatus.METHOD_NOT_ALLOWED else {})}
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


def is_models(path: str) -> bool:
    """Paths of the weights files: ``/models/...`` (none other than the listed ones is served)."""
    return path == MODELS_PATH.rstrip("/") or path.startswith(MODELS_PATH)


def is_hidden(path: str) -> bool:
    """Python sources and caches are never served (web/ holds none; a stray one stays hidden)."""
    return path == "/server" or path.startswith("/server/") or path.endswith((".py", ".pyc")) or "__pycache__" in path


class Server(ThreadingHTTPServer):
    """One thread per connection; a listen backlog that takes bursts of parallel clients.
    ``config`` is the /config.json document it answers (set by ``make_server``)."""

    request_queue_size = 128
    config: dict = {}


def page_config(default_backend: str, backends: list[str], listing: ModelListing) -> dict:
    """The /config.json document: ``{"default", "backends", "embedded", "models"}`` (see the
    module docstring). ``invoke build-wasm`` writes it to web/config.json too, for static hosts."""
    return {
        "default": default_backend,
        "backends": list(backends),
        "embedded": listing.embedded,
        "models": listing.entries,
    }


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
    listing = list_models(
        MODELS_DIR if models_dir is None else Path(models_dir), EMBEDDED_WEIGHTS if embedded is None else Path(embedded)
    )
    config = page_config(default_backend, backends, listing)
    handler = partial(
        Handler,
        config=config,
        classifier=Classifier(classify_pixels, building),
        uncertainty=Uncertainty(uncertainty, building),
        samples=Samples(DEFAULT_DB if samples_db is None else Path(samples_db)),
        model_files=listing.files,
        max_body=max_body,
        log_requests=log_requests,
    )
    try:
        server = Server((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(f"port {port} on {host} is already in use: pass --port to pick another") from e
        raise SystemExit(f"cannot listen on {host}:{port}: {e.strerror}") from e
    server.config = config
    return server


def serve(
    host: str,
    port: int,
    default_backend: str,
    backends: list[str],
    background: Callable[[Server], None] | None = None,
    **kwargs,
) -> None:
    """Serve until Ctrl-C; ``kwargs`` go to make_server (classify_pixels, max_body,
    uncertainty, models_dir, embedded, samples_db, building).

    ``background(server)``, when given, runs in a thread once the server listens: ``invoke
    serve`` builds what the page can do without there, and updates ``server.config["backends"]``
    (the /config.json answer) as builds finish."""
    server = make_server(host, port, default_backend, backends, **kwargs)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    models = [m["name"] + (" (embedded)" if m["embedded"] else "") for m in server.config["models"]]
    print(
        f"Serving web/ at http://{shown}:{server.server_port}/ "
        f"(backend {default_backend}; built: {', '.join(backends)}; "
        f"models: {', '.join(models) or 'none'}). Ctrl-C stops.",
        flush=True,
    )
    if kwargs.get("classify_pixels") is None and find_spec("mnist_infer") is None:
        while_ = "while it is built in the background" if kwargs.get("building") else "until it is built"
        print(f"POST {PREDICT_PATH} answers 503 (the native module mnist_infer) {while_}.", flush=True)
    if background is not None:
        threading.Thread(target=background, args=(server,), name="builds", daemon=True).start()
    print(f"Samples saved from the page ({SAMPLES_PATH}) go to {kwargs.get('samples_db') or DEFAULT_DB}.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()
