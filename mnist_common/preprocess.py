"""Images of handwritten digits -> MNIST-style 28x28 inputs: a numpy port of web/preprocess.js.

``to_mnist`` is the page's algorithm, step for step (LeCun et al.'s MNIST convention: the
digit size-normalised into a 20x20 box keeping its aspect ratio, then centred in 28x28 by its
centre of mass):

1. crop to the bounding box of the pixels with ink > 0;
2. scale so that the longer side is ``DIGIT_BOX`` px by area averaging (output pixel i covers
   source [i*step, (i+1)*step), step = longer side / 20; sizes rounded half up like
   JavaScript's ``Math.round``), written as ``Wy @ crop @ Wx.T`` with one weight matrix per axis;
3. paste into ``MNIST_SIZE`` x ``MNIST_SIZE`` so that the centre of mass (pixel centres at
   x + 0.5, y + 0.5) lands on (14, 14), the shift rounded half up; values clamped to 0..255.

The tests compare it with the JS in Chromium. ``ink_from_image`` and ``load_ink`` are the
Python side's way in from image files; ``ink_from_rgba``, which they use for images drawn on a
transparent background, is the twin of the page's ``inkFromImageData`` (ink = 255 - BT.601 luma
of the pixel composited over white).
Convention everywhere: grey values 0..255, ink = 255, background = 0, row-major (H, W).
"""

from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import IMAGE_SIZE

#: Side of the model's input image, in pixels (mirrors ``MNIST_SIZE`` in web/preprocess.js).
MNIST_SIZE = IMAGE_SIZE
#: Side of the box the digit is scaled into before centring: MNIST's 20x20 (mirrors ``DIGIT_BOX``).
DIGIT_BOX = 20
#: Ink fainter than this (grey levels above the background) in an opaque image is taken as
#: paper or compression noise and set to 0: JPEG ringing around a digit reaches about 7.
NOISE_FLOOR = 16
#: Largest image ``load_ink`` decodes, in pixels: more is refused as a decompression bomb.
MAX_PIXELS = 40_000_000
#: ITU-R BT.601 luma weights of R, G, B (Pillow's "L" conversion): grey = 0.299 R + 0.587 G +
#: 0.114 B. Mirrors ``LUMA_WEIGHTS`` in web/pen.js (tests/test_redraw.py checks that they agree).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class ImageError(ValueError):
    """An image file is unreadable, not an image, empty or too large."""


class BlankImageError(ImageError):
    """An image has no ink at all, so it shows no digit."""


def js_round(x: float) -> int:
    """Round half up, like JavaScript's ``Math.round`` (Python's ``round`` rounds half to even)."""
    floor = math.floor(x)
    return int(floor + 1 if x - floor >= 0.5 else floor)


def _check_ink(ink) -> np.ndarray:
    """``ink`` as a 2-D numeric array, or ValueError saying what is wrong with it."""
    array = np.asarray(ink)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D (height, width) ink array, got shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"expected real numbers for the ink, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError("ink array has NaN or infinite values")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"ink values must lie in 0..255, got {array.min()}..{array.max()}")
    return array


def ink_bounds(ink) -> tuple[int, int, int, int] | None:
    """Bounding box of the pixels with ink > 0.

    Args:
        ink: (H, W) array of numbers.

    Returns:
        ``(x0, y0, x1, y1)``, columns x0..x1-1 and rows y0..y1-1 (inclusive-exclusive, like
        ``inkBounds`` in the JS), or None when no pixel has ink.

    Raises:
        ValueError: ``ink`` is not 2-D.
    """
    ink = np.asarray(ink)
    if ink.ndim != 2:
        raise ValueError(f"expected a 2-D (height, width) ink array, got shape {ink.shape}")
    has_ink = ink > 0
    rows = np.flatnonzero(has_ink.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(has_ink.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def area_weights(n_in: int, n_out: int, step: float) -> np.ndarray:
    """1-D area resampling matrix: (n_out, n_in) float64.

    Output pixel i covers source [i*step, (i+1)*step); its weight for source pixel j is the
    length of overlap with [j, j+1) divided by ``step`` (0 where they do not overlap).
    """
    start = np.arange(n_out)[:, None] * step
    end = (np.arange(n_out)[:, None] + 1) * step
    source = np.arange(n_in)[None, :]
    overlap = np.minimum(end, source + 1) - np.maximum(start, source)
    return np.where(overlap > 0, overlap / step, 0.0)


def to_mnist(ink) -> np.ndarray | None:
    """MNIST-style preprocessing of a grey ink image (``toMnist`` in web/preprocess.js).

    Args:
        ink: (H, W) array of real numbers in 0..255, ink = 255, background = 0.

    Returns:
        (28, 28) float32 in 0..255, ink = 255: the digit scaled so its longer side is 20 px
        and centred by its centre of mass; None when no pixel has ink (blank image).

    Raises:
        ValueError: ``ink`` is not 2-D or numeric, has NaN/infinite values, or values outside
            0..255 (the JS does not check values; this port refuses them instead).
    """
    ink = _check_ink(ink)
    box = ink_bounds(ink)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    crop_w, crop_h = x1 - x0, y1 - y0
    step = max(crop_w, crop_h) / DIGIT_BOX  # source pixels per output pixel
    out_w = max(1, js_round(crop_w / step))
    out_h = max(1, js_round(crop_h / step))
    crop = np.asarray(ink[y0:y1, x0:x1], dtype=np.float64)
    # Rows first (crop_h, out_w), then columns (out_h, out_w), as the JS does.
    digit = area_weights(crop_h, out_h, step) @ (crop @ area_weights(crop_w, out_w, step).T)

    mass = digit.sum()
    centre_x = digit.sum(axis=0) @ (np.arange(out_w) + 0.5) / mass
    centre_y = digit.sum(axis=1) @ (np.arange(out_h) + 0.5) / mass
    dx = js_round(MNIST_SIZE / 2 - centre_x)
    dy = js_round(MNIST_SIZE / 2 - centre_y)

    out = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    top, bottom = max(0, dy), min(MNIST_SIZE, out_h + dy)
    left, right = max(0, dx), min(MNIST_SIZE, out_w + dx)
    if top < bottom and left < right:
        out[top:bottom, left:right] = np.clip(digit[top - dy : bottom - dy, left - dx : right - dx], 0, 255)
    return out


def _border(grey: np.ndarray) -> np.ndarray:
    """The pixels of the outermost rows and columns of a 2-D array, as one 1-D array."""
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def _grey(image: Image.Image) -> np.ndarray:
    """(H, W) float64 grey values 0..255 (white = 255) of an image with no alpha channel."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float64) / 257
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageError("image has NaN or infinite pixel values")
        top = values.max(initial=0)
        scale = 255 / 65535 if top > 255 else 255 if image.mode == "F" and top <= 1 else 1
        return np.clip(values * scale, 0, 255)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float64)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return rgb @ np.array(LUMA_WEIGHTS)  # ITU-R BT.601 luma, as Pillow's "L"


def ink_from_rgba(rgba) -> np.ndarray:
    """Ink of a picture drawn on a transparent background, as the page reads its canvas.

    The twin of ``inkFromImageData`` in web/preprocess.js, operation for operation (so both
    give the same numbers): each pixel composited over white paper, then 255 - its BT.601 luma,
    i.e. ``alpha * (255 - (0.299 r + 0.587 g + 0.114 b)) / 255``, rounded to the nearest
    integer with ties to even (as a ``Uint8ClampedArray`` stores it). Black ink gives its alpha
    exactly; an opaque light blue (#4fc3f7) 89; white or a transparent pixel 0.

    Args:
        rgba: (H, W, 4) array of R, G, B, alpha in 0..255, not premultiplied (as Pillow's
            "RGBA" mode and the canvas's ImageData hold them).

    Returns:
        (H, W) float32 of integers in 0..255, ink = 255, background = 0.

    Raises:
        ValueError: ``rgba`` is not (H, W, 4) or has values outside 0..255 (or NaN).
    """
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an (H, W, 4) RGBA array, got shape {rgba.shape}")
    values = rgba.astype(np.float64)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 255):
        raise ValueError("RGBA values must lie in 0..255")
    red, green, blue, alpha = (values[..., i] for i in range(4))
    luma = LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue
    return np.rint(alpha * (255 - luma) / 255).astype(np.float32)


def ink_from_image(image: Image.Image) -> np.ndarray:
    """The ink of a picture of a digit, in the page's convention.

    * Transparency: when the image has an alpha channel that varies and a transparent
      background (median alpha of the border pixels <= 127), it is read as the page reads its
      canvas (``ink_from_rgba``): composited over white, ink = 255 - luma, so black ink gives
      its alpha and light colours faint ink (white ink on transparent gives none). Otherwise
      the image is composited over white and handled as an opaque one.
    * Grey: luma 0.299 R + 0.587 G + 0.114 B. 16-bit images (I;16, or I/F with values above
      255) are scaled by 255/65535; F images with values in 0..1 by 255.
    * Polarity: the median of the border pixels is taken as the background. A bright
      background (> 127: dark ink on light paper, the usual scan or photo) is inverted; a dark
      one (light ink on dark, as in MNIST) is kept. A digit touching every edge can fool this.
    * Levels (opaque images only): the background level becomes 0 and full ink stays 255
      (``(v - background) * 255 / (255 - background)``, clipped), and ink below
      ``NOISE_FLOOR`` becomes 0, so that JPEG noise or grey paper does not widen the
      bounding box that ``to_mnist`` crops to.

    Args:
        image: a Pillow image of any mode (L, RGB, RGBA, LA, P, 1, I;16, I, F, CMYK, ...).

    Returns:
        (H, W) float32 in 0..255, ink = 255, background = 0 where the background is uniform.

    Raises:
        ImageError: float pixels that are NaN or infinite.
    """
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3]
        if alpha.size and alpha.min() != alpha.max() and np.median(_border(alpha)) <= 127:
            return ink_from_rgba(rgba)
        opacity = alpha[..., None] / 255
        composited = rgba[..., :3] * opacity + 255 * (1 - opacity)
        grey = composited @ np.array(LUMA_WEIGHTS)
    else:
        grey = _grey(image)
    if not grey.size:
        return grey.astype(np.float32)
    background = float(np.median(_border(grey)))
    if background > 127:
        grey, background = 255 - grey, 255 - background
    ink = np.clip((grey - background) * (255 / (255 - background)), 0, 255)
    ink[ink < NOISE_FLOOR] = 0
    return ink.astype(np.float32)


def load_ink(source: str | os.PathLike | bytes) -> np.ndarray:
    """Open an image file with Pillow and return its ink (see ``ink_from_image``).

    EXIF orientation (phone photos) is applied; of an animation, the first frame is used.

    Args:
        source: a path, or the bytes of an image file.

    Returns:
        (H, W) float32 in 0..255, ink = 255.

    Raises:
        ImageError: the file is missing, unreadable, empty, not an image, truncated or corrupt,
            or larger than ``MAX_PIXELS`` (a decompression bomb); the message names the file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, file = "image data", io.BytesIO(source)
        size = len(source)
    else:
        name = file = os.fspath(source)
        size = None
    try:
        if size is None:
            size = os.path.getsize(name)
        if size == 0:
            raise ImageError(f"{name}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: {width}x{height} pixels is more than the {MAX_PIXELS:,} allowed (decompression bomb?)"
                    )
                if width * height == 0:
                    raise ImageError(f"{name}: image has no pixels ({width}x{height})")
                image.load()
                upright = ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image (Pillow cannot identify its format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: too many pixels (decompression bomb?): {e}") from e
    except FileNotFoundError as e:
        raise ImageError(f"{name}: no such file") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: cannot read the image ({e})") from e
    try:
        return ink_from_image(upright)
    except ImageError as e:
        raise ImageError(f"{name}: {e}") from e
