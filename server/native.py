"""The native Rust module ``mnist_infer`` behind ``POST /api/predict``: imported on first use,
and a 503 (with what is being built and ``Retry-After``: docs/api.md) while it cannot be.

* ``NativeFunction("predict")``, ``NativeFunction("not_a_digit")``,
  ``NativeFunction("uncertainty")``: the module's functions, or stand-ins (tests,
  ``make_server(classify_pixels=...)``), with a 503 until it is built.
* ``classify``: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities, checked.
* ``not_a_digit``: one image's 10 probabilities -> the answer's ``not_a_digit`` (the native
  module's rule: ``mnist_infer.not_a_digit``; no copy of it here), checked.
* ``uncertainty``: (784,) pixels, N passes -> the API's ``uncertainty`` object (MC dropout).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from http import HTTPStatus

import numpy as np

from .errors import ApiError
from .schemas import UncertaintyOut

#: Seed of the MC-dropout masks: the same request always gets the same numbers.
UNCERTAINTY_SEED = 0

#: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities.
ClassifyPixels = Callable[[np.ndarray], np.ndarray]
#: ``(pixels, samples=N, seed=S) -> dict``, the contract of ``mnist_infer.uncertainty``: pixels
#: (784,) float32 0..255 (one image), N MC-dropout passes (1..1000), S the mask seed; returns
#: ``{"probabilities": (10,), "std": (10,), "entropy": float, "mutual_information": float,
#: "samples": N, "not_a_digit": bool or None, "unsure": bool or None}``: ``not_a_digit`` is the
#: weights' "not a digit" rule on one eval-mode pass of the image (None without its threshold),
#: ``unsure`` is true when either rule fires (the mutual information above its threshold, or
#: ``not_a_digit``), None when the weights have neither threshold (units and ranges:
#: ``schemas.UncertaintyOut``).
UncertaintyFn = Callable[..., dict]
#: ``(probabilities) -> bool or None``, the contract of ``mnist_infer.not_a_digit``: one image's
#: 10 probabilities (float32 (10,), eval mode, as ``ClassifyPixels`` gave them) -> whether it is
#: "not a digit" (the largest below the weights' ``not_a_digit_max_probability``), None when
#: the weights have no such threshold.
NotADigitFn = Callable[[np.ndarray], bool | None]
#: Building: what the server is waiting for, in words, with a rough time left in seconds (None:
#: no time, e.g. the build failed, which the words say); or None when nothing is being built.
#: ``invoke serve`` passes one while it builds the native module in the background.
Building = Callable[[], "tuple[str, float | None] | None"]


def uncertainty_payload(result: dict, samples: int) -> dict:
    """The ``uncertainty`` object of the API answer (``UncertaintyOut``, plain Python types) from
    an ``UncertaintyFn`` result.

    Raises:
        RuntimeError: the result does not hold 10 finite probabilities and 10 finite stds >= 0,
            finite entropy and mutual information, ``samples`` passes and a bool-or-None
            ``not_a_digit`` and ``unsure`` (a broken uncertainty function: the API answers 500).
    """
    try:
        arrays = {key: np.asarray(result[key], dtype=np.float64).tolist() for key in ("probabilities", "std")}
        scalars = {key: float(result[key]) for key in ("entropy", "mutual_information")}
        checked = UncertaintyOut.model_validate({**result, **arrays, **scalars})
    except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise RuntimeError(f"the uncertainty function returned an unusable result ({e})") from None
    if checked.samples != samples:
        raise RuntimeError(f"the uncertainty function ran {checked.samples} passes, not {samples}")
    return checked.model_dump()


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


class NativeFunction:
    """``given``, or the function ``name`` of the native module, imported on first use: calling
    it calls that function, or raises ApiError 503 while the module cannot be imported (tried
    again on the next call)."""

    def __init__(self, name: str, given: Callable | None = None, building: Building | None = None) -> None:
        self.name, self._function, self._building = name, given, building

    def __call__(self, *args, **kwargs):
        if self._function is None:
            self._function = getattr(native_module(self._building), self.name)
        return self._function(*args, **kwargs)


def classify(predict: ClassifyPixels, pixels: np.ndarray) -> np.ndarray:
    """(N, 784) float32 pixels 0..255 -> (N, 10) float32 probabilities by ``predict``.

    Raises:
        RuntimeError: ``predict`` returned another shape (a bug: the API answers 500).
    """
    probabilities = np.asarray(predict(pixels), dtype=np.float32)
    if probabilities.shape != (len(pixels), 10):
        raise RuntimeError(f"the classifier returned shape {probabilities.shape} for {len(pixels)} images")
    return probabilities


def no_rule(probabilities: np.ndarray) -> None:
    """The ``NotADigitFn`` of a classifier without a "not a digit" rule: always None."""
    return None


def not_a_digit(function: NotADigitFn, probabilities: np.ndarray) -> bool | None:
    """One image's (10,) probabilities -> the answer's ``not_a_digit`` by ``function``.

    Raises:
        RuntimeError: ``function`` returned neither a bool nor None (a bug: the API answers 500).
    """
    flag = function(np.asarray(probabilities, dtype=np.float32).reshape(10))
    if flag is not None and not isinstance(flag, bool):
        raise RuntimeError(f"the not-a-digit function returned {type(flag).__name__}, not a bool or None")
    return flag


def uncertainty(function: UncertaintyFn, pixels: np.ndarray, samples: int) -> dict:
    """(784,) float32 pixels and 1..MAX_SAMPLES passes -> the API's ``uncertainty`` object
    (``uncertainty_payload``), masks seeded with UNCERTAINTY_SEED."""
    return uncertainty_payload(function(pixels, samples=samples, seed=UNCERTAINTY_SEED), samples)
