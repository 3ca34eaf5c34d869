"""The REST API's routes: ``POST /api/predict`` (and ``/api/mnist``), ``POST``/``GET /api/samples``.

Every status, field and message is described in docs/api.md; the documents are ``schemas``'.
FastAPI checks the query parameters (``Query``), pydantic the JSON bodies, Starlette (with
python-multipart) parses forms; the route's own work runs in a worker thread (``in_thread``).
The size limit of a body is ``middleware.BodyLimit``'s. The objects the routes use live on
``app.state`` (``predict``, ``not_a_digit``, ``uncertainty``, ``samples``: see ``app.create_app``).
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from mnist_common.constants import NUM_PIXELS
from mnist_common.samples import SampleStore, StoreError, open_store

from . import native
from .errors import ApiError, JsonResponse, error_response, log_failure, parse_json, short_repr
from .schemas import (
    MAX_IMAGE_SIDE,
    MAX_SAMPLES,
    ErrorOut,
    ImageForm,
    PixelsIn,
    PredictionOut,
    SampleIn,
    SamplesPage,
    Saved,
)

PREDICT_PATH = "/api/predict"
#: The seed project's name of the same endpoint: ``curl -X POST -F image=@7.png .../api/mnist``.
MNIST_PATH = "/api/mnist"
SAMPLES_PATH = "/api/samples"
#: The methods each API path takes: the ``Allow`` header of its 405, and its message's words.
API_METHODS = {PREDICT_PATH: "POST", MNIST_PATH: "POST", SAMPLES_PATH: "GET, HEAD, POST"}
API_TAKES = {PREDICT_PATH: "POST", MNIST_PATH: "POST", SAMPLES_PATH: "GET or POST"}
#: Samples per ``GET /api/samples`` page: the default and the most ``limit`` may ask for.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Most files, and most plain fields, a multipart/form-data body may have (an image needs one).
MAX_FORM_PARTS = 32
#: Images preprocessed at once; more wait their turn (bounds the memory: 0.7 GB each at most).
PREPROCESS_SLOTS = 4
_preprocess_slots = threading.BoundedSemaphore(PREPROCESS_SLOTS)


def is_api(path: str) -> bool:
    """Paths of the API (``/api`` and under): their errors are JSON."""
    return path == "/api" or path.startswith("/api/")


def no_api(path: str) -> str:
    """The 404 message of a path under /api/ that is no endpoint."""
    return f"no API at {short_repr(path, 60)}; try POST {PREDICT_PATH}, or GET/POST {SAMPLES_PATH}"


def digits(value: object) -> object:
    """A query value as written: digits only (pydantic's integers also take ``' 20'``, ``'+5'``,
    ``'1_000'`` and ``'2.0'``); at most 30, so no huge integer is ever built."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{1,30}", value):
        raise ValueError(f"must be a plain decimal integer (digits 0-9, at most 30), got {short_repr(value)}")
    return value


#: An integer query parameter (its range: ``Query(ge=..., le=...)``).
QueryInt = Annotated[int, BeforeValidator(digits)]


def given_once(request: Request) -> None:
    """Refuse a query parameter of the route given more than once (FastAPI would take the last).

    Raises:
        ApiError: 400 naming the parameter.
    """
    route = request.scope.get("route")
    for param in getattr(getattr(route, "dependant", None), "query_params", ()):
        count = len(request.query_params.getlist(param.alias))
        if count > 1:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{param.alias} is given {count} times; give it once")


router = APIRouter(dependencies=[Depends(given_once)])


async def in_thread(request: Request, doing: str, work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` in a worker thread; any exception but ApiError and StoreError (a 503)
    becomes a logged 500."""
    try:
        return await run_in_threadpool(work, *args)
    except (ApiError, StoreError):
        raise
    except Exception:
        log_failure(request)
        message = f"internal error while {doing} (details in the server log)"
        raise ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, message) from None


def media_type(content_type: str | None) -> str | None:
    """``multipart/form-data; boundary=x`` -> ``multipart/form-data`` (lower case); None for none."""
    return None if content_type is None else content_type.split(";", 1)[0].strip().lower()


# --- POST /api/predict ------------------------------------------------------------------------


async def read_input(request: Request) -> np.ndarray | bytes:
    """The digit of a predict request: (784,) float32 pixels from ``{"pixels": [...]}``, or the
    bytes of the form's ``image`` file. ApiError 400 for another Content-Type (or none),
    RequestValidationError for a JSON body that is not such a document."""
    content_type = request.headers.get("content-type")
    kind = media_type(content_type)
    if kind == "application/json":
        return np.asarray(parse_json(PixelsIn, await request.body()).pixels, dtype=np.float32)
    if kind == "multipart/form-data":
        return await image_field(request)
    if kind is None:
        raise ApiError(HTTPStatus.BAD_REQUEST, "no Content-Type: send multipart/form-data or application/json")
    raise ApiError(
        HTTPStatus.BAD_REQUEST,
        f"unsupported Content-Type {short_repr(content_type, 60)}: "
        'send multipart/form-data (field image) or application/json ({"pixels": [...]})',
    )


async def image_field(request: Request) -> bytes:
    """The bytes of the first ``image`` field of a multipart/form-data body, a file part.

    Raises:
        ApiError: 400 for a body that is no such form (Starlette's message), more than
            MAX_FORM_PARTS files or fields, no ``image`` field, a text one, or an empty one.
    """
    try:
        async with request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS, max_part_size=2**20) as form:
            images = form.getlist("image")
            data = await images[0].read() if images and isinstance(images[0], UploadFile) else None
    except HTTPException as e:
        if e.status_code != HTTPStatus.BAD_REQUEST:  # 413, 408: BodyLimit's
            raise
        message = f"the body is not a multipart/form-data form with an image file ({e.detail})"
        raise ApiError(HTTPStatus.BAD_REQUEST, message) from None
    if not images:
        found = ", ".join(short_repr(name, 20) for name in list(form.keys())[:5]) or "none"
        raise ApiError(HTTPStatus.BAD_REQUEST, f"no form field named 'image' (fields found: {found})")
    if data is None:
        message = "the image field is text: send the image as a file (curl -F image=@digit.png)"
        raise ApiError(HTTPStatus.BAD_REQUEST, message)
    if not data:
        raise ApiError(HTTPStatus.BAD_REQUEST, "the image field is empty")
    return data


def pixels_from_image(data: bytes) -> np.ndarray:
    """An image file -> (784,) float32 MNIST-style pixels; ApiError 400 for non-images, blanks
    and images over MAX_IMAGE_SIDE px a side."""
    from mnist_common import preprocess  # imported on first use: `invoke serve` starts without them

    from . import classify

    size = image_size(data)
    if size and max(size) > MAX_IMAGE_SIDE:
        message = f"the image is {size[0]}x{size[1]} px; the API takes at most {MAX_IMAGE_SIDE} px a side"
        raise ApiError(HTTPStatus.BAD_REQUEST, message)
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


def predict_payload(state: Any, digit: np.ndarray | bytes, samples: int | None) -> dict:
    """The 200 answer for one digit (``read_input``'s): its predictions, ``not_a_digit``, and
    MC dropout's ``uncertainty`` when ``samples``."""
    from .classify import predictions_payload  # imported on first use, like preprocess

    pixels = digit if isinstance(digit, np.ndarray) else pixels_from_image(digit)
    probabilities = native.classify(state.predict, pixels.reshape(1, NUM_PIXELS))[0]
    payload = predictions_payload(probabilities)
    payload["not_a_digit"] = native.not_a_digit(state.not_a_digit, probabilities)
    if samples is not None:
        payload["uncertainty"] = native.uncertainty(state.uncertainty, pixels.reshape(NUM_PIXELS), samples)
    return payload


ERRORS = {
    400: {"model": ErrorOut, "description": "bad input; the message says what"},
    405: {"model": ErrorOut, "description": "another method (Allow says which)"},
    413: {"model": ErrorOut, "description": "a body over the limit (2 MB)"},
    500: {"model": ErrorOut, "description": "a bug; details in the server log"},
}
PREDICT_RESPONSES = {
    200: {"model": PredictionOut},
    **ERRORS,
    503: {"model": ErrorOut, "description": "the native module mnist_infer is not built (yet)"},
}
#: The two bodies of one URL (FastAPI describes one body per route by itself).
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": ImageForm.model_json_schema()},
            "application/json": {"schema": PixelsIn.model_json_schema()},
        },
    }
}
SamplesParam = Annotated[
    QueryInt | None,
    Query(ge=1, le=MAX_SAMPLES, description="also run MC dropout with this many passes (adds `uncertainty`)"),
]


@router.post(
    PREDICT_PATH,
    summary="Classify one digit",
    description='Multipart `image` (preprocessed as the page does) or JSON `{"pixels": [784]}`; '
    "`?samples=N` adds MC dropout. Every error: docs/api.md.",
    responses=PREDICT_RESPONSES,
    openapi_extra=PREDICT_BODY,
)
async def predict(request: Request, samples: SamplesParam = None) -> Response:
    """200 ``PredictionOut`` for the body's digit (``read_input``); errors: docs/api.md."""
    digit = await read_input(request)
    return JsonResponse(await in_thread(request, "predicting", predict_payload, request.app.state, digit, samples))


router.post(
    MNIST_PATH,
    summary="Classify one digit (the seed project's URL)",
    description=f"Exactly `POST {PREDICT_PATH}`: `curl -X POST -F image=@7.png http://127.0.0.1:8000/api/mnist`.",
    responses=PREDICT_RESPONSES,
    openapi_extra=PREDICT_BODY,
)(predict)


# --- POST and GET /api/samples ------------------------------------------------------------------


class SampleDatabase:
    """The sample database at ``path``, opened (created, migrated: ``mnist_common.samples.open_store``)
    on first use and again after a failed try. Its StoreErrors are 503s (``database_failed``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store: SampleStore | None = None
        self._lock = threading.Lock()

    def store(self) -> SampleStore:
        """The open store; StoreError while it cannot be opened."""
        with self._lock:  # one opener at a time: the others wait and get its store
            if self._store is None:
                self._store = open_store(self.path)
            return self._store


async def database_failed(request: Request, error: StoreError) -> Response:
    """A StoreError (the database cannot be opened, written or read) is a 503 saying why."""
    return error_response(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot save or list samples: {error}")


DATABASE_FAILED = {503: {"model": ErrorOut, "description": "the database failed"}}


@router.post(
    SAMPLES_PATH,
    status_code=201,
    summary="Save a labelled drawing",
    description="201 once the sample is committed to the SQLite file (it survives a killed server).",
    responses={201: {"model": Saved}, **ERRORS, **DATABASE_FAILED},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": SampleIn.model_json_schema()}}}
    },
)
async def post_sample(request: Request) -> Response:
    """201 ``Saved`` once the body's sample (``SampleIn``) is stored; errors: docs/api.md."""
    content_type = request.headers.get("content-type")
    if media_type(content_type) != "application/json":
        shown = short_repr(content_type, 60)
        raise ApiError(HTTPStatus.BAD_REQUEST, f"send the sample as Content-Type: application/json, not {shown}")
    sample = parse_json(SampleIn, await request.body()).model_dump(mode="json", exclude_unset=True)
    samples = request.app.state.samples
    sample_id = await in_thread(request, "saving the sample", lambda: samples.store().add(sample))
    return JsonResponse({"success": True, "id": sample_id}, status_code=HTTPStatus.CREATED)


@router.get(
    SAMPLES_PATH,
    summary="Page through the saved drawings",
    responses={200: {"model": SamplesPage}, **ERRORS, **DATABASE_FAILED},
)
async def list_samples(
    request: Request,
    after: Annotated[QueryInt, Query(ge=0, le=2**63 - 1, description="list samples with ids above this one")] = 0,
    limit: Annotated[QueryInt, Query(ge=1, le=MAX_PAGE, description="samples per page")] = DEFAULT_PAGE,
) -> Response:
    """200 ``SamplesPage``: up to ``limit`` samples with ids above ``after``."""
    samples = request.app.state.samples
    page = await in_thread(request, "listing samples", lambda: samples.store().browse(after, limit))
    return JsonResponse(page)


router.head(SAMPLES_PATH, include_in_schema=False)(list_samples)


async def http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's 404 and 405 (and other HTTP errors): JSON under /api/ (405 with the path's
    ``Allow``), a plain-text page elsewhere (405 with ``Allow: GET, HEAD``)."""
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
