"""Synthetic writers: digits written in consistent personal styles with the page's pen.

MNIST's test digits come from the same population of writers as its training digits, and
every digit is by a different hand, so a test on it neither separates writers nor shows
what a model does with one person's habits (issue 15). This module makes writers:

- A writer is an integer seed. ``writer_style(seed)`` draws, from a numpy Generator seeded
  with it (``STYLE_STREAM``), a fixed style (``WriterStyle``): slant (a shear of the upright
  glyph), aspect (x scale), rotation, pen width (canvas pixels; the page's pen is
  ``trainer.synthetic.redraw.PAGE_PEN_WIDTH`` = 20), size (digit height as a fraction of the 280 x 280
  canvas), a smooth elastic displacement field (a sum of ``ELASTIC_WAVES`` plane waves per
  axis, fixed per writer) and glyph variants, each present with its probability in
  ``VARIANT_PROBABILITY``:

  * crossed 7: a short horizontal bar across the stem at ``CROSS_HEIGHT`` of the glyph's height
    (``cross_seven``);
  * flagged 1: a diagonal flag stroke from the top of the stem down to the left, and with
    probability ``VARIANT_PROBABILITY["based_one"]`` a base bar (``flag_one``); the writer's 1
    is chosen among straight sticks so that it has no flag of its own;
  * hooked 9: the tail ends in a hook curling to the left (``hook_nine``);
  * open 4: the writer's 4 is chosen among 4s whose top is open (no enclosed hole in the
    thresholded digit), a closed-top writer's among 4s with one (only about 7 % of MNIST's
    test 4s). This is a choice among MNIST's own 4s, not a change of strokes: opening a closed
    4's skeleton needs the junction where the diagonal meets the stem, which the traced strokes
    do not give reliably.

- Consistency: for each class the writer picks ONE base glyph among the source digits of that
  class (``choose_glyphs``: in an order drawn from ``GLYPH_STREAM``, the first that fits: its
  strokes keep its ink (``lost_ink``: a stroke fainter than the skeleton's threshold is lost),
  a 0, 6, 8 or 9 encloses a hole (a loop filled with ink skeletonises to a line), and it has
  the shape the writer's variant needs) and writes every instance of that class from it. The
  glyph is reduced to strokes with ``trainer.synthetic.redraw``'s ``skeleton`` and ``trace_strokes``
  (skeleton spurs shorter than ``SPUR`` of the height and specks dropped, the points smoothed
  over ``SMOOTH_POINTS``), put upright (its slant, the mean dx/dy of its near-vertical pieces,
  removed: the source digits come from many hands, each with its own slant), given the
  writer's variants, and then every instance (``write_digits``) is
  1. transformed in canvas coordinates: the writer's aspect, slant, rotation and size, a small
     per-instance affine (``INSTANCE_ROTATION`` degrees, ``INSTANCE_SCALE``, ``INSTANCE_SHIFT``
     canvas px), the writer's elastic field, and a per-instance smooth jitter of the stroke
     points (the same kind of field, ``INSTANCE_JITTER`` px, fresh for every instance); shrunk
     about the canvas centre if it would leave the canvas;
  2. drawn as the page's pen draws (``draw_strokes``): with ``trainer.synthetic.redraw``'s round pen of
     the writer's width (a disk on every point, a line of that width between neighbours, at
     ``SUPERSAMPLE`` times the resolution, box-averaged) along the strokes resampled every
     ``RESAMPLE_PX``, on a blank 280 x 280 canvas;
  3. passed through the page's preprocessing, ``mnist_common.preprocess.to_mnist``, and rounded to
     28 x 28 uint8, ink = 255.

``writers_set`` builds many writers (writer i has seed ``first_seed + i``) over the CPU cores and
caches the set as a ``.npz`` under ``data/writers/``, keyed by a hash of this file, of
``trainer.synthetic.redraw``'s drawing algorithm, of the parameters and of the source digits. The
evaluation passes MNIST's TEST digits as the source, so no stroke of a test writer comes from
a training digit. ``teach_split`` splits one writer's digits into a few per class to teach and
the rest to test (few-shot personalisation). ``python -m trainer.synthetic.writers`` builds a set and
writes a grid image of it (one row per writer) to look at.

Building takes about 5 ms of CPU per digit (1 ms placing, 3-4 ms drawing, 0.5 ms ``to_mnist``)
plus about 120-200 ms per writer for choosing its glyphs (a skeleton and a trace, about 18 ms,
for each digit looked at): 20 writers x 10 digits per class, 2,000 digits, take about 15 s of
CPU. ``to_mnist``'s small matrix products run on numpy's BLAS, whose threads make it ten times
slower on a busy machine (OPENBLAS_NUM_THREADS=1 in the environment avoids that).

Convention everywhere: grey values 0..255, ink = 255, background = 0, row-major (H, W); points
are (x, y) canvas pixels, x to the right, y down.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from mnist_common.preprocess import MNIST_SIZE, to_mnist

from ..data import DEFAULT_DATA_DIR
from ..export import write_atomically
from .redraw import (
    CANVAS_SIZE,
    SUPERSAMPLE,
    algorithm_digest,
    check_images,
    check_pen_width,
    default_processes,
    map_chunks,
    skeleton,
    trace_strokes,
)

#: Number of digit classes.
NUM_CLASSES = 10
#: Seed of the first writer of ``writers_set`` (any fixed value would do; far from the adverse
#: pen's 1729 so the two never share a seed by accident).
WRITER_SEED = 20_150
#: Where built sets are cached (``data/`` is ignored by git).
DEFAULT_CACHE_DIR = DEFAULT_DATA_DIR / "writers"
#: Part of the cache key with this file's bytes: bump it when a set changes for a reason the
#: key does not see.
ALGORITHM_VERSION = 1

# Streams of a seed's random numbers: ``np.random.default_rng((stream, seed))``, so the style,
# the glyph choice and the instances of a writer are independent of one another.
STYLE_STREAM = 1
GLYPH_STREAM = 2
INSTANCE_STREAM = 3

# --- the writer's style (ranges of ``writer_style``'s uniform draws) ---------------------------
#: Shear of the upright glyph: x += slant * (height above the centre); > 0 leans right.
SLANT_RANGE = (-0.35, 0.35)
#: x scale of the upright glyph (narrow to wide).
ASPECT_RANGE = (0.75, 1.2)
#: Rotation in degrees, > 0 counter-clockwise on the screen.
ROTATION_RANGE = (-8.0, 8.0)
#: Pen width in canvas pixels, around the page's ``trainer.synthetic.redraw.PAGE_PEN_WIDTH`` (20).
PEN_WIDTH_RANGE = (10.0, 30.0)
#: Digit height as a fraction of the canvas side (``CANVAS_SIZE`` = 280 px).
SIZE_RANGE = (0.5, 0.85)
#: RMS displacement of the writer's elastic field per axis, canvas px.
ELASTIC_AMPLITUDE_RANGE = (1.5, 4.5)
#: Wavelength of the elastic field's plane waves, canvas px (the digits are 140-240 px tall).
#: With the amplitude, it sets how much the field bends a straight stroke: a wave of amplitude
#: a and wavelength l turns it by up to 2 pi a / l radians (here about 0.15 at most; shorter
#: waves turn strokes into wiggles no hand makes).
ELASTIC_WAVELENGTH_RANGE = (180.0, 320.0)
#: Plane waves per axis of an elastic field.
ELASTIC_WAVES = 3
#: Probability of each glyph variant (``based_one``: a flagged 1 also gets a base bar).
VARIANT_PROBABILITY = {
    "crossed_seven": 0.35,
    "flagged_one": 0.4,
    "based_one": 0.35,
    "hooked_nine": 0.3,
    "open_four": 0.5,
}

# --- one instance (``write_digits``'s per-digit draws) ------------------------------------------
#: Uniform range of the per-instance rotation, degrees (+-).
INSTANCE_ROTATION = 3.0
#: Uniform range of the per-instance scale change (+-, relative), x and y drawn separately.
INSTANCE_SCALE = 0.05
#: Uniform range of the per-instance translation, canvas px (+-, each axis).
INSTANCE_SHIFT = 6.0
#: RMS of the per-instance smooth jitter of the stroke points, canvas px per axis.
INSTANCE_JITTER = 1.5
#: Wavelength of the per-instance jitter's plane waves, canvas px.
INSTANCE_JITTER_WAVELENGTH = (100.0, 180.0)

# --- glyphs -------------------------------------------------------------------------------------
#: A stroke that starts or ends at a free end, reaches a junction at its other end and is shorter
#: than this fraction of the glyph's height is a skeletonisation spur and is dropped.
SPUR = 0.08
#: A piece of skeleton on its own (8-connected) of fewer pixels than this fraction of the glyph's
#: height is a speck of the scan and is dropped.
FRAGMENT = 0.2
#: Points (about canvas px) averaged, a moving window, to smooth the skeleton: its pixel steps
#: and the waves of 10-20 px that upscaling MNIST's 28 x 28 pixels leaves along its strokes.
SMOOTH_POINTS = 11
#: Largest slant (|dx/dy|, ``slant_of``) removed when a glyph is put upright.
MAX_DESLANT = 0.5
#: Pieces of stroke at most this far from vertical (degrees) count for ``slant_of``: handwriting
#: recognisers take 45, but a digit's diagonals (the 2's, the 4's) are no slant.
SLANT_WINDOW = 30.0
#: Points (about canvas px) between the ends of the chords ``slant_of`` measures.
SLANT_CHORD = 8
#: A usable glyph has at most this many strokes (after spurs are dropped).
MAX_STROKES = 6
#: Source digits of a class ``choose_glyphs`` looks at before settling for the first with ink.
#: Few MNIST 4s are closed (about 7 % of the test set's enclose a hole): 200 tries find one
#: for all but about 1 in 10^6 closed-4 writers.
GLYPH_TRIES = 200
#: A 1 is a straight stick (fit for a flag) when no point is further from its principal axis
#: than this fraction of its height.
STICK_TOLERANCE = 0.06
#: Smallest hole, in pixels of the thresholded 28 x 28 digit, that makes a 4's top closed.
MIN_HOLE_PIXELS = 2
#: Grey level at or above which a source pixel counts as ink for the hole test.
HOLE_THRESHOLD = 128
#: Distance in MNIST pixels from the strokes beyond which a source digit's ink counts as lost
#: (``lost_ink``), and the largest fraction of its ink a usable glyph may lose.
INK_REACH, MAX_LOST_INK = 2.0, 0.05
#: Classes whose glyph must enclose a hole: a source digit whose loop is filled with ink (a
#: bold or hurried 0, 6, 8 or 9) skeletonises to a line, and its strokes would lose the loop.
LOOPED = (0, 6, 8, 9)

# --- variant geometry, in units of the upright glyph's height (y down, 0 at the box centre) --------
#: Height of the 7's cross bar below the glyph's top, and its half-length.
CROSS_HEIGHT, CROSS_HALF_LENGTH = 0.55, 0.17
#: The 1's flag: length, and angle between it and the stem (towards the left).
FLAG_LENGTH, FLAG_ANGLE = 0.28, 50.0
#: Half-length of the 1's base bar.
BASE_HALF_LENGTH = 0.18
#: Radius of the 9's hook, and the angle it turns through (degrees).
HOOK_RADIUS, HOOK_TURN = 0.13, 160.0
#: Free space kept between the ink and the canvas's edge, canvas px.
CANVAS_MARGIN = 4.0
#: Spacing of the points ``draw_strokes`` puts the pen down on, canvas px.
RESAMPLE_PX = 5.0


@dataclass(frozen=True)
class WriterStyle:
    """A writer's fixed habits (``writer_style`` draws them from the seed).

    Attributes:
        seed: the writer, an integer >= 0.
        slant: shear of the upright glyph, x += slant * (height above its centre); > 0 leans right.
        aspect: x scale of the upright glyph.
        rotation: degrees, > 0 counter-clockwise on the screen.
        pen_width: pen diameter, canvas px.
        size: digit height / canvas side.
        elastic: the writer's displacement field: per wave (axis 0 = x / 1 = y, amplitude px,
            direction radians, wavelength px, phase radians); see ``field_displacement``.
        crossed_seven, flagged_one, based_one, hooked_nine, open_four: the glyph variants
            (``based_one`` only matters with ``flagged_one``).
    """

    seed: int
    slant: float
    aspect: float
    rotation: float
    pen_width: float
    size: float
    elastic: tuple[tuple[int, float, float, float, float], ...]
    crossed_seven: bool
    flagged_one: bool
    based_one: bool
    hooked_nine: bool
    open_four: bool

    @property
    def variants(self) -> tuple[str, ...]:
        """Names of the variants this writer has, e.g. ``("crossed 7", "open 4")``."""
        names = (
            ("crossed_seven", "crossed 7"),
            ("flagged_one", "flagged 1"),
            ("hooked_nine", "hooked 9"),
            ("open_four", "open 4"),
        )
        found = [label for name, label in names if getattr(self, name)]
        if self.flagged_one and self.based_one:
            found.insert(found.index("flagged 1") + 1, "based 1")
        return tuple(found)

    def describe(self) -> str:
        """One line: the style's numbers and variants."""
        return (
            f"writer {self.seed}: slant {self.slant:+.2f}, aspect {self.aspect:.2f}, "
            f"rotation {self.rotation:+.1f} deg, pen {self.pen_width:.0f} px, size {self.size:.2f}, "
            f"elastic {elastic_rms(self.elastic):.1f} px; " + (", ".join(self.variants) or "no variants")
        )


def _check_seed(seed, what: str = "writer seed") -> int:
    """``seed`` as an int: TypeError unless it is an integer (not a bool), ValueError if < 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{what} must be >= 0, got {seed}")
    return int(seed)


def random_field(
    rng: np.random.Generator, amplitude: float, wavelength: tuple[float, float]
) -> tuple[tuple[int, float, float, float, float], ...]:
    """A smooth random displacement field: ``ELASTIC_WAVES`` plane waves per axis.

    Each wave has a random direction, a wavelength uniform in ``wavelength`` and a random phase;
    the amplitudes are normal, scaled so that the field's RMS displacement per axis is
    ``amplitude`` (a sine's RMS is 1/sqrt(2)).

    Returns:
        per wave (axis 0 = x / 1 = y, amplitude px, direction radians, wavelength px, phase
        radians), the form ``WriterStyle.elastic`` holds and ``field_displacement`` reads.
    """
    waves = []
    for axis in (0, 1):
        weights = rng.normal(size=ELASTIC_WAVES)
        weights *= amplitude * math.sqrt(2) / max(float(np.linalg.norm(weights)), 1e-9)
        for weight in weights:
            waves.append(
                (
                    axis,
                    float(weight),
                    float(rng.uniform(0, 2 * math.pi)),
                    float(rng.uniform(*wavelength)),
                    float(rng.uniform(0, 2 * math.pi)),
                )
            )
    return tuple(waves)


def elastic_rms(field) -> float:
    """RMS displacement per axis of a ``random_field``, canvas px."""
    return math.sqrt(sum(w[1] ** 2 for w in field) / 4)


def field_displacement(field, points: np.ndarray) -> np.ndarray:
    """The displacement of a ``random_field`` at ``points``.

    Args:
        field: waves as from ``random_field``.
        points: (L, 2) float (x, y) canvas px.

    Returns:
        (L, 2) float64 displacement in canvas px.
    """
    points = np.asarray(points, dtype=np.float64)
    out = np.zeros_like(points)
    for axis, amplitude, direction, wavelength, phase in field:
        along = points[:, 0] * math.cos(direction) + points[:, 1] * math.sin(direction)
        out[:, axis] += amplitude * np.sin(2 * math.pi * along / wavelength + phase)
    return out


def writer_style(seed: int) -> WriterStyle:
    """The style of writer ``seed``: the same seed gives the same style.

    Args:
        seed: integer >= 0 (numpy integers accepted, bools not).

    Returns:
        a ``WriterStyle`` with every number uniform in its ``*_RANGE`` and each variant present
        with its ``VARIANT_PROBABILITY``.

    Raises:
        TypeError: ``seed`` is not an integer. ValueError: it is negative.
    """
    seed = _check_seed(seed)
    rng = np.random.default_rng((STYLE_STREAM, seed))
    numbers = {
        name: float(rng.uniform(*bounds))
        for name, bounds in (
            ("slant", SLANT_RANGE),
            ("aspect", ASPECT_RANGE),
            ("rotation", ROTATION_RANGE),
            ("pen_width", PEN_WIDTH_RANGE),
            ("size", SIZE_RANGE),
        )
    }
    amplitude = float(rng.uniform(*ELASTIC_AMPLITUDE_RANGE))
    elastic = random_field(rng, amplitude, ELASTIC_WAVELENGTH_RANGE)
    variants = {name: bool(rng.random() < p) for name, p in VARIANT_PROBABILITY.items()}
    return WriterStyle(seed=seed, elastic=elastic, **numbers, **variants)


# --- glyphs: a source digit as strokes ----------------------------------------------------------


def _smooth(stroke: np.ndarray) -> np.ndarray:
    """A moving average of ``SMOOTH_POINTS`` points along a stroke (ends kept, window shrunk
    near them): removes the skeleton's pixel steps. (L, 2) -> (L, 2) float64."""
    n = len(stroke)
    half = SMOOTH_POINTS // 2
    if n <= 2 or half == 0:
        return stroke.astype(np.float64)
    cumulative = np.concatenate([np.zeros((1, 2)), np.cumsum(stroke, axis=0, dtype=np.float64)])
    index = np.arange(n)
    reach = np.minimum(half, np.minimum(index, n - 1 - index))  # symmetric window inside the stroke
    return (cumulative[index + reach + 1] - cumulative[index - reach]) / (2 * reach + 1)[:, None]


def glyph_strokes(image28: np.ndarray) -> list[np.ndarray]:
    """A source digit as smoothed strokes in canvas coordinates.

    ``skeleton`` (the digit upscaled to the 280 x 280 canvas, thresholded, skeletonised) traced
    into ordered strokes by ``trace_strokes``; a stroke from a free end to a junction shorter
    than ``SPUR`` of the skeleton's height (a skeletonisation spur) and a piece on its own
    shorter than ``FRAGMENT`` of it (a speck of the scan) are dropped, unless nothing else is
    left, and the rest smoothed (``SMOOTH_POINTS``).

    Args:
        image28: (28, 28) uint8 digit, ink = 255.

    Returns:
        the strokes, each an (L, 2) float64 array of (x, y) canvas px, L >= 1; empty for a
        digit with no ink at ``trainer.synthetic.redraw.INK_THRESHOLD``.

    Raises:
        ValueError: ``image28`` is not a (28, 28) uint8 array.
    """
    from scipy import ndimage

    skel = skeleton(image28)
    if not skel.any():
        return []
    rows = np.flatnonzero(skel.any(axis=1))
    height = rows[-1] - rows[0] + 1
    padded = np.pad(skel, 1).astype(np.int8)
    neighbours = sum(np.roll(np.roll(padded, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)[
        1:-1, 1:-1
    ]
    strokes = trace_strokes(skel)

    pieces, _ = ndimage.label(skel, structure=np.ones((3, 3)))
    piece_sizes = np.bincount(pieces.ravel())

    def is_spur(stroke: np.ndarray) -> bool:
        if piece_sizes[pieces[tuple(stroke[0])]] < FRAGMENT * height:  # a speck on its own
            return True
        ends = [int(neighbours[tuple(stroke[i])]) for i in (0, -1)]
        length = float(np.hypot(*np.diff(stroke, axis=0).T).sum()) if len(stroke) > 1 else 0.0
        return min(ends) == 1 and max(ends) >= 3 and length < SPUR * height

    kept = [s for s in strokes if not is_spur(s)] or strokes
    return [_smooth(s[:, ::-1]) for s in kept]  # (row, col) -> (x, y)


def _all_points(strokes: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(strokes) if strokes else np.zeros((0, 2))


def slant_of(strokes: list[np.ndarray]) -> float:
    """The slant of strokes as handwriting recognisers measure it: the mean dx/dy of their
    near-vertical pieces (chords over ``SLANT_CHORD`` points, at most ``SLANT_WINDOW`` degrees
    from vertical), weighted by length; > 0 leans left (x grows downwards), < 0 leans right. 0 when no piece
    is near vertical.

    The second moment cov(x, y) / var(y) is no measure of it for digits: the long top bar of a
    7 or the base of a 2 weighs as much as the stem, and gives a slant of the wrong sign.
    """
    pieces = [s[SLANT_CHORD:] - s[:-SLANT_CHORD] for s in strokes if len(s) > SLANT_CHORD]
    if not pieces:
        return 0.0
    d = np.concatenate(pieces)
    steep = np.abs(d[:, 0]) <= math.tan(math.radians(SLANT_WINDOW)) * np.abs(d[:, 1])
    if not steep.any():
        return 0.0
    d = d[steep] * np.sign(d[steep, 1:2])  # every piece pointing down
    return float(d[:, 0].sum() / d[:, 1].sum())  # length-weighted mean of dx/dy


def upright(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """Strokes moved so their bounding box is centred on (0, 0), scaled to height 1, and
    sheared upright (their slant, ``slant_of``, at most ``MAX_DESLANT``, removed).

    Args:
        strokes: (L, 2) (x, y) arrays, as from ``glyph_strokes``; not empty.

    Returns:
        new (L, 2) float64 arrays in units of the glyph's height, y in [-0.5, 0.5].
    """
    points = _all_points(strokes)
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2
    height = max(high[1] - low[1], 0.25 * (high[0] - low[0]), 1.0)
    units = [(s - centre) / height for s in strokes]
    shear = float(np.clip(slant_of(units), -MAX_DESLANT, MAX_DESLANT))
    straight = [s - np.column_stack([shear * s[:, 1], np.zeros(len(s))]) for s in units]
    xs = _all_points(straight)[:, 0]
    offset = np.array([(xs.min() + xs.max()) / 2, 0.0])
    return [s - offset for s in straight]


# --- the variants, on upright strokes (units of the height, y down, box centred on 0) -----------


def cross_seven(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """A 7 with a bar across its stem: a horizontal stroke ``2 * CROSS_HALF_LENGTH`` long at
    ``CROSS_HEIGHT`` of the height below the top, centred on the stem (the median x of the
    points within 0.05 of that height). Unchanged when no point is at that height.

    Args:
        strokes: upright strokes (``upright``), (L, 2) float arrays.

    Returns:
        the strokes and, last, the bar (2, 2).
    """
    points = _all_points(strokes)
    y = points[:, 1].min() + CROSS_HEIGHT * np.ptp(points[:, 1])
    near = points[np.abs(points[:, 1] - y) < 0.05]
    if len(near) == 0:
        return list(strokes)
    x = float(np.median(near[:, 0]))
    return [*strokes, np.array([[x - CROSS_HALF_LENGTH, y], [x + CROSS_HALF_LENGTH, y]])]


def _principal_axis(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unit direction of the largest spread, pointing down: y >= 0) of (L, 2) points."""
    mean = points.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((points - mean).T))
    direction = vectors[:, -1]
    return mean, direction if direction[1] >= 0 else -direction


def is_stick(strokes: list[np.ndarray]) -> bool:
    """Whether upright strokes are one straight stroke: no point further than
    ``STICK_TOLERANCE`` of the height from their principal axis (a 1 without flag or base)."""
    points = _all_points(strokes)
    if len(points) < 2:
        return False
    mean, direction = _principal_axis(points)
    across = (points - mean) @ np.array([-direction[1], direction[0]])
    return float(np.abs(across).max()) <= STICK_TOLERANCE * np.ptp(points[:, 1])


def flag_one(strokes: list[np.ndarray], base: bool = False) -> list[np.ndarray]:
    """A 1 with a flag, and a base bar when ``base``.

    The flag is a straight stroke ``FLAG_LENGTH`` long from the topmost point, at ``FLAG_ANGLE``
    degrees from the stem's direction (the principal axis, pointing down), towards the left.
    The base is a horizontal stroke ``2 * BASE_HALF_LENGTH`` long centred on the bottommost point.

    Args:
        strokes: upright strokes (``upright``), (L, 2) float arrays.
        base: add the base bar too.

    Returns:
        the strokes, then the flag (2, 2), then the base (2, 2) when asked for.
    """
    points = _all_points(strokes)
    _, down = _principal_axis(points)
    left = np.array([down[1], -down[0]])  # down turned by 90 degrees towards -x
    if left[0] > 0:
        left = -left
    angle = math.radians(FLAG_ANGLE)
    top = points[np.argmin(points[:, 1])]
    flag = np.array([top + FLAG_LENGTH * (math.cos(angle) * down + math.sin(angle) * left), top])
    out = [*strokes, flag]
    if base:
        bottom = points[np.argmax(points[:, 1])]
        out.append(np.array([bottom - [BASE_HALF_LENGTH, 0], bottom + [BASE_HALF_LENGTH, 0]]))
    return out


def hook_nine(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """A 9 whose tail ends in a hook to the left.

    The tail's end is the lowest end of a stroke; when it is (within 0.05 of the height) the
    glyph's lowest point and in its lower quarter, an arc of radius ``HOOK_RADIUS`` turning
    through ``HOOK_TURN`` degrees is added there, leaving it downwards and curling to the left
    (the way a j ends). Unchanged otherwise.

    Args:
        strokes: upright strokes (``upright``), (L, 2) float arrays.

    Returns:
        the strokes and, last, the hook (16, 2); or the strokes unchanged.
    """
    points = _all_points(strokes)
    ends = np.array([s[i] for s in strokes if len(s) > 1 for i in (0, -1)])
    if len(ends) == 0:
        return list(strokes)
    end = ends[np.argmax(ends[:, 1])]
    low, high = points[:, 1].min(), points[:, 1].max()
    if end[1] < high - 0.05 * (high - low) or end[1] < low + 0.75 * (high - low):
        return list(strokes)
    turn = np.radians(np.linspace(0, HOOK_TURN, 16))
    centre = end - [HOOK_RADIUS, 0]
    hook = centre + HOOK_RADIUS * np.column_stack([np.cos(turn), np.sin(turn)])
    return [*strokes, hook]


def lost_ink(image28: np.ndarray, strokes: list[np.ndarray]) -> float:
    """The fraction of a source digit's ink that its strokes do not draw: the ink (grey values
    summed) further than ``INK_REACH`` MNIST pixels from every stroke point. A faint stroke,
    below the skeleton's threshold, is lost so (the top bar of a 7 drawn lightly).

    Args:
        image28: (28, 28) uint8 digit, ink = 255.
        strokes: its strokes in canvas px, as from ``glyph_strokes``.

    Returns:
        0..1; 1 for a digit with no stroke, 0 for one with no ink.
    """
    from scipy import ndimage

    ink = np.asarray(image28, dtype=np.float64)
    if ink.sum() == 0:
        return 0.0
    points = _all_points(strokes)
    if len(points) == 0:
        return 1.0
    scale = MNIST_SIZE / CANVAS_SIZE  # canvas px -> MNIST px (pixel centres at i + 0.5 there)
    cells = np.clip(np.floor((points + 0.5) * scale).astype(int), 0, MNIST_SIZE - 1)
    drawn = np.ones((MNIST_SIZE, MNIST_SIZE), dtype=bool)
    drawn[cells[:, 1], cells[:, 0]] = False
    far = ndimage.distance_transform_edt(drawn) > INK_REACH
    return float(ink[far].sum() / ink.sum())


def has_hole(image28: np.ndarray) -> bool:
    """Whether a digit's strokes enclose paper: a 4-connected region of pixels below
    ``HOLE_THRESHOLD``, not touching the border, of at least ``MIN_HOLE_PIXELS`` (a closed 4)."""
    from scipy import ndimage

    paper = np.asarray(image28) < HOLE_THRESHOLD
    labels, count = ndimage.label(paper)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return any(sizes[k] >= MIN_HOLE_PIXELS for k in range(1, count + 1) if k not in border)


def with_variants(style: WriterStyle, label: int, strokes: list[np.ndarray]) -> list[np.ndarray]:
    """Upright strokes of class ``label`` with the writer's variants for that class added."""
    if label == 7 and style.crossed_seven:
        return cross_seven(strokes)
    if label == 1 and style.flagged_one:
        return flag_one(strokes, base=style.based_one)
    if label == 9 and style.hooked_nine:
        return hook_nine(strokes)
    return list(strokes)


def _fits(style: WriterStyle, label: int, image28: np.ndarray) -> list[np.ndarray] | None:
    """A source digit's strokes (``glyph_strokes``) if it can be the writer's glyph of its class,
    else None: at most ``MAX_STROKES`` strokes that keep all but ``MAX_LOST_INK`` of its ink
    (``lost_ink``), a hole for the ``LOOPED`` classes, and the shape
    the writer's variant needs (an open or closed 4, a straight stick for a flagged 1, a 7 of at
    most 2 strokes, so without a cross of its own, for a crossed 7)."""
    if label == 4 and has_hole(image28) == style.open_four:  # before the strokes: cheaper
        return None
    if label in LOOPED and not has_hole(image28):  # a loop filled with ink has no centre line
        return None
    strokes = glyph_strokes(image28)
    if not strokes or len(strokes) > MAX_STROKES or lost_ink(image28, strokes) > MAX_LOST_INK:
        return None
    if label == 1 and style.flagged_one and not is_stick(upright(strokes)):
        return None
    if label == 7 and style.crossed_seven and len(strokes) > 2:
        return None
    return strokes


def _choose(style: WriterStyle, images: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, list[np.ndarray]]]:
    """``choose_glyphs``, with the chosen glyphs' strokes: {class: (index, strokes)}."""
    rng = np.random.default_rng((GLYPH_STREAM, style.seed))
    chosen = {}
    for label in range(NUM_CLASSES):
        candidates = np.flatnonzero(np.asarray(labels) == label)
        if candidates.size == 0:
            raise ValueError(f"the source digits have no {label}: every class needs at least one")
        order = rng.permutation(candidates)[:GLYPH_TRIES].tolist()
        for index in order:
            strokes = _fits(style, label, images[index])
            if strokes is not None:
                chosen[label] = (index, strokes)
                break
        else:  # nothing fits the variant: the first digit with ink
            for index in order:
                if strokes := glyph_strokes(images[index]):
                    chosen[label] = (index, strokes)
                    break
            else:
                raise ValueError(f"none of the {len(order)} source digits of class {label} tried has ink")
    return chosen


def choose_glyphs(style: WriterStyle, images: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """The index of the writer's base glyph of each class among the source digits.

    For each class, the source digits of that class are visited in an order drawn from
    ``GLYPH_STREAM`` and the writer's seed; the first of the first ``GLYPH_TRIES`` that fits the
    writer (``_fits``: usable strokes, and the shape its variant of the class needs) is taken,
    else the first of them with ink.

    Args:
        style: the writer.
        images: (N, 28, 28) uint8 source digits, ink = 255.
        labels: (N,) integer classes 0..9.

    Returns:
        {class: index into ``images``} for every class 0..9.

    Raises:
        ValueError: a class has no source digit (or none with ink among those tried).
    """
    return {label: index for label, (index, _) in _choose(style, images, labels).items()}


# --- writing ------------------------------------------------------------------------------------


def _rotation(degrees: float) -> np.ndarray:
    """2x2 matrix turning (x, y-down) points counter-clockwise on the screen by ``degrees``."""
    a = math.radians(degrees)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def writer_matrix(style: WriterStyle) -> np.ndarray:
    """2x2 matrix from upright units (height 1) to canvas px: aspect, then slant, then rotation,
    then size (``size * CANVAS_SIZE`` px per unit)."""
    aspect = np.diag([style.aspect, 1.0])
    slant = np.array([[1.0, -style.slant], [0.0, 1.0]])  # y < 0 is up: the top moves right
    return style.size * CANVAS_SIZE * _rotation(style.rotation) @ slant @ aspect


def place(strokes: list[np.ndarray], style: WriterStyle, rng: np.random.Generator) -> list[np.ndarray]:
    """Upright strokes (units) -> one instance's strokes in canvas px.

    The writer's matrix (``writer_matrix``), a per-instance rotation, x/y scale and shift drawn
    from ``rng``, the canvas centre, the writer's elastic field and a fresh per-instance jitter
    field; then, if the ink (with the pen's radius and ``CANVAS_MARGIN``) would leave the canvas,
    a shrink and shift about the canvas centre that brings it inside.

    Returns:
        (L, 2) float64 (x, y) canvas px, one array per stroke.
    """
    scale = np.diag(1 + rng.uniform(-INSTANCE_SCALE, INSTANCE_SCALE, size=2))
    matrix = _rotation(rng.uniform(-INSTANCE_ROTATION, INSTANCE_ROTATION)) @ scale @ writer_matrix(style)
    centre = CANVAS_SIZE / 2 + rng.uniform(-INSTANCE_SHIFT, INSTANCE_SHIFT, size=2)
    jitter = random_field(rng, INSTANCE_JITTER, INSTANCE_JITTER_WAVELENGTH)
    placed = []
    for stroke in strokes:
        p = stroke @ matrix.T + centre
        p = p + field_displacement(style.elastic, p - CANVAS_SIZE / 2) + field_displacement(jitter, p)
        placed.append(p)
    points = _all_points(placed)
    room = CANVAS_SIZE / 2 - style.pen_width / 2 - CANVAS_MARGIN
    low, high = points.min(axis=0), points.max(axis=0)
    middle = (low + high) / 2
    half = float(((high - low) / 2).max())
    if half > room or np.any(low < CANVAS_SIZE / 2 - room) or np.any(high > CANVAS_SIZE / 2 + room):
        shrink = min(1.0, room / max(half, 1e-9))
        placed = [(p - middle) * shrink + CANVAS_SIZE / 2 for p in placed]
    return placed


def _resample(stroke: np.ndarray, spacing: float) -> np.ndarray:
    """Points along a polyline every ``spacing`` px of its length, both ends kept:
    (L, 2) -> (M, 2) float64, M >= 1 (one point for a stroke of no length)."""
    steps = np.hypot(*np.diff(stroke, axis=0).T) if len(stroke) > 1 else np.zeros(0)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    length = float(along[-1])
    if length == 0:
        return stroke[:1].astype(np.float64)
    at = np.append(np.arange(0.0, length, spacing), length)
    if len(at) > 2 and at[-1] - at[-2] < spacing / 2:
        at = np.delete(at, -2)  # no sliver of a segment at the end
    return np.column_stack([np.interp(at, along, stroke[:, 0]), np.interp(at, along, stroke[:, 1])])


def draw_strokes(strokes: list[np.ndarray], pen_width: float) -> np.ndarray:
    """Strokes drawn with a round pen on a blank canvas, anti-aliased, as ``trainer.synthetic.redraw.redraw``
    draws a skeleton (the same pen: a filled disk of diameter ``pen_width`` on every point and a
    line of that width between consecutive points, at ``SUPERSAMPLE`` times the resolution,
    box-averaged), but along the strokes resampled every ``RESAMPLE_PX`` instead of pixel by
    pixel: the union is the same round-capped, round-jointed stroke, in a tenth of the calls.

    Args:
        strokes: (L, 2) float (x, y) canvas px, pixel i's centre at i; parts off the canvas are cut.
        pen_width: pen diameter in canvas px, > 0.

    Returns:
        (280, 280) float32 in 0..255, ink = 255; all zeros when there are no points.

    Raises:
        ValueError: ``pen_width`` is not a positive number.
    """
    width = check_pen_width(pen_width)
    out = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.float32)
    strokes = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes if len(s)]
    if not strokes:
        return out
    points = _all_points(strokes)
    reach = width / 2 + 1
    x0, y0 = (max(0, math.floor(v - reach)) for v in points.min(axis=0))
    x1, y1 = (min(CANVAS_SIZE, math.ceil(v + reach) + 1) for v in points.max(axis=0))
    if x0 >= x1 or y0 >= y1:
        return out
    region = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    pen = ImageDraw.Draw(region)
    diameter = width * SUPERSAMPLE
    half = (diameter - 1) / 2  # as in redraw._draw: Pillow's ellipse box includes its end pixels
    line_width = max(1, round(diameter))
    offset = np.array([x0, y0])
    for stroke in strokes:
        # Canvas pixel i covers supersampled pixels i*S .. i*S + S-1, centre i*S + (S-1)/2.
        ss = (_resample(stroke, RESAMPLE_PX) - offset) * SUPERSAMPLE + (SUPERSAMPLE - 1) / 2
        for cx, cy in ss.tolist():
            pen.ellipse((cx - half, cy - half, cx + half, cy + half), fill=255)
        if len(ss) > 1:
            pen.line([tuple(p) for p in ss.tolist()], fill=255, width=line_width)
    out[y0:y1, x0:x1] = np.asarray(region.reduce(SUPERSAMPLE), dtype=np.float32)
    return out


def render(strokes: list[np.ndarray], pen_width: float) -> np.ndarray:
    """Canvas-px strokes drawn with a round pen (``draw_strokes``) and preprocessed as the page
    does (``to_mnist``): (28, 28) uint8, ink = 255; all zeros when nothing is drawn."""
    pixels = to_mnist(draw_strokes(strokes, pen_width))
    if pixels is None:
        return np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    return np.rint(pixels).astype(np.uint8)


def _check_per_class(per_class) -> int:
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)):
        raise TypeError(f"per_class must be an integer, got {type(per_class).__name__} {per_class!r}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    return int(per_class)


def write_digits(
    style: WriterStyle, glyphs: dict[int, np.ndarray], per_class: int, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` instances of every class written by one writer.

    Each class's glyph is traced (``glyph_strokes``), put upright (``upright``) and given the
    writer's variants (``with_variants``) once; every instance is then placed (``place``) with
    its own random draws and rendered (``render``) with the writer's pen.

    Args:
        style: the writer.
        glyphs: {class 0..9: (28, 28) uint8 source digit, ink = 255}, every class present.
        per_class: instances per class, >= 1.
        seed: seed of the per-instance draws (``INSTANCE_STREAM``), integer >= 0; None: the
            writer's seed.

    Returns:
        images (10 * per_class, 28, 28) uint8, ink = 255, class by class (per_class 0s, then
        1s, ...); labels (10 * per_class,) int64.

    Raises:
        TypeError: ``style`` is not a WriterStyle, or ``per_class`` or ``seed`` not an integer.
        ValueError: a class is missing from ``glyphs``, a glyph is not (28, 28) uint8 or has no
            ink, or ``per_class`` < 1.
    """
    if not isinstance(style, WriterStyle):
        raise TypeError(f"style must be a WriterStyle (from writer_style), got {type(style).__name__}")
    per_class = _check_per_class(per_class)
    seed = style.seed if seed is None else _check_seed(seed, "instance seed")
    missing = [k for k in range(NUM_CLASSES) if k not in glyphs]
    if missing:
        raise ValueError(f"glyphs has no digit for class {', '.join(map(str, missing))}: every class 0..9 is needed")
    strokes = {}
    for label in range(NUM_CLASSES):
        strokes[label] = glyph_strokes(glyphs[label])  # checks the shape and dtype
        if not strokes[label]:
            raise ValueError(f"the glyph of class {label} has no ink (no pixel reaches the skeleton's threshold)")
    return _write(style, strokes, per_class, seed)


def _write(
    style: WriterStyle, strokes: dict[int, list[np.ndarray]], per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``write_digits`` from the glyphs' strokes (``glyph_strokes``), arguments checked."""
    rng = np.random.default_rng((INSTANCE_STREAM, seed))
    images = np.zeros((NUM_CLASSES * per_class, MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    for label in range(NUM_CLASSES):
        shape = with_variants(style, label, upright(strokes[label]))
        for i in range(per_class):
            images[label * per_class + i] = render(place(shape, style, rng), style.pen_width)
    return images, np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)


# --- sets of writers ----------------------------------------------------------------------------


class WritersSet(NamedTuple):
    """Digits of several synthetic writers.

    images: (N, 28, 28) uint8, ink = 255; N = writers * 10 * per_class, writer by writer and
    within a writer class by class. labels: (N,) int64 0..9. writers: (N,) int64 writer index
    0..W-1 (``styles[i].seed`` is writer i's seed). styles: the W ``WriterStyle``s. glyphs:
    (W, 10) int64, the index in the source digits of each writer's base glyph of each class.
    """

    images: np.ndarray
    labels: np.ndarray
    writers: np.ndarray
    styles: tuple[WriterStyle, ...]
    glyphs: np.ndarray


@dataclass
class _Written:
    """A worker's result: one writer's (10 * per_class, 28, 28) uint8 digits and (10,) int64
    glyph indices; ``len`` is the number of digits (``map_chunks`` counts them with it)."""

    images: np.ndarray
    glyphs: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _write_writer(task: tuple[np.ndarray, np.ndarray, int, int]) -> _Written:
    """Worker: (source images, labels, writer seed, per_class) -> that writer's digits."""
    images, labels, seed, per_class = task
    style = writer_style(seed)
    chosen = _choose(style, images, labels)
    written, _ = _write(style, {k: strokes for k, (_, strokes) in chosen.items()}, per_class, style.seed)
    return _Written(written, np.array([chosen[k][0] for k in range(NUM_CLASSES)], dtype=np.int64))


@functools.lru_cache(maxsize=1)
def _writers_digest() -> str:
    """sha256 of what a writers set depends on besides its arguments: this file,
    ``trainer.synthetic.redraw``'s drawing algorithm (``algorithm_digest``), ``trace_strokes``,
    ``ALGORITHM_VERSION`` and the versions of numpy (its Generator) and scipy."""
    import inspect

    import scipy

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(inspect.getsource(trace_strokes).encode())
    digest.update(repr((algorithm_digest(), ALGORITHM_VERSION, np.__version__, scipy.__version__)).encode())
    return digest.hexdigest()


def cache_path(
    cache_dir: Path, images: np.ndarray, labels: np.ndarray, writers: int, per_class: int, first_seed: int
) -> Path:
    """Where a writers set is cached: ``writers<W>-per<P>-seed<S>-n<N>-<hash>.npz``, the hash
    covering ``_writers_digest``, the parameters and the source digits and labels."""
    digest = hashlib.sha256(f"{_writers_digest()} w={writers} p={per_class} s={first_seed} n={len(images)}".encode())
    digest.update(images.tobytes())
    digest.update(labels.tobytes())
    name = f"writers{writers}-per{per_class}-seed{first_seed}-n{len(images)}-{digest.hexdigest()[:16]}.npz"
    return Path(cache_dir) / name


def _load_cached(path: Path, n: int, writers: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, glyphs) of a cached set, or None when missing or unusable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, glyphs = archive["images"], archive["glyphs"]
    except (OSError, ValueError, EOFError, KeyError):
        return None
    if (
        images.shape != (n, MNIST_SIZE, MNIST_SIZE)
        or images.dtype != np.uint8
        or glyphs.shape != (writers, NUM_CLASSES)
    ):
        return None
    return images, glyphs.astype(np.int64)


def _save_cached(path: Path, images: np.ndarray, glyphs: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, images=images, glyphs=glyphs)

    write_atomically(path, write)


def _check_labels(labels, n: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected ({n},) integer labels, got shape {array.shape} dtype {array.dtype}")
    if n and (array.min() < 0 or array.max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}, got {array.min()}..{array.max()}")
    return np.ascontiguousarray(array, dtype=np.int64)


def writers_set(
    images,
    labels,
    writers: int = 20,
    per_class: int = 10,
    first_seed: int = WRITER_SEED,
    *,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> WritersSet:
    """Digits of ``writers`` synthetic writers, built once and cached.

    Writer i has seed ``first_seed + i`` (so the first W writers of a larger set are the same
    writers); its base glyphs are chosen among ``images`` (``choose_glyphs``) and it writes
    ``per_class`` instances of each class (``write_digits``). Pass MNIST's test digits for a test
    set: a model trained on MNIST's training digits has then never seen any of their strokes.

    Args:
        images: (N, 28, 28) uint8 source digits, ink = 255 (numpy, or a CPU tensor).
        labels: (N,) integer classes 0..9 of ``images``; every class present.
        writers: number of writers, >= 1.
        per_class: instances per class and writer, >= 1.
        first_seed: seed of writer 0, integer >= 0.
        cache_dir: folder of the ``.npz`` cache (created when needed); None: no cache.
        processes: worker processes; None: ``default_processes`` of the digits to write; 1: in
            this process (writers are handed out one per task).
        progress: show a tqdm progress bar and a line of timing while building.

    Returns:
        a ``WritersSet`` of ``writers * 10 * per_class`` digits.

    Raises:
        ValueError: bad images (not (N, 28, 28) uint8) or labels, a class missing from the
            source, ``writers`` or ``per_class`` < 1, ``first_seed`` < 0.
        TypeError: ``writers``, ``per_class`` or ``first_seed`` not an integer.
    """
    images = check_images(images)
    labels = _check_labels(labels, len(images))
    per_class = _check_per_class(per_class)
    if isinstance(writers, bool) or not isinstance(writers, (int, np.integer)):
        raise TypeError(f"writers must be an integer, got {type(writers).__name__} {writers!r}")
    if writers < 1:
        raise ValueError(f"writers must be at least 1, got {writers}")
    writers = int(writers)
    first_seed = _check_seed(first_seed, "first_seed")
    absent = sorted(set(range(NUM_CLASSES)) - set(np.unique(labels).tolist()))
    if absent:
        raise ValueError(f"the source digits have no {', '.join(map(str, absent))}: every class needs at least one")
    styles = tuple(writer_style(first_seed + i) for i in range(writers))
    n = writers * NUM_CLASSES * per_class
    path = cache_path(cache_dir, images, labels, writers, per_class, first_seed) if cache_dir is not None else None
    cached = _load_cached(path, n, writers) if path is not None else None
    if cached is not None:
        built, glyphs = cached
    else:
        started = time.perf_counter()
        workers = processes or default_processes(n)
        tasks = [(images, labels, style.seed, per_class) for style in styles]
        parts = map_chunks(_write_writer, tasks, n, f"writing ({writers} writers)", workers, progress)
        built = np.concatenate([p.images for p in parts])
        glyphs = np.stack([p.glyphs for p in parts])
        if progress:
            seconds = time.perf_counter() - started
            print(
                f"wrote {n:,} digits of {writers} writers in {seconds:.1f} s ({seconds / n * 1e3:.1f} ms per digit, "
                f"{workers} process{'es' if workers > 1 else ''})",
                flush=True,
            )
        if path is not None:
            _save_cached(path, built, glyphs)
    return WritersSet(
        images=built,
        labels=np.tile(np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class), writers),
        writers=np.repeat(np.arange(writers, dtype=np.int64), NUM_CLASSES * per_class),
        styles=styles,
        glyphs=glyphs,
    )


def teach_split(dataset: WritersSet, writer: int, shots: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Few-shot personalisation: one writer's digits split into a few to teach and the rest.

    Args:
        dataset: a ``WritersSet``.
        writer: writer index 0..W-1.
        shots: digits per class to teach, 1 .. per_class - 1.

    Returns:
        (teach, test): int64 indices into the set; teach holds the writer's first ``shots``
        instances of every class (10 * shots), test all its other digits.

    Raises:
        ValueError: no such writer, or ``shots`` leaves no digit of some class to test.
    """
    mine = np.flatnonzero(dataset.writers == writer)
    if mine.size == 0:
        raise ValueError(f"no writer {writer} in the set (writers 0..{int(dataset.writers.max())})")
    teach, test = [], []
    for label in range(NUM_CLASSES):
        of_class = mine[dataset.labels[mine] == label]
        if not 1 <= shots < len(of_class):
            raise ValueError(f"shots must be 1..{len(of_class) - 1} for {len(of_class)} digits per class, got {shots}")
        teach.append(of_class[:shots])
        test.append(of_class[shots:])
    return np.concatenate(teach).astype(np.int64), np.concatenate(test).astype(np.int64)


# --- a picture of the set -----------------------------------------------------------------------


def grid_image(dataset: WritersSet, per_class: int = 3, zoom: int = 2) -> Image.Image:
    """A picture of a writers set: one row per writer, its first ``per_class`` instances of each
    class left to right (0s, then 1s, ...), dark ink on white, a grey gap between classes.

    Returns:
        an "L" image (W * 28 * zoom + gaps high).
    """
    count = dataset.writers.max() + 1 if len(dataset.writers) else 0
    have = int(np.bincount(dataset.labels[dataset.writers == 0], minlength=NUM_CLASSES).min()) if count else 0
    shown = max(1, min(per_class, have))
    cell, gap = MNIST_SIZE, 4
    width = NUM_CLASSES * shown * cell + (NUM_CLASSES - 1) * gap
    height = count * cell + max(0, count - 1) * 2
    canvas = np.full((height, width), 200, dtype=np.uint8)
    for w in range(count):
        mine = np.flatnonzero(dataset.writers == w)
        for label in range(NUM_CLASSES):
            of_class = mine[dataset.labels[mine] == label][:shown]
            for i, index in enumerate(of_class):
                x = label * (shown * cell + gap) + i * cell
                y = w * (cell + 2)
                canvas[y : y + cell, x : x + cell] = 255 - dataset.images[index]
    image = Image.fromarray(canvas)
    return image.resize((width * zoom, height * zoom), Image.NEAREST)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=20, help="number of writers (default 20)")
    parser.add_argument("--per-class", type=int, default=10, help="digits per class and writer (default 10)")
    parser.add_argument("--first-seed", type=int, default=WRITER_SEED, help=f"seed of writer 0 (default {WRITER_SEED})")
    parser.add_argument(
        "--source", choices=("test", "train"), default="test", help="MNIST split the glyphs come from (default: test)"
    )
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG: one row per writer")
    parser.add_argument("--grid-per-class", type=int, default=3, help="instances per class in the grid")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--no-cache", action="store_true", help=f"build, do not read or write {DEFAULT_CACHE_DIR}")
    args = parser.parse_args(argv)
    from .. import data

    try:
        split = data.load_split(train=args.source == "train")
        dataset = writers_set(
            split.images.numpy(),
            split.labels.numpy(),
            args.writers,
            args.per_class,
            args.first_seed,
            cache_dir=None if args.no_cache else DEFAULT_CACHE_DIR,
            processes=args.processes,
        )
    except (data.DataError, ValueError, TypeError) as e:
        parser.exit(2, f"error: {e}\n")
    for style in dataset.styles:
        print(style.describe())
    if args.grid is not None:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        grid_image(dataset, args.grid_per_class).save(args.grid)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
