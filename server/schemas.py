"""The API's documents as pydantic models: they check the request bodies and describe every
body and answer in /openapi.json (the fields in words: docs/api.md)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from mnist_common.constants import NUM_PIXELS
from mnist_common.samples import MAX_CANVAS_SIDE, MAX_TEXT
from mnist_common.samples import validate as validate_sample

from .errors import short_repr

#: Most MC-dropout passes ``?samples=N`` may ask for (the native module's own limit).
MAX_SAMPLES = 1000
#: Largest image side accepted, in pixels (the preprocessing's cost grows with the image: a
#: 4096x4096 RGB image takes about 1.5 s and 0.7 GB; a 49 kB PNG of 10,000,000x4 px would take 5 GB).
MAX_IMAGE_SIDE = 4096
#: A finite float (the answers never hold NaN or infinities).
Finite = Annotated[float, Field(allow_inf_nan=False)]
#: A JSON number kept as sent (an integer stays one: stored strokes keep their numbers).
Number = int | float


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


class ImageForm(BaseModel):
    """``POST /api/predict``'s multipart/form-data body: the image file of one digit."""

    image: bytes = Field(
        description="an image file of one digit: any format Pillow reads, any size, "
        f"either polarity, at most {MAX_IMAGE_SIDE} px a side"
    )


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

    probabilities: list[Finite] = Field(min_length=10, max_length=10, description="means of the passes' softmax")
    std: list[Annotated[Finite, Field(ge=0)]] = Field(
        min_length=10, max_length=10, description="standard deviations of the passes' softmax"
    )
    entropy: Finite = Field(description="of the mean, in nats, 0..ln 10")
    mutual_information: Finite = Field(description="in nats, 0..entropy")
    samples: int = Field(ge=1, le=MAX_SAMPLES)
    not_a_digit: StrictBool | None = Field(
        description="the top-level not_a_digit: the rule on the eval-mode pass (dropout off), not on these means; "
        "null when the weights carry no not_a_digit_max_probability"
    )
    unsure: StrictBool | None = Field(
        description="true when either rule fires: mutual_information above the weights' unsure_mutual_information, "
        "or not_a_digit; with one threshold only, that rule decides; null when the weights carry neither"
    )


#: The top-level ``not_a_digit`` of every prediction (``PredictionOut``).
NOT_A_DIGIT = (
    "true when the largest of the 10 probabilities (eval mode, dropout off) is below the weights' "
    "not_a_digit_max_probability: the image is not a digit; null when the weights carry no such threshold"
)


class PredictionOut(BaseModel):
    """200 of ``POST /api/predict``."""

    predictions: Predictions
    success: Literal[True]
    not_a_digit: StrictBool | None = Field(description=NOT_A_DIGIT)
    uncertainty: UncertaintyOut | None = Field(None, description="only with ?samples=N")


class ErrorOut(BaseModel):
    """Every error of the API (never a stack trace)."""

    success: Literal[False]
    error: str


Stroke = list[Annotated[tuple[Number, Number, Number], Field(description="[x, y, t_ms]: canvas px, ms >= 0")]]


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
