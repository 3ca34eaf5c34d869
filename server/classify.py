"""Classify image files with the project's native Rust model (``invoke predict IMAGE...``).

image file --load_ink--> ink (H, W) --to_mnist--> 28x28 --predict--> 10 probabilities
                                                                  --not_a_digit--> true / false

``predict`` is any function taking float32 pixels, (784,) or (N, 784), 0..255 with ink = 255,
and returning float32 probabilities, (10,) or (N, 10). The default (``predict=None``) is
``mnist_infer.predict`` from the native module built from wasm-infer/mnist-infer, imported on first
use; ``trainer.export.torch_predictor`` gives the same function from PyTorch, for comparisons and tests.
``not_a_digit`` is the weights' "not a digit" rule on those probabilities, ``mnist_infer.not_a_digit``
with the native model (the rule's one implementation, in Rust), none with another ``predict``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from mnist_common.constants import CLASS_NAMES, NUM_PIXELS
from mnist_common.preprocess import BlankImageError, ImageError, load_ink, to_mnist

Predict = Callable[[np.ndarray], np.ndarray]
#: One image's (10,) float32 probabilities -> True / False ("not a digit" or not), or None when
#: the weights carry no such rule (the contract of ``mnist_infer.not_a_digit``).
NotADigit = Callable[[np.ndarray], bool | None]


def native_predict() -> Predict:
    """``mnist_infer.predict``, the Rust model in this process.

    Raises:
        ImportError: the module is not built; the message says where it comes from.
    """
    try:
        import mnist_infer
    except ImportError as e:
        raise ImportError(
            "the native module mnist_infer is not installed: build it from wasm-infer/mnist-infer "
            f"with maturin into this Python environment ({e})"
        ) from e
    return mnist_infer.predict


def preprocess_file(source: str | os.PathLike | bytes) -> np.ndarray:
    """An image file as model input: (784,) float32, 0..255, ink = 255.

    Raises:
        ImageError: unreadable or not an image (see ``load_ink``).
        BlankImageError: the image has no ink.
    """
    pixels = to_mnist(load_ink(source))
    if pixels is None:
        name = "image data" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
        raise BlankImageError(f"{name}: blank image (no ink found)")
    return pixels.reshape(NUM_PIXELS)


def classify_image(source: str | os.PathLike | bytes, predict: Predict | None = None) -> np.ndarray:
    """Probabilities of the ten digits for one image file: (10,) float32, summing to 1.

    Raises:
        ImageError / BlankImageError: see ``preprocess_file``.
        ImportError: ``predict`` is None and mnist_infer is not built.
    """
    predict = predict if predict is not None else native_predict()
    return np.asarray(predict(preprocess_file(source)), dtype=np.float32).reshape(len(CLASS_NAMES))


def predictions_payload(probabilities) -> dict:
    """The JSON document of one prediction (plain Python types)::

        {"predictions": {"all": [{"class_name": "zero", "label": 0, "probability": p0}, ...],
                         "prediction": <the entry with the highest probability>},
         "success": True}

    Raises:
        ValueError: ``probabilities`` does not hold 10 finite numbers.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if probabilities.shape != (len(CLASS_NAMES),) or not np.isfinite(probabilities).all():
        raise ValueError(f"expected 10 finite probabilities, got {probabilities.shape[0]} values")
    entries = [
        {"class_name": name, "label": label, "probability": float(p)}
        for label, (name, p) in enumerate(zip(CLASS_NAMES, probabilities))
    ]
    best = int(np.argmax(probabilities))
    return {"predictions": {"all": entries, "prediction": dict(entries[best])}, "success": True}


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (label, probability) pairs, most likely first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(int(label), float(probabilities[label])) for label in order]


def top_count(text: str) -> int:
    """argparse type for --top: an integer in 1..10."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= len(CLASS_NAMES):
        raise argparse.ArgumentTypeError(f"must be between 1 and {len(CLASS_NAMES)}, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="invoke predict",
        description="Classify images of handwritten digits with the native Rust model; a line ends with "
        '"not a digit" where the model\'s rule says the image is none.',
    )
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...; any polarity)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--top", type=top_count, default=1, metavar="K", help="show the K likeliest digits (1-10)")
    return p


def main(argv: Sequence[str], predict: Predict | None = None, not_a_digit: NotADigit | None = None) -> int:
    """Classify the image files named in ``argv``; print one line per file (or JSON).

    All readable files are preprocessed, then classified with one (N, 784) ``predict`` call.
    Each line ends with "not a digit" where the weights' rule says so (``not_a_digit``; with
    ``predict=None``, the native module's ``mnist_infer.not_a_digit``); the JSON has
    ``"not_a_digit": true / false``, or null without a rule. Failures (unreadable, not an
    image, blank) are reported per file, on stderr or in the JSON, and the other files are
    still classified.

    Returns:
        0 when every file was classified, 1 when any failed (or the model is missing),
        2 for bad arguments (argparse's message on stderr).
    """
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as e:  # --help, or a usage error
        return int(e.code or 0)
    pixels, errors = {}, {}
    for index, name in enumerate(args.images):
        try:
            pixels[index] = preprocess_file(name)
        except ImageError as e:
            errors[index] = str(e)
    probabilities = {}
    if pixels:
        try:
            model = predict if predict is not None else native_predict()
        except ImportError as e:
            print(f"invoke predict: {e}", file=sys.stderr)
            return 1
        if predict is None and not_a_digit is None:
            import mnist_infer

            not_a_digit = mnist_infer.not_a_digit
        batch = np.stack(list(pixels.values())).astype(np.float32)
        for index, probs in zip(pixels, np.asarray(model(batch)).reshape(len(pixels), len(CLASS_NAMES))):
            probabilities[index] = probs

    results = []
    for index, name in enumerate(args.images):
        if index in errors:
            results.append({"file": name, "error": errors[index]})
            if not args.json:
                print(errors[index], file=sys.stderr)
            continue
        best = top_k(probabilities[index], args.top)
        flag = None if not_a_digit is None else not_a_digit(probabilities[index])
        results.append(
            {
                "file": name,
                "digit": best[0][0],
                "probability": best[0][1],
                "top": [{"label": label, "probability": p} for label, p in best],
                "not_a_digit": flag,
            }
        )
        if not args.json:
            shown = (
                f"{best[0][0]} ({best[0][1]:.1%})"
                if args.top == 1
                else ", ".join(f"{label} {p:.1%}" for label, p in best)
            )
            print(f"{name}: {shown}" + (", not a digit" if flag else ""))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
