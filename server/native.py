"""The native Rust module ``mnist_infer`` behind ``POST /api/predict``: imported on first use,
and a 503 (with what is being built and ``Retry-After``: docs/api.md) while it cannot be.

* ``Classifier``: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities.
* ``Uncertainty``: (784,) pixels, N passes -> the API's ``uncertainty`` object (MC dropout).

Either can be given a stand-in (tests, ``make_server(classify_pixels=...)``).
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
#: "samples": N, "unsure": bool or None}`` (units and ranges: ``schemas.UncertaintyOut``).
UncertaintyFn = Callable[..., dict]
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
            ``unsure`` (a broken uncertainty function: the API answers 500).
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
