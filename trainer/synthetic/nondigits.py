"""Non-digits: letters, symbols, scribbles and noise, as the page would show them to the model.

People draw things that are no digit; a model trained on digits alone calls most of them a
digit, with confidence. This module makes such inputs, for three uses:

- **training** (``split="train"``): the auxiliary set of *outlier exposure* (Hendrycks, Mazeika
  & Dietterich, "Deep Anomaly Detection with Outlier Exposure", ICLR 2019): the model learns
  to spread its probability evenly over the ten classes on them (``trainer.train``);
- **choosing the threshold** (``split="validation"``): the training split's kinds, fonts and
  characters from other seeds, never trained on: ``trainer.uncertainty.calibrate`` sets the
  "not a digit" threshold so that it flags most of them;
- **testing** (``split="test"``): how well a rule tells non-digits from digits, on images
  built from other seeds AND from shapes the training never saw: other fonts, held-out
  letters and symbols, and kinds of drawing that are test-only (``TEST_ONLY_KINDS``).

Every non-digit is drawn the way a person would draw it on the page and then goes through the
page's preprocessing: on the 280 x 280 canvas (``trainer.synthetic.redraw.CANVAS_SIZE``), its
centre lines are drawn with a round pen (``redraw.redraw``, 10-30 canvas px wide; the page's
pen is 20) and ``mnist_common.preprocess.to_mnist`` makes the 28 x 28 input. The kinds
(``KINDS``, with their share of a set):

- ``letter``: one letter of a font, its outline rendered with Pillow, skeletonised
  (``skimage.morphology.skeletonize``) and drawn again with the pen, i.e. the letter written
  with the page's pen, under a random rotation and slant. Letters that people write like a
  digit are left out (``DIGIT_LIKE``: O, I, l, Z, S, B, b, g, q, ...);
- ``word``: two or three such letters side by side;
- ``symbol``: a symbol of a font (+ # @ & % ? ! $ ...), written the same way;
- ``scribble``: 2-3 random smooth strokes (cubic Bezier curves or random walks with a slowly
  turning heading), 1-3 in the test split;
- ``zigzag``: a stroke going back and forth across the canvas, 4-14 times;
- ``hatching``: 2-6 parallel lines, sometimes crossed by a second set (a grid, a "#");
- ``polygon``: a closed triangle, rectangle, pentagon or hexagon with wobbly corners;
- ``coil``: a run of loops, as in a cursive "llll" or "eeee";
- ``noise``: 784 random pixels straight into the model (what ``/api/predict`` can be sent),
  with a random density;
- ``dots``: 5-40 random dots on the canvas;
- test-only: ``spiral`` (2-5 turns), ``figure`` (a star, a heart, an arrow, a circle with a
  cross through it), ``blob`` (smoothed noise, thresholded: ink stains).

Fonts: those matplotlib ships (DejaVu, STIX, Computer Modern), so the set is the same on every
machine with the dev extras, whatever fonts the system has. Training (and validation) writes
with DejaVu Sans and DejaVu Sans Mono; the test set with DejaVu Serif, STIX and Computer
Modern, and with letters and symbols the training never saw (``TEST_ONLY_LETTERS``,
``TEST_ONLY_SYMBOLS``).

Non-digit i of a split comes from ``np.random.default_rng((NONDIGIT_SEED, split, i))``, so the
first N are the same in every run and for every N. ``nondigit_set`` builds many over the CPU
cores and caches them as a ``.npz`` under ``data/nondigits/``, keyed by a hash of this file and
the split; a larger cached set serves a smaller one, a smaller one is extended. About 5-15 ms
of CPU per image.

Convention: grey values 0..255, ink = 255, background = 0, row-major (H, W); points are (x, y)
canvas pixels, x to the right, y down.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnist_common.preprocess import to_mnist

from ..data import DEFAULT_DATA_DIR
from .redraw import CANVAS_SIZE, default_processes, map_chunks, redraw

#: Seed of every non-digit: image i of split s is drawn from ``default_rng((NONDIGIT_SEED, s, i))``.
NONDIGIT_SEED = 4_171
#: The splits and their stream numbers (in the seed).
SPLITS = {"train": 0, "test": 1, "validation": 2}
#: Where ``nondigit_set`` caches built sets.
DEFAULT_CACHE_DIR = DEFAULT_DATA_DIR / "nondigits"
#: Pen widths, canvas px (the page's pen is 20).
PEN_WIDTH_RANGE = (10.0, 30.0)
#: Kept away from the canvas edge by the random strokes, canvas px.
MARGIN = 20

#: Kinds of non-digit and their share of a split (normalised per split).
KINDS = {
    "letter": 0.26,
    "word": 0.07,
    "symbol": 0.14,
    "scribble": 0.12,
    "zigzag": 0.08,
    "hatching": 0.07,
    "polygon": 0.07,
    "coil": 0.05,
    "noise": 0.05,
    "dots": 0.04,
    "spiral": 0.05,
    "figure": 0.05,
    "blob": 0.04,
}
#: Kinds only the test split has: shapes the training never sees.
TEST_ONLY_KINDS = ("spiral", "figure", "blob")

#: Letters people write like a digit (0: O o D Q; 1: I l i j J |; 2: Z z; 5: S s; 6: b G; 7: T t;
#: 8: B; 9: g q), never used.
DIGIT_LIKE = set("OoDQIlijJZzSsbGTtBgq")
LETTERS = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in DIGIT_LIKE)
#: Letters only the test split writes.
TEST_ONLY_LETTERS = "KRWehk"
SYMBOLS = "+×=#%*?!$<>~÷∞€£§πΩ→↑≠±&@♥★√∑¥©←↓≈µßΔΦλ"
#: Symbols only the test split writes.
TEST_ONLY_SYMBOLS = "&@♥★√∑¥©←↓≈µßΔΦλ"

_MPL_FONTS = ("mpl-data", "fonts", "ttf")
#: Font files (in matplotlib's mpl-data/fonts/ttf) per split.
FONTS = {
    "train": (
        "DejaVuSans.ttf",
        "DejaVuSans-Bold.ttf",
        "DejaVuSans-Oblique.ttf",
        "DejaVuSansMono.ttf",
        "DejaVuSansMono-Bold.ttf",
    ),
    "test": ("DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf"),
}
FONTS["validation"] = FONTS["train"]
#: Bumped when the drawing changes in a way the source hash would not show (it shows all of this file).
ALGORITHM_VERSION = 1


class NonDigits(NamedTuple):
    """A built set: ``images`` (N, 28, 28) uint8, ink = 255; ``kinds`` (N,) int64 indices into
    ``KINDS`` (in its key order); ``split`` a key of ``SPLITS``."""

    images: np.ndarray
    kinds: np.ndarray
    split: str

    def kind_names(self) -> list[str]:
        """The kind of each image, by name."""
        names = list(KINDS)
        return [names[k] for k in self.kinds]


def kinds_of(split: str) -> list[str]:
    """The kinds a split draws from (the test split: all; the training and validation splits:
    all but ``TEST_ONLY_KINDS``)."""
    _check_split(split)
    return [k for k in KINDS if split == "test" or k not in TEST_ONLY_KINDS]


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS[split]


@functools.cache
def font_dir() -> Path:
    """matplotlib's bundled font folder.

    Raises:
        FileNotFoundError: matplotlib is not installed (it comes with the dev extras).
    """
    import matplotlib

    path = Path(matplotlib.__file__).parent.joinpath(*_MPL_FONTS)
    if not path.is_dir():
        raise FileNotFoundError(f"no font folder at {path}: install the dev extras (./dev test installs them)")
    return path


@functools.lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / name), size)


def _characters(split: str, alphabet: str, test_only: str) -> str:
    return alphabet if split == "test" else "".join(c for c in alphabet if c not in test_only)


def _has_glyph(font: ImageFont.FreeTypeFont, text: str) -> bool:
    """False when the font draws ``text`` as its "missing glyph" box (or draws nothing)."""
    mask = np.asarray(font.getmask(text))
    if mask.size == 0 or not mask.any():
        return False
    missing = np.asarray(font.getmask("\ufffe"))
    return not (mask.shape == missing.shape and np.array_equal(mask, missing))


def _written(text: str, split: str, rng: np.random.Generator) -> np.ndarray | None:
    """``text`` in a random font of the split, rotated and slanted, as a (280, 280) bool
    skeleton of its strokes; None when the font lacks a glyph."""
    fonts = FONTS[split]
    font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(120, 200)))
    if not all(_has_glyph(font, c) for c in text):
        return None
    big = 2 * CANVAS_SIZE
    image = Image.new("L", (big, big), 0)
    ImageDraw.Draw(image).text((big / 2, big / 2), text, fill=255, font=font, anchor="mm")
    slant = rng.uniform(-0.3, 0.3)
    image = image.transform(
        image.size, Image.Transform.AFFINE, (1, slant, -slant * big / 2, 0, 1, 0), Image.Resampling.BILINEAR
    )
    image = image.rotate(rng.uniform(-15, 15), Image.Resampling.BILINEAR)
    ink = np.asarray(image) > 127
    ys, xs = np.nonzero(ink)
    if len(xs) == 0:
        return None
    # Size the text as people size a drawing (55-90 % of the usable canvas, keeping its
    # aspect), then skeletonise at canvas scale: the pen width relative to the letter is then
    # that of a drawn digit.
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    scale = rng.uniform(0.55, 0.9) * (CANVAS_SIZE - 2 * MARGIN) / max(height, width)
    crop = image.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    crop = crop.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (CANVAS_SIZE, CANVAS_SIZE), 0)
    canvas.paste(crop, ((CANVAS_SIZE - crop.width) // 2, (CANVAS_SIZE - crop.height) // 2))
    from skimage.morphology import skeletonize

    skel = skeletonize(np.asarray(canvas) > 127)
    return skel if skel.any() else None


def _rasterise(polyline: np.ndarray, skel: np.ndarray) -> None:
    """Mark the pixels of a (K, 2) (x, y) polyline in the (280, 280) bool ``skel``, consecutive
    pixels 8-connected (points resampled at most 0.7 px apart before rounding)."""
    for (x0, y0), (x1, y1) in zip(polyline[:-1], polyline[1:]):
        count = max(2, int(math.ceil(math.hypot(x1 - x0, y1 - y0) / 0.7)) + 1)
        xs = np.rint(np.linspace(x0, x1, count)).astype(np.int64).clip(0, CANVAS_SIZE - 1)
        ys = np.rint(np.linspace(y0, y1, count)).astype(np.int64).clip(0, CANVAS_SIZE - 1)
        skel[ys, xs] = True


def _bezier(rng: np.random.Generator) -> np.ndarray:
    """A cubic Bezier curve with 4 random control points on the canvas: (200, 2) points."""
    control = rng.uniform(MARGIN, CANVAS_SIZE - 1 - MARGIN, size=(4, 2))
    t = np.linspace(0.0, 1.0, 200)[:, None]
    return (
        (1 - t) ** 3 * control[0]
        + 3 * (1 - t) ** 2 * t * control[1]
        + 3 * (1 - t) * t**2 * control[2]
        + t**3 * control[3]
    )


def _walk(rng: np.random.Generator) -> np.ndarray:
    """A random walk with a slowly turning heading (its turn rate itself a random walk), kept
    inside the margin by reflection: (K, 2) points, 2 px apart."""
    low, high = MARGIN, CANVAS_SIZE - 1 - MARGIN
    point = rng.uniform(low + 40, high - 40, size=2)
    heading, turn = rng.uniform(0, 2 * math.pi), rng.normal(0, 0.05)
    points = [point.copy()]
    for _ in range(int(rng.integers(60, 220))):
        turn = float(np.clip(turn + rng.normal(0, 0.025), -0.2, 0.2))
        heading += turn
        point = point + 2.0 * np.array([math.cos(heading), math.sin(heading)])
        for axis in range(2):  # bounce off the margin: mirror the point and the heading
            if not low <= point[axis] <= high:
                edge = low if point[axis] < low else high
                point[axis] = 2 * edge - point[axis]
                heading = math.pi - heading if axis == 0 else -heading
        points.append(point.copy())
    return np.asarray(points)


def _place(points: np.ndarray, rng: np.random.Generator, rotate: bool = True) -> np.ndarray:
    """Points in unit coordinates (about [-1, 1]) onto the canvas: a random rotation, a random
    size (50-100 % of the usable canvas) and a random offset that keeps them inside."""
    if rotate:
        a = rng.uniform(0, 2 * math.pi)
        points = points @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    low, high = points.min(axis=0), points.max(axis=0)
    span = max(float((high - low).max()), 1e-6)
    usable = CANVAS_SIZE - 2 * MARGIN
    scaled = (points - low) * (rng.uniform(0.5, 1.0) * usable / span)
    room = usable - scaled.max(axis=0)
    return scaled + MARGIN + rng.uniform(0, 1, size=2) * room


def _zigzag(rng: np.random.Generator) -> list[np.ndarray]:
    turns = int(rng.integers(4, 15))  # 3 turns would be a "Z", a fair "2"
    xs = np.where(np.arange(turns + 1) % 2 == 0, -1.0, 1.0) + rng.normal(0, 0.08, turns + 1)
    ys = np.linspace(-1, 1, turns + 1) + rng.normal(0, 0.03, turns + 1)
    return [_place(np.stack([xs, ys], axis=1), rng)]


def _hatching(rng: np.random.Generator) -> list[np.ndarray]:
    lines = []
    for _ in range(1 if rng.random() < 0.5 else 2):
        n = int(rng.integers(2, 7))
        angle = rng.uniform(0, math.pi)
        d, n_ = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
        for offset in np.linspace(-0.8, 0.8, n) + rng.normal(0, 0.05, n):
            lines.append(np.stack([offset * n_ - d, offset * n_ + d]))
    # One placement for all lines: they stay parallel and crossing.
    placed = _place(np.concatenate(lines), rng, rotate=False)
    return [placed[i : i + 2] for i in range(0, len(placed), 2)]


def _polygon(rng: np.random.Generator) -> list[np.ndarray]:
    sides = int(rng.choice([3, 4, 4, 5, 6]))
    angles = np.linspace(0, 2 * math.pi, sides + 1)[:-1] + rng.normal(0, 0.1, sides)
    radius = 1 + rng.normal(0, 0.08, sides)
    points = np.stack([np.cos(angles) * radius * rng.uniform(0.6, 1.4), np.sin(angles) * radius], axis=1)
    return [_place(np.concatenate([points, points[:1]]), rng)]


def _coil(rng: np.random.Generator) -> list[np.ndarray]:
    loops = int(rng.integers(3, 8))
    t = np.linspace(0, 2 * math.pi * loops, 60 * loops)
    width = rng.uniform(0.3, 0.8)
    xs = t / (math.pi * loops) - 1 - width * np.sin(t) * 0.3
    ys = -np.abs(rng.uniform(0.5, 1.0)) * (1 - np.cos(t)) / 2
    return [_place(np.stack([xs, ys], axis=1), rng, rotate=False)]


def _spiral(rng: np.random.Generator) -> list[np.ndarray]:
    turns = rng.uniform(2, 5)
    t = np.linspace(0, 2 * math.pi * turns, int(120 * turns))
    r = 0.1 + t / t[-1]
    sign = 1 if rng.random() < 0.5 else -1
    return [_place(np.stack([r * np.cos(sign * t), r * np.sin(t)], axis=1), rng)]


def _figure(rng: np.random.Generator) -> list[np.ndarray]:
    which = int(rng.integers(4))
    if which == 0:  # a five-pointed star in one stroke
        angles = np.pi / 2 + np.arange(6) * 4 * np.pi / 5
        return [_place(np.stack([np.cos(angles), -np.sin(angles)], axis=1), rng)]
    if which == 1:  # a heart
        t = np.linspace(0, 2 * math.pi, 200)
        xs = 16 * np.sin(t) ** 3 / 16
        ys = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16
        return [_place(np.stack([xs, ys], axis=1), rng, rotate=False)]
    if which == 2:  # an arrow: a shaft and a head
        shaft = np.array([[-1.0, 0.0], [1.0, 0.0]])
        head = np.array([[0.5, -0.4], [1.0, 0.0], [0.5, 0.4]])
        placed = _place(np.concatenate([shaft, head]), rng)
        return [placed[:2], placed[2:]]
    t = np.linspace(0, 2 * math.pi, 120)  # a circle with a cross through it
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    cross = np.array([[-1.2, -1.2], [1.2, 1.2], [-1.2, 1.2], [1.2, -1.2]])
    placed = _place(np.concatenate([circle, cross]), rng)
    return [placed[:120], placed[120:122], placed[122:]]


def _strokes_canvas(strokes: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    skel = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=bool)
    for stroke in strokes:
        _rasterise(stroke, skel)
    return redraw(skel, rng.uniform(*PEN_WIDTH_RANGE))


def _noise(rng: np.random.Generator) -> np.ndarray:
    """784 random pixels: each inked with a random density, uniform grey 0..255."""
    density = rng.uniform(0.2, 1.0)
    pixels = rng.uniform(0, 255, size=(28, 28)) * (rng.random((28, 28)) < density)
    return pixels.astype(np.float32)


def _dots(rng: np.random.Generator) -> np.ndarray:
    skel = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=bool)
    n = int(rng.integers(5, 41))
    xy = rng.uniform(MARGIN, CANVAS_SIZE - MARGIN, size=(n, 2)).astype(int)
    skel[xy[:, 1], xy[:, 0]] = True
    return redraw(skel, rng.uniform(*PEN_WIDTH_RANGE))


def _blob(rng: np.random.Generator) -> np.ndarray:
    """Ink stains: smooth random noise (a few random Gaussian bumps), thresholded."""
    yy, xx = np.mgrid[0:CANVAS_SIZE, 0:CANVAS_SIZE].astype(np.float32)
    field = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.float32)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(MARGIN, CANVAS_SIZE - MARGIN, size=2)
        field += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(10, 40) ** 2))
    return np.where(field > rng.uniform(0.3, 0.7), 255.0, 0.0).astype(np.float32)


def _text(split: str, rng: np.random.Generator, alphabet: str, test_only: str, length: int) -> np.ndarray | None:
    chars = _characters(split, alphabet, test_only)
    text = "".join(chars[int(rng.integers(len(chars)))] for _ in range(length))
    skel = _written(text, split, rng)
    return None if skel is None else redraw(skel, rng.uniform(*PEN_WIDTH_RANGE))


def draw(kind: str, split: str, rng: np.random.Generator) -> np.ndarray | None:
    """One non-digit of ``kind`` on the canvas, or straight as the model's input.

    Returns:
        float32 0..255, ink = 255: (280, 280) canvas pixels for the drawn kinds, (28, 28) model
        pixels for ``noise``; None when this draw gave nothing usable (a font lacking a glyph):
        the caller draws again.

    Raises:
        ValueError: an unknown kind or split.
    """
    _check_split(split)
    if kind == "letter":
        return _text(split, rng, LETTERS, TEST_ONLY_LETTERS, 1)
    if kind == "word":
        return _text(split, rng, LETTERS, TEST_ONLY_LETTERS, int(rng.integers(2, 4)))
    if kind == "symbol":
        return _text(split, rng, SYMBOLS, TEST_ONLY_SYMBOLS, 1)
    if kind == "scribble":
        # Training scribbles have 2-3 strokes: a lone smooth stroke is too often a fair "1" or
        # "7" to teach the model that it is no digit; the test's may have one.
        count = int(rng.integers(1 if split == "test" else 2, 4))
        return _strokes_canvas([_bezier(rng) if rng.random() < 0.5 else _walk(rng) for _ in range(count)], rng)
    strokes = {
        "zigzag": _zigzag,
        "hatching": _hatching,
        "polygon": _polygon,
        "coil": _coil,
        "spiral": _spiral,
        "figure": _figure,
    }
    if kind in strokes:
        return _strokes_canvas(strokes[kind](rng), rng)
    pixels = {"noise": _noise, "dots": _dots, "blob": _blob}
    if kind in pixels:
        return pixels[kind](rng)
    raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")


def nondigit(index: int, split: str = "test") -> tuple[np.ndarray, str]:
    """Non-digit ``index`` of ``split`` as the model sees it, and its kind.

    The kind is drawn with the shares of ``KINDS`` (over ``kinds_of(split)``); the drawing goes
    through ``to_mnist`` unless it is already 28 x 28.

    Returns:
        ((28, 28) float32 in 0..255, ink = 255, never blank; the kind's name).

    Raises:
        ValueError: an unknown split or a negative index.
    """
    stream = _check_split(split)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng((NONDIGIT_SEED, stream, index))
    kinds = kinds_of(split)
    shares = np.array([KINDS[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=shares / shares.sum()))]
    while True:
        image = draw(kind, split, rng)
        if image is None:
            continue
        pixels = image if image.shape == (28, 28) else to_mnist(image)
        if pixels is not None and pixels.max() > 0:
            return pixels.astype(np.float32), kind


def _build_chunk(task: tuple[str, int, int]) -> list[tuple[np.ndarray, int]]:
    """Non-digits ``start`` .. ``stop - 1`` of ``split``: [(28x28 uint8, kind index)]."""
    split, start, stop = task
    names = list(KINDS)
    out = []
    for i in range(start, stop):
        pixels, kind = nondigit(i, split)
        out.append((np.clip(np.rint(pixels), 0, 255).astype(np.uint8), names.index(kind)))
    return out


def _source_digest(split: str) -> str:
    """16 hex digits of a hash of this module's source, ``redraw``'s, ``ALGORITHM_VERSION`` and
    the split: what names a split's cached sets of every count."""
    from . import redraw as redraw_module

    digest = hashlib.sha256()
    for source in (Path(__file__), Path(redraw_module.__file__)):
        digest.update(source.read_bytes())
    digest.update(f"{ALGORITHM_VERSION}:{split}".encode())
    return digest.hexdigest()[:16]


def cache_path(cache_dir: Path, split: str, count: int) -> Path:
    """The cache file of the first ``count`` non-digits of ``split``: named by the split, the
    count and ``_source_digest(split)`` (the same for every count: see ``_cached_prefix``)."""
    return Path(cache_dir) / f"{split}-{count}-{_source_digest(split)}.npz"


def _cached_prefix(cache_dir: Path, split: str, count: int) -> NonDigits | None:
    """The largest cached set of ``split`` with this code's hash, cut to at most ``count``
    non-digits; None when there is none. The first N non-digits are the same for every N, so a
    larger set gives a smaller one by slicing and a smaller one is extended, not rebuilt."""
    sizes = {}
    for path in Path(cache_dir).glob(f"{split}-*-{_source_digest(split)}.npz"):
        size = path.name.split("-")[1]  # split names have no "-"
        if size.isdigit():
            sizes[int(size)] = path
    if not sizes:
        return None
    with np.load(sizes[max(sizes)]) as cached:
        return NonDigits(cached["images"][:count], cached["kinds"][:count], split)


def nondigit_set(
    count: int,
    split: str = "test",
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> NonDigits:
    """The first ``count`` non-digits of ``split`` (``nondigit``), built over the CPU cores and
    cached under ``cache_dir`` (None: no cache). A larger cached set of the split is sliced, a
    smaller one extended.

    Returns:
        ``NonDigits`` (images (count, 28, 28) uint8, kinds (count,) int64, split).

    Raises:
        ValueError: an unknown split or count < 1.
    """
    _check_split(split)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    path = cache_path(cache_dir, split, count) if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as cached:
            return NonDigits(cached["images"], cached["kinds"], split)
    prefix = _cached_prefix(cache_dir, split, count) if cache_dir is not None else None
    if prefix is not None and len(prefix.kinds) == count:
        return prefix
    start = 0 if prefix is None else len(prefix.kinds)
    chunk = 100
    tasks = [(split, first, min(first + chunk, count)) for first in range(start, count, chunk)]
    parts = map_chunks(
        _build_chunk,
        tasks,
        total=count - start,
        desc=f"drawing {count - start:,} non-digits ({split})",
        processes=processes if processes is not None else default_processes(count - start),
        progress=progress,
    )
    items = [item for part in parts for item in part]
    images = np.stack([i for i, _ in items])
    kinds = np.array([k for _, k in items], dtype=np.int64)
    if prefix is not None:
        images, kinds = np.concatenate([prefix.images, images]), np.concatenate([prefix.kinds, kinds])
    built = NonDigits(images, kinds, split)
    if path is not None:
        from ..export import write_atomically

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez_compressed(f, images=built.images, kinds=built.kinds)

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, write)
    return built


def grid(images: np.ndarray, kinds: list[str], path: Path, columns: int = 12) -> Path:
    """A PNG grid of (N, 28, 28) images (ink black on white, 3x), one row per kind."""
    names = list(dict.fromkeys(kinds))
    cell = 28 * 3 + 4
    sheet = Image.new("L", (90 + columns * cell, len(names) * cell), 255)
    pen = ImageDraw.Draw(sheet)
    for row, name in enumerate(names):
        pen.text((4, row * cell + cell // 2 - 6), name, fill=0)
        chosen = [i for i, k in enumerate(kinds) if k == name][:columns]
        for col, i in enumerate(chosen):
            tile = Image.fromarray(255 - images[i].astype(np.uint8)).resize((84, 84), Image.Resampling.NEAREST)
            sheet.paste(tile, (90 + col * cell, row * cell + 2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.synthetic.nondigits --split test --count 600 --grid out.png``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=list(SPLITS), default="test")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--grid", type=Path, default=Path("reports/nondigits.png"))
    args = parser.parse_args(argv)
    built = nondigit_set(args.count, args.split)
    print(f"wrote {grid(built.images, built.kind_names(), args.grid)}")


if __name__ == "__main__":
    main()
