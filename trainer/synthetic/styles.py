"""Digit styles MNIST lacks, written from parametric stroke templates (issue 23, point 1).

Real pen strokes of writers outside MNIST are read at about 96 % by our models, and the errors
repeat per writer: they are styles MNIST's writers rarely used (a 9 with a small loop and a tail
hooking left, read as 3; a 7 with a curved top, read as 2; a 4 in one open stroke, read as 6 or
5; a flagged 1 without base, read as 7), and big digits whose strokes come out thinner than
MNIST's after scaling. ``trainer.synthetic.writers`` changes MNIST glyphs and cannot make
these shapes; this module writes every digit from a template of strokes instead, no MNIST pixel
involved.

Styles
------
``STYLES`` maps each digit to its named styles (``"9/hooked-tail"``), ``FREQUENCY`` gives each
style's share of that digit's writers. The styles that are documented forms come from the
"Regional handwriting variation" article of the English Wikipedia (numerals section): the
slashed 0 and the script 0 with a loop at the top; the 1 with a serif (flag) at the top, with
or without a base, and the continental European 1 whose upstroke reaches far down; the curly
(looped) 2 once taught in the U.S., Germany and Austria; the flat-topped 3 (like ezh); the open
4 (seven-segment-like); the copperplate 7 with a wavy top stroke (a swash) and the crossed 7;
the 8 as two circles or in one continuous motion. The others are the plain school forms and the
forms of issue 23's error report (the hooked-tail 9, the one-stroke open 4, the Z-like 2). The
frequencies are estimates, not measurements: no count of digit allographs by writer was at
hand; they are set so that the plain school form is the most common for every digit and the
forms the issue names are common enough to matter (15-25 % of writers).

===========================  =====  =========================================================
style                        share  shape (parameters, in units of the digit's height)
===========================  =====  =========================================================
0/oval                       0.62   an ellipse from the top, counter-clockwise (width, taper,
                                    overshoot or gap at the close, tilt)
0/round                      0.20   the same, nearly as wide as high
0/looped-top                 0.10   the script 0: the end curls into a small loop inside
                                    the top
0/slashed                    0.08   an oval and a slash from lower left to upper right
1/stick                      0.45   one line (bend)
1/flag-no-base               0.25   a short flag at the top going down-left, no base (flag
                                    length 0.18-0.4, 40-75 degrees from vertical)
1/flag-base                  0.15   the same with a base bar
1/european                   0.15   a long upstroke (0.5-0.8, 15-30 degrees from vertical);
                                    a third of these writers add a base
2/plain                      0.70   an arc over the top, the neck down to the bottom left, the
                                    base (top depth, shoulder, neck curvature, base length)
2/looped                     0.20   the curly 2: a small loop at the bottom left
2/z-like                     0.10   an almost flat top, a rounded corner, a straight diagonal
3/round                      0.85   two bowls meeting at a cusp (middle height and depth)
3/flat-top                   0.15   a top bar, a diagonal to the middle, the lower bowl
4/closed                     0.50   diagonal and cross bar, then the stem through the
                                    diagonal's start (a closed triangle)
4/open                       0.30   two strokes: a vertical left stroke and the bar, the stem
4/open-one-stroke            0.20   issue 23's 4, an open "<" with a stem: a diagonal down-left
                                    (straight or bowed like a 6's back), across (level or
                                    rising), then the stem, whose top stays clear of the
                                    diagonal, so nothing is enclosed. Three habits: a
                                    separate down-stroke (25 % of these writers), across and
                                    straight on down with no stem above the bar (45 %), across,
                                    up the stem and back down without lifting (30 %)
5/two-stroke                 0.70   the downstroke and the bowl, then the flag
5/one-stroke                 0.30   flag, downstroke and bowl without lifting
6/curved                     0.70   a curved stem from the top right into the loop
6/straight                   0.30   a straight diagonal stem into the loop
7/plain                      0.50   top bar and stem in one stroke; some writers add a small
                                    serif at the left end
7/crossed                    0.25   the same with a bar across the stem
7/curved-top                 0.15   the top stroke an arc or a wave (the copperplate swash)
                                    starting low at the left like a 2's, turning into the
                                    stem round
7/curved-top-crossed         0.10   the same with a bar across the stem (down to 0.7 of the
                                    height)
8/figure-eight-one-stroke    0.55   one continuous stroke crossing itself in the middle
8/two-loops                  0.30   two closed loops stacked, two strokes
8/s-and-return               0.15   an S and a straight line back up to its start
9/straight                   0.55   a loop counter-clockwise from its right side, then a
                                    straight stem
9/curved-tail                0.25   the stem curving gently left at the bottom
9/hooked-tail                0.20   issue 23's 9: a small loop (0.2-0.34 of the height) and a
                                    long tail whose end curls left and up like a j's (hook
                                    radius 0.16-0.3, turning 150-220 degrees, kept
                                    ``HOOK_CLEARANCE`` below the loop so it closes no 8)
===========================  =====  =========================================================

Each template (``template``) is a function of a few named parameters drawn uniformly in ranges
written in its code. It returns strokes in units: (L, 2) float64 arrays of (x, y), y down, the
bounding box centred on (0, 0), height 1.

Writers
-------
A writer is an integer seed with a consistent hand (``hand``): a style per digit (drawn with
``FREQUENCY``), slant, aspect, rotation, size on the 280 x 280 canvas, pen width and a smooth
elastic displacement field (``trainer.synthetic.writers.random_field``), and its own value of
every template parameter (drawn once per writer and style; each instance moves it by a normal
step of ``INSTANCE_PARAMETER_SPREAD`` of its range). An instance (``write``) is the template
placed on the canvas by the writer's matrix, a small per-instance rotation, scale and shift, the
writer's field and a fresh per-instance jitter field; it is drawn with the page's round pen and
preprocessed as the page does (``trainer.synthetic.writers.render``: ``draw_strokes``, then
``mnist_common.preprocess.to_mnist``) into 28 x 28 uint8, ink = 255.

``SIZE_RANGE`` reaches 0.95 of the canvas: a digit that fills it, drawn with the page's 20 px
pen, comes out about 1.5 px thick at 28 x 28 (MNIST's strokes are about 2-3 px).

Sets
----
``styles_set`` is the writer-separated test set: writers ``first_seed + i`` from ``TEST_SEEDS``,
which never overlap ``TRAIN_SEEDS`` (``training_styles``'s). By default it is balanced (every
style of a digit written by an equal share of the writers, so each has enough instances for a
per-style accuracy: 60 writers x 5 per class give 3,000 digits and at least 75 per style) and
``held_out``: every template parameter range is widened by ``HELD_OUT_WIDEN`` of its width on
each side, so about a third of each parameter's values lie where training (``held_out=False``)
never draws (longer and rounder hooks, smaller loops, more curved 7 tops, ...). Both are cached
as ``.npz`` under ``data/styles/``, keyed by a hash of this file, of the writers module it
draws with, of the page's drawing algorithm and of the parameters.

``python -m trainer.synthetic.styles --grid out.png`` writes a picture, one row per style.

Building takes about 2.5 ms of CPU per digit, mostly drawing and ``to_mnist`` (the default test
set: 7 s in one process); set OPENBLAS_NUM_THREADS=1 on a busy machine (see
``trainer.synthetic.writers``).

Measured (2026-12, the committed default model, ``models/model.safetensors``, on the default test
set): 96.2 % overall; the styles it misreads are the ones issue 23 names: 1/flag-no-base 45 %
(read as 7), 9/hooked-tail 83 % (as 0, 3, 2), 4/open-one-stroke 87 % (as 6, 5),
7/curved-top-crossed 93 % (as 2, 9), and two the issue does not: 0/slashed 73 % (as 8), 6/straight
95 % (as 0); the plain forms 100 %. The curved-top 7 without a bar is read at 100 %. Stroke
width at 28 x 28 (ink >= 128 / skeleton length): median 2.1 px, 1.8 px for digits of 0.9 of the
canvas or more, against 2.9 px for MNIST's test digits.

Convention everywhere: grey values 0..255, ink = 255, background = 0, row-major (H, W); points
are (x, y), x to the right, y down.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from mnist_common.preprocess import MNIST_SIZE

from ..data import DEFAULT_DATA_DIR
from ..export import write_atomically
from . import writers as _writers
from .redraw import CANVAS_SIZE, PAGE_PEN_WIDTH, algorithm_digest, default_processes, map_chunks
from .writers import (
    CANVAS_MARGIN,
    ELASTIC_AMPLITUDE_RANGE,
    ELASTIC_WAVELENGTH_RANGE,
    INSTANCE_JITTER,
    INSTANCE_JITTER_WAVELENGTH,
    field_displacement,
    random_field,
    render,
)

#: Number of digit classes.
NUM_CLASSES = 10

# --- seeds --------------------------------------------------------------------------------------
# Writers of the test set (``styles_set``) and of training (``training_styles``) come from two
# disjoint ranges, so no test writer's hand (its style choices, its parameter values, its field)
# is ever trained on. Both lie far from trainer.synthetic.writers' seeds (test writers from
# 20,150, tuning writers from 120,150, training writers from 10,000,000), although those seed
# another generator.
#: First seed of the test writers.
TEST_SEED = 30_000_000
#: Seeds a test writer may have.
TEST_SEEDS = range(TEST_SEED, TEST_SEED + 1_000_000)
#: First seed of the training writers.
TRAIN_SEED = 40_000_000
#: Seeds a training writer may have.
TRAIN_SEEDS = range(TRAIN_SEED, TRAIN_SEED + 10_000_000)
assert TEST_SEEDS.stop <= TRAIN_SEEDS.start or TRAIN_SEEDS.stop <= TEST_SEEDS.start, "seed ranges overlap"

# Streams: ``np.random.default_rng((stream, seed, ...))``, so a writer's hand, its parameter values,
# its instances and a set's style assignment are independent of one another.
HAND_STREAM = 2301
PARAMETER_STREAM = 2302
INSTANCE_STREAM = 2303
BALANCE_STREAM = 2304

#: Where built sets are cached (``data/`` is ignored by git).
DEFAULT_CACHE_DIR = DEFAULT_DATA_DIR / "styles"
#: Part of the cache key with this file's bytes: bump it when a set changes for a reason the key
#: does not see.
ALGORITHM_VERSION = 1

# --- the writer's hand (uniform ranges) -------------------------------------------------------
#: Shear, x += slant * (height above the centre); > 0 leans right (most hands do).
SLANT_RANGE = (-0.2, 0.4)
#: x scale of the template.
ASPECT_RANGE = (0.8, 1.2)
#: Rotation in degrees, > 0 counter-clockwise on the screen.
ROTATION_RANGE = (-6.0, 6.0)
#: Digit height as a fraction of the canvas side; 0.95 fills the canvas (thin strokes at 28 x 28).
SIZE_RANGE = (0.5, 0.95)
#: Pen width in canvas px, around the page's ``PAGE_PEN_WIDTH`` (20).
PEN_WIDTH_RANGE = (0.7 * PAGE_PEN_WIDTH, 1.3 * PAGE_PEN_WIDTH)

# --- one instance ----------------------------------------------------------------------------
#: Standard deviation of an instance's step from the writer's parameter value, as a fraction of
#: the parameter's range.
INSTANCE_PARAMETER_SPREAD = 0.08
#: Uniform range of the per-instance rotation, degrees (+-).
INSTANCE_ROTATION = 3.0
#: Uniform range of the per-instance scale change (+-, relative), x and y drawn separately.
INSTANCE_SCALE = 0.05
#: Uniform range of the per-instance translation, canvas px (+-, each axis).
INSTANCE_SHIFT = 6.0
#: Least distance (units) between the stem of a one-stroke open 4 and its diagonal.
OPEN_CLEARANCE = 0.15
#: Least height (units) between a hooked 9's hook and its loop.
HOOK_CLEARANCE = 0.22
#: ``held_out``: every template parameter range [lo, hi] becomes
#: [lo - w * (hi - lo), hi + w * (hi - lo)] with this w (clipped to the template's hard limits).
HELD_OUT_WIDEN = 0.25


# --- geometry helpers (units, y down) -----------------------------------------------------------


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> np.ndarray:
    """Points of an ellipse arc from angle ``start`` to ``end`` (degrees; growing angles turn
    counter-clockwise on the screen: 0 right, 90 top, 180 left, 270 bottom), about 1 per 3 degrees."""
    n = max(4, math.ceil(abs(end - start) / 3) + 1)
    a = np.radians(np.linspace(start, end, n))
    return np.column_stack([cx + rx * np.cos(a), cy - ry * np.sin(a)])


def _line(*points, step: float = 0.02) -> np.ndarray:
    """A polyline through ``points``, with points every ``step`` units along each segment."""
    p = np.asarray(points, dtype=np.float64)
    out = [p[:1]]
    for a, b in zip(p[:-1], p[1:]):
        n = max(1, math.ceil(float(np.hypot(*(b - a))) / step))
        out.append(a + (b - a) * np.linspace(0, 1, n + 1)[1:, None])
    return np.concatenate(out)


def _spline(points, per_segment: int = 8) -> np.ndarray:
    """A smooth curve through ``points`` (uniform Catmull-Rom; straight ends extrapolated)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return _line(*p)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1 : i + 3]
        out.append(
            0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
        )
    out.append(p[-1:])
    return np.concatenate(out)


def _bulge(a, b, amount: float) -> np.ndarray:
    """A curve from ``a`` to ``b`` whose middle is pushed ``amount`` units to the left of the
    direction a -> b (to the right when negative): a gently curved stroke."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = b - a
    normal = np.array([d[1], -d[0]]) / max(float(np.hypot(*d)), 1e-9)  # left of a -> b on the screen
    return _spline([a, (a + b) / 2 + amount * normal, b], per_segment=16)


def _join(*parts: np.ndarray) -> np.ndarray:
    """Consecutive pieces of one stroke, the repeated joint points dropped."""
    out = [parts[0]]
    for part in parts[1:]:
        out.append(part[1:] if np.allclose(part[0], out[-1][-1]) else part)
    return np.concatenate(out)


def _round_join(a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Polyline ``a`` then ``b`` (``b`` starting where ``a`` ends) with the corner between them
    rounded: the points within ``radius`` of the corner are replaced by a smooth curve."""
    corner = a[-1]
    if radius <= 0:
        return _join(a, b)
    keep_a = a[np.hypot(*(a - corner).T) > radius]
    keep_b = b[np.hypot(*(b - corner).T) > radius]
    if len(keep_a) < 2 or len(keep_b) < 2:
        return _join(a, b)
    curve = _spline([keep_a[-2], keep_a[-1], corner * 0.6 + (keep_a[-1] + keep_b[0]) * 0.2, keep_b[0], keep_b[1]])
    return np.concatenate([keep_a[:-2], curve, keep_b[2:]])


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    """Points turned counter-clockwise on the screen by ``degrees`` about (0, 0)."""
    return points @ _rotation(degrees).T


def _rotation(degrees: float) -> np.ndarray:
    """2x2 matrix turning (x, y-down) points counter-clockwise on the screen by ``degrees``."""
    a = math.radians(degrees)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def _all_points(strokes: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(strokes) if strokes else np.zeros((0, 2))


def normalise(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """Strokes moved so their bounding box is centred on (0, 0) and scaled to height 1 (a box
    wider than high: to width 1)."""
    points = _all_points(strokes)
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2
    scale = max(float(high[1] - low[1]), float(high[0] - low[0]), 1e-9)
    return [(s - centre) / scale for s in strokes]


# --- template parameters ------------------------------------------------------------------------


class Parameters:
    """The parameter draws of one template instance.

    ``p(name, lo, hi)`` gives the value of parameter ``name`` of the style: uniform in [lo, hi]
    (widened by ``HELD_OUT_WIDEN`` on each side when ``held_out``, then clipped to ``limits``)
    from ``rng`` when there is no writer; with a writer seed, the writer's own value (drawn once,
    from ``PARAMETER_STREAM``, the seed and the style and parameter names) plus a normal step of
    ``INSTANCE_PARAMETER_SPREAD`` of the range from ``rng``, clipped to the (widened) range.
    ``p.flag(name, probability)`` is a yes/no habit: per writer when there is one, else per
    instance. ``p.drawn`` records every value, by name.
    """

    def __init__(self, style: str, rng: np.random.Generator, writer: int | None = None, held_out: bool = False):
        self.style, self.rng, self.writer, self.held_out = style, rng, writer, held_out
        self.drawn: dict[str, float] = {}

    def _writer_rng(self, name: str) -> np.random.Generator:
        key = zlib.crc32(f"{self.style}:{name}".encode())
        return np.random.default_rng((PARAMETER_STREAM, self.writer, key))

    def bounds(self, lo: float, hi: float, limits: tuple[float, float] | None = None) -> tuple[float, float]:
        """The range a parameter is drawn in: [lo, hi], or widened when held out."""
        if self.held_out:
            width = hi - lo
            lo, hi = lo - HELD_OUT_WIDEN * width, hi + HELD_OUT_WIDEN * width
            if limits is not None:
                lo, hi = max(lo, limits[0]), min(hi, limits[1])
        return lo, hi

    def __call__(self, name: str, lo: float, hi: float, limits: tuple[float, float] | None = None) -> float:
        low, high = self.bounds(lo, hi, limits)
        if self.writer is None:
            value = float(self.rng.uniform(low, high))
        else:
            base = float(self._writer_rng(name).uniform(low, high))
            value = float(np.clip(base + self.rng.normal(0, INSTANCE_PARAMETER_SPREAD * (hi - lo)), low, high))
        self.drawn[name] = value
        return value

    def flag(self, name: str, probability: float) -> bool:
        rng = self.rng if self.writer is None else self._writer_rng(name)
        value = bool(rng.random() < probability)
        self.drawn[name] = float(value)
        return value


Template = Callable[[Parameters], list[np.ndarray]]


# --- the templates (units: y down, the digit about 1 high, x about centred) ---------------------------


def _zero(width: tuple[float, float], overshoot: tuple[float, float], loop: bool = False, slash: bool = False):
    """A 0: an ellipse from the top, counter-clockwise; ``loop``: the script 0, whose end
    curls into a small loop inside the top; ``slash``: a slash across it."""

    def template(p: Parameters) -> list[np.ndarray]:
        w = p("width", *width, limits=(0.3, 1.1))
        taper = p("taper", -0.12, 0.12)  # > 0: wider at the bottom
        start = p("start", 70.0, 110.0)
        over = p("overshoot", *overshoot, limits=(-25.0, 45.0))  # degrees past a full turn (< 0: a gap)
        drift = p("drift", -0.04, 0.04)  # the overshoot moves out (> 0) or in, of the radius
        tilt = p("tilt", -8.0, 8.0)
        a = np.radians(np.linspace(start, start + 360 + over, 150))
        past = np.clip((a - math.radians(start + 330)) / math.radians(30 + max(over, 1.0)), 0, 1)
        grow = 1 + drift * past
        y = -0.5 * np.sin(a) * grow
        x = w / 2 * np.cos(a) * (1 + taper * 2 * y) * grow
        stroke = np.column_stack([x, y])
        if loop:  # on along the top, moving left, into a small loop under it (counter-clockwise)
            r = p("loop_radius", 0.1, 0.16, limits=(0.07, 0.22))
            top = stroke[-1]
            turn = p("loop_turn", 300.0, 380.0, limits=(270.0, 420.0))
            stroke = _join(stroke, _arc(top[0], top[1] + r, r * p("loop_aspect", 0.8, 1.2), r, 90.0, 90.0 + turn))
        strokes = [_rotate(stroke, tilt)]
        if slash:
            reach = p("slash_reach", 0.85, 1.1)
            lean = p("slash_angle", 40.0, 65.0)  # degrees above horizontal
            dx = reach * 0.5 * math.cos(math.radians(lean)) * (w / 0.6)
            dy = reach * 0.5 * math.sin(math.radians(lean))
            strokes.append(_line((-dx, dy), (dx, -dy)))
        return strokes

    return template


def _one(flag: bool, base: str, length=(0.18, 0.4), angle=(40.0, 75.0)):
    """A 1: a stem, a flag when ``flag``, a base bar when ``base`` is "yes" ("habit": a third of
    the writers)."""

    def template(p: Parameters) -> list[np.ndarray]:
        bend = p("bend", -0.04, 0.04)
        stem = _spline([(0.0, -0.5), (bend, 0.0), (0.0, 0.5)], per_segment=16)
        strokes = [stem]
        if flag:
            size = p("flag_length", *length, limits=(0.1, 0.85))
            theta = math.radians(p("flag_angle", *angle, limits=(12.0, 85.0)))  # from the stem, down-left
            curve = p("flag_curve", -0.03, 0.03)
            start = (-size * math.sin(theta), -0.5 + size * math.cos(theta))
            strokes = [_join(_bulge(start, (0.0, -0.5), curve), stem)]
        if base == "yes" or (base == "habit" and p.flag("base", 1 / 3)):
            left, right = p("base_left", 0.12, 0.26), p("base_right", 0.12, 0.26)
            tilt = p("base_tilt", -0.03, 0.03)
            strokes.append(_line((-left, 0.5 - tilt), (right, 0.5 + tilt)))
        return strokes

    return template


def _two(kind: str):
    def template(p: Parameters) -> list[np.ndarray]:
        h = p("width", 0.55, 0.8) / 2
        foot = np.array([-h * p("foot", 0.8, 1.05), 0.5])
        base_end = np.array([h * p("base_length", 0.7, 1.1), 0.5 + p("base_tilt", -0.06, 0.02)])
        if kind == "z-like":
            top_left = np.array([-h, -0.5 + p("top_drop", 0.0, 0.1)])
            corner = np.array([h, -0.5 + p("top_tilt", -0.03, 0.04)])
            top = _bulge(top_left, corner, p("top_curve", 0.0, 0.04))
            neck = _round_join(top, _line(corner, foot), p("corner", 0.06, 0.16, limits=(0.02, 0.3)))
            return [_join(neck, _line(foot, base_end))]
        ry = p("top_depth", 0.2, 0.32)
        arc = _arc(0.0, -0.5 + ry, h, ry, p("start_angle", 150.0, 200.0), p("shoulder", -40.0, -10.0))
        bend = p("neck", -0.04, 0.1)
        if kind == "plain":
            return [_join(arc, _bulge(arc[-1], foot, bend), _line(foot, base_end))]
        # looped: the neck comes down into a small loop, clockwise on the screen, then the base
        r = p("loop_radius", 0.06, 0.12, limits=(0.04, 0.18))
        centre = foot + np.array([r * 1.1, -r])
        loop = _arc(centre[0], centre[1], r, r, -45.0, -330.0)
        exit_ = _spline([loop[-2], loop[-1], (centre[0] + 1.4 * r, 0.5), base_end], per_segment=10)
        return [_join(arc, _bulge(arc[-1], loop[0], bend), loop, exit_)]

    return template


def _three(flat: bool):
    def template(p: Parameters) -> list[np.ndarray]:
        h = p("width", 0.5, 0.75) / 2
        middle = p("middle", -0.08, 0.06)
        cy2, ry2 = (middle + 0.5) / 2, (0.5 - middle) / 2
        end = -p("end_angle", 130.0, 185.0, limits=(110.0, 195.0))
        if flat:
            bar = _line((-h * p("bar_left", 0.7, 1.0), -0.5 + p("bar_tilt", -0.03, 0.05)), (h * 0.9, -0.5))
            start = p("bowl_start", 100.0, 135.0)
            bowl = _arc(0.0, cy2, h, ry2, start, end)
            diagonal = _bulge(bar[-1], bowl[0], p("diagonal_curve", -0.03, 0.05))
            return [_join(_round_join(bar, diagonal, p("corner", 0.0, 0.05)), bowl)]
        cy1, ry1 = (-0.5 + middle) / 2, (middle + 0.5) / 2
        top = _arc(
            0.0, cy1, h * p("top_width", 0.75, 1.0), ry1, p("start_angle", 140.0, 175.0), -p("cusp_in", 95.0, 130.0)
        )
        bottom = _arc(0.0, cy2, h, ry2, p("cusp_out", 95.0, 130.0), end)
        return [_join(top, bottom)]

    return template


def _four(kind: str):
    def template(p: Parameters) -> list[np.ndarray]:
        h = p("width", 0.55, 0.8) / 2
        bar_y = p("bar", 0.05, 0.25)
        stem_x = h * p("stem_x", 0.1, 0.45)
        bar_end = (h * p("bar_right", 0.85, 1.1), bar_y + p("bar_tilt", -0.04, 0.03))
        stem_foot = (stem_x + p("stem_lean", -0.05, 0.03), 0.5)
        left = (-h, bar_y)
        if kind == "closed":
            top = (stem_x, -0.5)
            first = _join(_bulge(top, left, p("diagonal_curve", -0.03, 0.04)), _line(left, bar_end))
            stem_top = (stem_x, -0.5 + p("stem_gap", -0.02, 0.03, limits=(-0.05, 0.04)))
            return [first, _line(stem_top, stem_foot)]
        if kind == "open":
            top = (-h + p("left_lean", 0.0, 0.15), -0.5 + p("left_drop", 0.0, 0.15))
            first = _join(_line(top, left), _line(left, bar_end))
            stem_top = (stem_x, -0.5 + p("stem_drop", -0.02, 0.06))
            return [first, _line(stem_top, stem_foot)]
        # open-one-stroke: a diagonal down-left that starts left of the stem, the bar, then the stem
        # whose top stays below and right of the diagonal (the top is not closed)
        stem_x = h * p("stem_x_open", 0.3, 0.6)  # the stem further right than a closed 4's
        stem_foot = (stem_x + p("stem_lean", -0.05, 0.03), 0.5)
        top = (min(-h + h * p("diagonal_run", 0.55, 1.0, limits=(0.4, 1.15)), stem_x - OPEN_CLEARANCE), -0.5)
        diagonal = _bulge(top, left, p("diagonal_curve", -0.08, 0.04))  # < 0: bowed up-left, like a 6's back
        stem_top_y = bar_y - p("stem_rise", 0.04, 0.3, limits=(0.0, 0.45))
        # the stem's top no higher than where the diagonal is OPEN_CLEARANCE left of it
        clear = diagonal[stem_x - diagonal[:, 0] >= OPEN_CLEARANCE, 1]
        stem_top_y = max(stem_top_y, float(clear.min()) if clear.size else bar_y)
        bar_end = (bar_end[0], bar_y - p("bar_rise", -0.02, 0.12, limits=(-0.05, 0.2)))
        if p.flag("lifts", 0.25):  # a separate down-stroke
            first = _join(diagonal, _line(left, bar_end))
            return [first, _line((stem_x, stem_top_y), stem_foot)]
        if p.flag("turns_down", 0.6):  # across, then down without going up: no stem above the bar
            across = _line(left, (stem_x, bar_end[1]))
            down = _line(across[-1], stem_foot)
            return [_join(diagonal, _round_join(across, down, p("turn_radius", 0.02, 0.1, limits=(0.0, 0.14))))]
        turn = (stem_x + p("overshoot", 0.0, 0.04, limits=(0.0, 0.06)), bar_y)  # across, up the stem, down
        up = _line(turn, (stem_x, stem_top_y))
        down = _line((stem_x, stem_top_y), stem_foot)
        return [_join(diagonal, _line(left, turn), up, down)]

    return template


def _five(one_stroke: bool):
    def template(p: Parameters) -> list[np.ndarray]:
        h = p("width", 0.5, 0.75) / 2
        waist = p("waist", -0.1, 0.06)  # top of the bowl
        cy, ry = (waist + 0.5) / 2, (0.5 - waist) / 2
        rx = h * p("bowl_width", 0.85, 1.1)
        bowl = _arc(
            h * p("bowl_x", -0.05, 0.1),
            cy,
            rx,
            ry,
            p("bowl_start", 115.0, 150.0),
            -p("bowl_end", 125.0, 160.0, limits=(100.0, 172.0)),
        )
        top = (bowl[0, 0] + p("stem_lean", -0.04, 0.08), -0.5)
        down = _bulge(top, bowl[0], p("stem_curve", -0.03, 0.03))
        flag_end = (top[0] + 2 * h * p("flag_length", 0.5, 0.8), -0.5 + p("flag_tilt", -0.06, 0.04))
        if one_stroke:
            return [_join(_line(flag_end, top), down, bowl)]
        return [_join(down, bowl), _line(top, flag_end)]

    return template


def _six(straight: bool):
    def template(p: Parameters) -> list[np.ndarray]:
        h = p("width", 0.5, 0.75) / 2
        lh = p("loop_height", 0.42, 0.6, limits=(0.3, 0.7))
        cy, ry, rx = 0.5 - lh / 2, lh / 2, h * p("loop_width", 0.85, 1.05)
        start = (h * p("start_x", 0.1, 0.65), -0.5 + p("start_drop", 0.0, 0.06))
        if straight:  # a straight stem into the loop's upper left
            entry = p("entry", 150.0, 185.0)
            loop = _arc(0.0, cy, rx, ry, entry, entry + p("loop_turn", 320.0, 365.0))
            return [_join(_line(start, loop[0]), loop)]
        # curved: a quarter of an ellipse from the start down to the loop's leftmost point, then the loop
        big_rx, big_ry = start[0] + rx, cy - start[1]
        stem = _arc(start[0], cy, big_rx, big_ry, p("stem_start", 65.0, 95.0, limits=(50.0, 110.0)), 180.0)
        loop = _arc(0.0, cy, rx, ry, 180.0, 180.0 + p("loop_turn", 320.0, 365.0))
        return [_join(stem, loop)]

    return template


def _seven(curved: bool, crossed: bool):
    def template(p: Parameters) -> list[np.ndarray]:
        h = (p("width", 0.55, 0.85) if curved else p("width", 0.5, 0.8)) / 2
        left = np.array([-h, -0.5 + p("bar_tilt", -0.04, 0.06)])
        corner = np.array([h, -0.5])
        foot = np.array([-h * (p("foot", 0.1, 0.85) if curved else p("foot", -0.1, 0.5)), 0.5])
        # > 0: bowed towards the lower right (the neck of a 2)
        stem = _bulge(corner, foot, p("stem_curve", -0.02, 0.1) if curved else p("stem_curve", -0.05, 0.06))
        if curved:
            t = np.linspace(0, 1, 40)[:, None]
            left = left + (0.0, p("left_drop", 0.08, 0.24, limits=(0.0, 0.3)))  # starts low, like a 2
            arc = p("arc", 0.1, 0.22, limits=(0.03, 0.28))  # the top bulges up
            wave = p("wave", 0.0, 0.08, limits=(0.0, 0.12))  # ... and waves (a swash)
            sign = 1.0 if p.flag("wave_down_first", 0.5) else -1.0
            top = left + (corner - left) * t
            top[:, 1] += -arc * np.sin(np.pi * t[:, 0]) + sign * wave * np.sin(2 * np.pi * t[:, 0])
            first = _round_join(top, stem, p("corner", 0.1, 0.22, limits=(0.02, 0.28)))
        else:
            first = _join(_line(left, corner), stem)
        if p.flag("serif", 0.25):
            first = _join(_line(left + (0.0, p("serif", 0.06, 0.14)), first[0]), first)
        strokes = [first]
        if crossed:
            y = p("cross_y", -0.05, 0.2) if curved else p("cross_y", -0.08, 0.12)
            x = float(np.interp(y, stem[:, 1], stem[:, 0]))
            half = p("cross_length", 0.12, 0.22)
            shift = p("cross_shift", -0.05, 0.05)
            strokes.append(_line((x - half + shift, y + 0.01), (x + half + shift, y - 0.01)))
        return strokes

    return template


def _eight(kind: str):
    def template(p: Parameters) -> list[np.ndarray]:
        top_w = p("top_width", 0.4, 0.62)
        bottom_w = p("bottom_width", 0.5, 0.8)
        cross = p("cross", -0.12, 0.04)  # height of the waist
        if kind == "two-loops":
            touch = p("touch", 0.0, 0.04)
            shift = p("shift", -0.05, 0.05)
            top_h, bottom_h = cross + 0.5 + touch, 0.5 - cross
            start = p("start", 60.0, 120.0)
            top = _arc(shift, -0.5 + top_h / 2, top_w / 2, top_h / 2, start, start + 360 + p("close", -10.0, 25.0))
            start = p("start_bottom", 60.0, 120.0)
            bottom = _arc(
                0.0, 0.5 - bottom_h / 2, bottom_w / 2, bottom_h / 2, start, start + 360 + p("close_bottom", -10.0, 25.0)
            )
            return [top, bottom]
        if kind == "s-and-return":
            h = bottom_w / 2
            start_a = p("start_angle", 20.0, 55.0)
            upper = _arc(0.0, (-0.5 + cross) / 2, top_w / 2, (cross + 0.5) / 2, start_a, 270.0)
            lower = _arc(0.0, (cross + 0.5) / 2, h, (0.5 - cross) / 2, 90.0, -p("end_angle", 160.0, 215.0))
            s = _join(upper, lower)
            back = _bulge(s[-1], s[0] + (p("return_gap", -0.04, 0.04), 0.0), p("return_curve", -0.05, 0.05))
            return [_join(s, back)]
        # figure-eight-one-stroke: x = -sin(2t) * width / 2, y = -cos(t) / 2 (crossing at t = pi / 2)
        t0 = p("start", -0.4, 0.1)
        t = np.linspace(t0, t0 + 2 * math.pi + p("close", -0.1, 0.35), 200)
        y = -0.5 * np.cos(t)
        y = np.where(y < 0, -0.5 + (y + 0.5) * (cross + 0.5) / 0.5, cross + y * (0.5 - cross) / 0.5)
        width = np.where(y < cross, top_w, bottom_w)
        x = -np.sin(2 * t) * width / 2 + p("skew", -0.1, 0.1) * y
        return [np.column_stack([x, y])]

    return template


def _nine(kind: str):
    def template(p: Parameters) -> list[np.ndarray]:
        if kind == "hooked-tail":  # a small loop
            lh = p("loop_height", 0.2, 0.34, limits=(0.15, 0.5))
            lw = p("loop_width", 0.32, 0.52)
        else:
            lh = p("loop_height", 0.38, 0.55)
            lw = p("loop_width", 0.42, 0.65)
        cy, rx, ry = -0.5 + lh / 2, lw / 2, lh / 2
        start = p("start_angle", -10.0, 40.0)
        loop = _arc(0.0, cy, rx, ry, start, 360 + p("close", -5.0, 20.0))
        joint = loop[-1]
        lean = p("lean", -0.05, 0.1)  # > 0: the stem's foot left of its top
        if kind == "straight":
            return [_join(loop, _bulge(joint, (joint[0] - lean, 0.5), p("stem_curve", -0.03, 0.03)))]
        if kind == "curved-tail":
            c = p("tail_curve", 0.06, 0.16)
            tail = _spline(
                [
                    joint,
                    (joint[0] - lean * 0.3, 0.1),
                    (joint[0] - lean * 0.7 - c * 0.3, 0.38),
                    (joint[0] - lean - c, 0.5),
                ]
            )
            return [_join(loop, tail)]
        # hooked-tail: a long stem, then an arc curling left and up at the bottom, like a j
        radius = p("hook_radius", 0.16, 0.3, limits=(0.1, 0.36))
        turn = p("hook_turn", 150.0, 220.0, limits=(110.0, 250.0))
        # the hook's end stays at least HOOK_CLEARANCE below the loop: a hook curling up into the
        # loop would close a second one (an 8)
        room = (0.5 - radius - (-0.5 + lh + HOOK_CLEARANCE)) / radius  # sin of the largest turn past 180
        turn = min(turn, 180.0 + math.degrees(math.asin(min(1.0, max(0.0, room)))))
        stem_x = joint[0] - lean
        hook = _arc(stem_x - radius, 0.5 - radius, radius, radius, 0.0, -turn)
        stem = _bulge(joint, hook[0], p("stem_curve", -0.02, 0.06))  # > 0: bowed to the right
        return [_join(loop, stem, hook)]

    return template


#: The styles of each digit, in order: {digit: ((name, share of that digit's writers, template), ...)}.
_TABLE: dict[int, tuple[tuple[str, float, Template], ...]] = {
    0: (
        ("oval", 0.62, _zero((0.45, 0.75), (-12.0, 30.0))),
        ("round", 0.20, _zero((0.8, 1.0), (-12.0, 30.0))),
        ("looped-top", 0.10, _zero((0.5, 0.75), (-5.0, 10.0), loop=True)),
        ("slashed", 0.08, _zero((0.5, 0.75), (-8.0, 20.0), slash=True)),
    ),
    1: (
        ("stick", 0.45, _one(False, "no")),
        ("flag-no-base", 0.25, _one(True, "no")),
        ("flag-base", 0.15, _one(True, "yes", length=(0.15, 0.35), angle=(40.0, 70.0))),
        ("european", 0.15, _one(True, "habit", length=(0.5, 0.8), angle=(15.0, 30.0))),
    ),
    2: (("plain", 0.70, _two("plain")), ("looped", 0.20, _two("looped")), ("z-like", 0.10, _two("z-like"))),
    3: (("round", 0.85, _three(False)), ("flat-top", 0.15, _three(True))),
    4: (
        ("closed", 0.50, _four("closed")),
        ("open", 0.30, _four("open")),
        ("open-one-stroke", 0.20, _four("open-one-stroke")),
    ),
    5: (("two-stroke", 0.70, _five(False)), ("one-stroke", 0.30, _five(True))),
    6: (("curved", 0.70, _six(False)), ("straight", 0.30, _six(True))),
    7: (
        ("plain", 0.50, _seven(False, False)),
        ("crossed", 0.25, _seven(False, True)),
        ("curved-top", 0.15, _seven(True, False)),
        ("curved-top-crossed", 0.10, _seven(True, True)),
    ),
    8: (
        ("figure-eight-one-stroke", 0.55, _eight("figure-eight")),
        ("two-loops", 0.30, _eight("two-loops")),
        ("s-and-return", 0.15, _eight("s-and-return")),
    ),
    9: (
        ("straight", 0.55, _nine("straight")),
        ("curved-tail", 0.25, _nine("curved-tail")),
        ("hooked-tail", 0.20, _nine("hooked-tail")),
    ),
}

#: The named styles of each digit: {digit: ("0/oval", ...)}.
STYLES: dict[int, tuple[str, ...]] = {d: tuple(f"{d}/{name}" for name, _, _ in rows) for d, rows in _TABLE.items()}
#: Each style's share of its digit's writers (the shares of a digit sum to 1): estimates, see above.
FREQUENCY: dict[str, float] = {f"{d}/{name}": share for d, rows in _TABLE.items() for name, share, _ in rows}
_TEMPLATES: dict[str, Template] = {f"{d}/{name}": fn for d, rows in _TABLE.items() for name, _, fn in rows}
#: The styles issue 23 reports as misread (the hard cases of the test set).
PROBLEM_STYLES = ("9/hooked-tail", "7/curved-top", "7/curved-top-crossed", "4/open-one-stroke", "1/flag-no-base")
assert all(abs(sum(FREQUENCY[s] for s in names) - 1) < 1e-9 for names in STYLES.values())


def style_names() -> tuple[str, ...]:
    """Every style, digit by digit in ``STYLES``'s order: a style's index in this tuple is the
    style index ``styles_set`` returns."""
    return tuple(name for d in range(NUM_CLASSES) for name in STYLES[d])


def digit_of(style: str) -> int:
    """The digit a style writes ("9/hooked-tail" -> 9). ValueError for an unknown style."""
    if style not in _TEMPLATES:
        raise ValueError(f"unknown style {style!r}; the styles are {', '.join(style_names())}")
    return int(style.split("/", 1)[0])


def template(
    style: str,
    rng: np.random.Generator,
    *,
    writer: int | None = None,
    held_out: bool = False,
    drawn: dict | None = None,
) -> list[np.ndarray]:
    """One instance of a style's template, upright, in units.

    Args:
        style: a name of ``style_names()``.
        rng: the instance's random draws.
        writer: a writer seed: its own parameter values (``Parameters``); None: every parameter
            drawn afresh from ``rng``.
        held_out: draw the parameters in the widened ranges (``HELD_OUT_WIDEN``).
        drawn: a dict that receives the parameter values drawn, by name.

    Returns:
        the strokes, (L, 2) float64 arrays of (x, y), y down, bounding box centred on (0, 0),
        height 1 (width 1 when wider than high).

    Raises:
        ValueError: unknown style.
    """
    digit_of(style)
    params = Parameters(style, rng, writer, held_out)
    strokes = normalise(_TEMPLATES[style](params))
    if drawn is not None:
        drawn.update(params.drawn)
    return strokes


# --- writers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hand:
    """A writer's fixed habits (``hand`` draws them from the seed).

    Attributes:
        seed: the writer (integer >= 0); None for a hand drawn from a generator (``write``).
        styles: the style of each digit 0..9 (names of ``style_names()``).
        slant, aspect, rotation, size, pen_width: see ``SLANT_RANGE`` .. ``PEN_WIDTH_RANGE``.
        elastic: the writer's displacement field (``trainer.synthetic.writers.random_field``).
        held_out: the writer's template parameters come from the widened ranges.
    """

    seed: int | None
    styles: tuple[str, ...]
    slant: float
    aspect: float
    rotation: float
    size: float
    pen_width: float
    elastic: tuple
    held_out: bool = False

    def describe(self) -> str:
        return (
            f"writer {self.seed}: slant {self.slant:+.2f}, aspect {self.aspect:.2f}, rotation {self.rotation:+.1f} deg, "
            f"size {self.size:.2f}, pen {self.pen_width:.0f} px; " + ", ".join(self.styles)
        )


def _check_seed(seed, what: str = "writer seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{what} must be >= 0, got {seed}")
    return int(seed)


def _draw_hand(rng: np.random.Generator, seed: int | None, held_out: bool) -> Hand:
    styles = tuple(str(rng.choice(STYLES[d], p=[FREQUENCY[s] for s in STYLES[d]])) for d in range(NUM_CLASSES))
    numbers = {
        name: float(rng.uniform(*bounds))
        for name, bounds in (
            ("slant", SLANT_RANGE),
            ("aspect", ASPECT_RANGE),
            ("rotation", ROTATION_RANGE),
            ("size", SIZE_RANGE),
            ("pen_width", PEN_WIDTH_RANGE),
        )
    }
    elastic = random_field(rng, float(rng.uniform(*ELASTIC_AMPLITUDE_RANGE)), ELASTIC_WAVELENGTH_RANGE)
    return Hand(seed=seed, styles=styles, elastic=elastic, held_out=held_out, **numbers)


def hand(seed: int, *, held_out: bool = False, styles: dict[int, str] | None = None) -> Hand:
    """The hand of writer ``seed``: the same seed gives the same hand.

    Args:
        seed: integer >= 0.
        held_out: its template parameters come from the widened ranges (see ``template``).
        styles: {digit: style} overriding the drawn style choice of those digits (a balanced
            set assigns them).

    Returns:
        a ``Hand``: each digit's style drawn with ``FREQUENCY``, every number uniform in its range.

    Raises:
        TypeError / ValueError: ``seed`` not an integer / negative; a style of ``styles`` unknown
        or not of its digit.
    """
    seed = _check_seed(seed)
    drawn = _draw_hand(np.random.default_rng((HAND_STREAM, seed)), seed, bool(held_out))
    if styles:
        chosen = list(drawn.styles)
        for d, name in styles.items():
            if digit_of(name) != d:
                raise ValueError(f"style {name!r} is not a style of digit {d}")
            chosen[d] = name
        drawn = replace(drawn, styles=tuple(chosen))
    return drawn


def writer_matrix(h: Hand) -> np.ndarray:
    """2x2 matrix from template units to canvas px: aspect, slant, rotation, size."""
    slant = np.array([[1.0, -h.slant], [0.0, 1.0]])  # y < 0 is up: the top moves right
    return h.size * CANVAS_SIZE * _rotation(h.rotation) @ slant @ np.diag([h.aspect, 1.0])


def place(strokes: list[np.ndarray], h: Hand, rng: np.random.Generator) -> list[np.ndarray]:
    """Template strokes (units) -> canvas px: the writer's matrix, a per-instance rotation, x/y
    scale and shift, the writer's elastic field and a fresh jitter field; shrunk about the canvas
    centre when the ink (with the pen's radius and ``CANVAS_MARGIN``) would leave the canvas."""
    scale = np.diag(1 + rng.uniform(-INSTANCE_SCALE, INSTANCE_SCALE, size=2))
    matrix = _rotation(rng.uniform(-INSTANCE_ROTATION, INSTANCE_ROTATION)) @ scale @ writer_matrix(h)
    centre = CANVAS_SIZE / 2 + rng.uniform(-INSTANCE_SHIFT, INSTANCE_SHIFT, size=2)
    jitter = random_field(rng, INSTANCE_JITTER, INSTANCE_JITTER_WAVELENGTH)
    placed = []
    for stroke in strokes:
        q = stroke @ matrix.T + centre
        placed.append(q + field_displacement(h.elastic, q - CANVAS_SIZE / 2) + field_displacement(jitter, q))
    points = _all_points(placed)
    room = CANVAS_SIZE / 2 - h.pen_width / 2 - CANVAS_MARGIN
    low, high = points.min(axis=0), points.max(axis=0)
    if np.any(low < CANVAS_SIZE / 2 - room) or np.any(high > CANVAS_SIZE / 2 + room):
        middle = (low + high) / 2
        shrink = min(1.0, room / max(float((high - low).max()) / 2, 1e-9))
        placed = [(q - middle) * shrink + CANVAS_SIZE / 2 for q in placed]
    return placed


def write(
    style: str, rng: np.random.Generator, writer: Hand | None = None, *, held_out: bool = False
) -> list[np.ndarray]:
    """The strokes of one instance of ``style`` on the page's canvas.

    Args:
        style: a name of ``style_names()``.
        rng: the instance's random draws.
        writer: a ``Hand`` (its parameter values, matrix and field); None: a random hand drawn
            from ``rng`` (and every template parameter too).
        held_out: widened parameter ranges (only without a writer; a hand carries its own).

    Returns:
        the strokes, (L, 2) float64 arrays of (x, y) canvas px on the 280 x 280 canvas; draw them
        with ``trainer.synthetic.writers.render(strokes, hand.pen_width)`` for the 28 x 28 input.

    Raises:
        ValueError: unknown style.
    """
    if writer is None:
        writer = _draw_hand(rng, None, bool(held_out))
    units = template(style, rng, writer=writer.seed, held_out=writer.held_out)
    return place(units, writer, rng)


def write_image(
    style: str, rng: np.random.Generator, writer: Hand | None = None, *, held_out: bool = False
) -> np.ndarray:
    """``write``, drawn with the writer's pen and preprocessed as the page does: (28, 28) uint8,
    ink = 255, the ink's centre of mass at the centre (``to_mnist``)."""
    if writer is None:
        writer = _draw_hand(rng, None, bool(held_out))
    return render(write(style, rng, writer), writer.pen_width)


def write_hand(h: Hand, per_class: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_class`` instances of every digit written by one hand, in its styles.

    Args:
        h: the writer.
        per_class: instances per digit, >= 1.
        seed: seed of the instance draws (``INSTANCE_STREAM``); None: the hand's seed.

    Returns:
        images (10 * per_class, 28, 28) uint8 ink = 255, digit by digit; labels (10 * per_class,)
        int64; style indices (10 * per_class,) int64 into ``style_names()``.
    """
    per_class = _check_count(per_class, "per_class")
    rng = np.random.default_rng((INSTANCE_STREAM, h.seed if seed is None else _check_seed(seed, "instance seed")))
    index = {name: i for i, name in enumerate(style_names())}
    images = np.zeros((NUM_CLASSES * per_class, MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    for d in range(NUM_CLASSES):
        for i in range(per_class):
            images[d * per_class + i] = render(write(h.styles[d], rng, h), h.pen_width)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    styles = np.repeat(np.array([index[h.styles[d]] for d in range(NUM_CLASSES)], dtype=np.int64), per_class)
    return images, labels, styles


def _check_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return int(value)


# --- sets ----------------------------------------------------------------------------------------


class StylesSet(NamedTuple):
    """Digits of several writers.

    images: (N, 28, 28) uint8, ink = 255, writer by writer and within a writer digit by digit
    (``per_class`` each). labels: (N,) int64 0..9. styles: (N,) int64 index into
    ``style_names()``. writers: (N,) int64 writer seed.
    """

    images: np.ndarray
    labels: np.ndarray
    styles: np.ndarray
    writers: np.ndarray


def balanced_styles(writers: int, first_seed: int) -> list[dict[int, str]]:
    """Style assignments giving each style of a digit an equal share (+-1) of ``writers``: for
    digit d, the writers in an order drawn from ``BALANCE_STREAM``, ``first_seed`` and d take the
    digit's styles in turn. Returns one {digit: style} per writer."""
    out: list[dict[int, str]] = [{} for _ in range(writers)]
    for d in range(NUM_CLASSES):
        order = np.random.default_rng((BALANCE_STREAM, first_seed, d)).permutation(writers)
        for turn, w in enumerate(order.tolist()):
            out[w][d] = STYLES[d][turn % len(STYLES[d])]
    return out


def _write_task(task: tuple[int, dict | None, bool, int]) -> StylesSet:
    """Worker: (seed, styles, held_out, per_class) -> that writer's digits."""
    seed, styles, held_out, per_class = task
    images, labels, style_index = write_hand(hand(seed, held_out=held_out, styles=styles), per_class)
    return StylesSet(images, labels, style_index, np.full(len(labels), seed, dtype=np.int64))


@dataclass
class _Part:
    """A worker's result, one writer's digits; ``len`` is their number (``map_chunks`` counts
    them with it)."""

    written: StylesSet

    def __len__(self) -> int:
        return len(self.written.images)


def _write_part(task) -> _Part:
    return _Part(_write_task(task))


@functools.lru_cache(maxsize=1)
def _digest() -> str:
    """sha256 of what a set depends on besides its arguments: this file, the writers module it
    draws with (its pen, fields and ``render``), the page's drawing and preprocessing
    (``algorithm_digest``), ``ALGORITHM_VERSION`` and numpy's version (its Generator)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(_writers.__file__).read_bytes())
    digest.update(repr((algorithm_digest(), ALGORITHM_VERSION, np.__version__)).encode())
    return digest.hexdigest()


def cache_path(
    cache_dir: Path, kind: str, writers: int, per_class: int, first_seed: int, held_out: bool, balanced: bool
) -> Path:
    """Where a set is cached: ``<kind>-w<W>-p<P>-s<seed>-<held|train>-<bal|freq>-<hash>.npz``,
    the hash covering ``_digest`` and every parameter."""
    key = f"{_digest()} {kind} w={writers} p={per_class} s={first_seed} h={held_out} b={balanced}"
    name = (
        f"{kind}-w{writers}-p{per_class}-s{first_seed}-{'held' if held_out else 'train'}-"
        f"{'bal' if balanced else 'freq'}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    )
    return Path(cache_dir) / name


def _load_cached(path: Path, n: int) -> StylesSet | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = StylesSet(*(archive[field] for field in StylesSet._fields))
    except (OSError, ValueError, EOFError, KeyError):
        return None
    if found.images.shape != (n, MNIST_SIZE, MNIST_SIZE) or found.images.dtype != np.uint8:
        return None
    if any(a.shape != (n,) or a.dtype != np.int64 for a in found[1:]):
        return None
    return found


def _save_cached(path: Path, dataset: StylesSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **dataset._asdict())

    write_atomically(path, write_file)


def _build(
    kind: str,
    writers: int,
    per_class: int,
    first_seed: int,
    held_out: bool,
    balanced: bool,
    cache_dir: Path | None,
    processes: int | None,
    progress: bool,
) -> StylesSet:
    n = writers * NUM_CLASSES * per_class
    path = cache_path(cache_dir, kind, writers, per_class, first_seed, held_out, balanced) if cache_dir else None
    if path is not None and (cached := _load_cached(path, n)) is not None:
        return cached
    started = time.perf_counter()
    assigned = balanced_styles(writers, first_seed) if balanced else [None] * writers
    tasks = [(first_seed + i, assigned[i], held_out, per_class) for i in range(writers)]
    workers = processes or default_processes(n)
    parts = [
        p.written for p in map_chunks(_write_part, tasks, n, f"writing styles ({writers} writers)", workers, progress)
    ]
    dataset = StylesSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in StylesSet._fields))
    if progress:
        seconds = time.perf_counter() - started
        print(
            f"wrote {n:,} digits of {writers} writers in {seconds:.1f} s ({seconds / n * 1e3:.1f} ms per digit)",
            flush=True,
        )
    if path is not None:
        _save_cached(path, dataset)
    return dataset


def _check_range(first_seed: int, writers: int, allowed: range | None, forbidden: range, what: str) -> None:
    seeds = range(first_seed, first_seed + writers)
    if seeds.start < forbidden.stop and forbidden.start < seeds.stop:
        raise ValueError(
            f"{what} writer seeds {seeds.start}..{seeds.stop - 1} overlap {forbidden.start}..{forbidden.stop - 1}, "
            "the other set's seeds"
        )
    if allowed is not None and not (allowed.start <= seeds.start and seeds.stop <= allowed.stop):
        raise ValueError(
            f"{what} writer seeds {seeds.start}..{seeds.stop - 1} must lie in {allowed.start}..{allowed.stop - 1}"
        )


def styles_set(
    writers: int = 60,
    per_class: int = 5,
    first_seed: int = TEST_SEED,
    *,
    held_out: bool = True,
    balanced: bool = True,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> StylesSet:
    """The writer-separated test set of styles, built once and cached.

    Writer i has seed ``first_seed + i``; with ``balanced`` each digit's styles are shared out
    equally among the writers (``balanced_styles``; a writer still has one style per digit),
    otherwise drawn with ``FREQUENCY``; with ``held_out`` every template parameter range is
    widened (``HELD_OUT_WIDEN`` of its width on each side, clipped to the template's hard limits),
    so part of the test lies outside what ``training_styles`` draws. The default (60 writers x 5
    per class, balanced) has 3,000 digits and at least 75 per style.

    Args:
        writers: number of writers, >= 1.
        per_class: digits per class and writer, >= 1.
        first_seed: seed of writer 0, integer >= 0; no writer seed may lie in ``TRAIN_SEEDS``.
        held_out: widened parameter ranges.
        balanced: equal shares of the styles (else realistic frequencies).
        cache_dir: folder of the ``.npz`` cache; None: build, no cache.
        processes: worker processes; None: ``default_processes`` (one per core for big sets).
        progress: show a progress bar and a line of timing while building.

    Returns:
        a ``StylesSet`` of ``writers * 10 * per_class`` digits.

    Raises:
        TypeError: an argument that must be an integer is not.
        ValueError: ``writers`` or ``per_class`` < 1, ``first_seed`` < 0, or a writer seed in
            ``TRAIN_SEEDS``.
    """
    writers, per_class = _check_count(writers, "writers"), _check_count(per_class, "per_class")
    first_seed = _check_seed(first_seed, "first_seed")
    _check_range(first_seed, writers, None, TRAIN_SEEDS, "test")
    return _build(
        "test", writers, per_class, first_seed, bool(held_out), bool(balanced), cache_dir, processes, progress
    )


def training_styles(
    count: int,
    seed: int = TRAIN_SEED,
    *,
    per_class: int = 10,
    balanced: bool = False,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Style digits for training, to add to MNIST's training images.

    ``ceil(count / (10 * per_class))`` writers from seed ``seed`` (all in ``TRAIN_SEEDS``), each
    writing ``per_class`` digits of every class in its styles (drawn with ``FREQUENCY``, or shared
    out equally with ``balanced``), parameters in the training ranges (never ``held_out``); the
    first ``count`` digits are returned (a few of the last writer's may be left out). Cached like
    ``styles_set``.

    Args:
        count: digits wanted, >= 1.
        seed: seed of the first writer; its writers' seeds must lie in ``TRAIN_SEEDS``.
        per_class: digits per class and writer, >= 1.
        balanced, cache_dir, processes, progress: as for ``styles_set``.

    Returns:
        images (count, 28, 28) uint8, ink = 255; labels (count,) int64 0..9.

    Raises:
        TypeError / ValueError: bad counts or seed, or writer seeds outside ``TRAIN_SEEDS``.
    """
    count, per_class = _check_count(count, "count"), _check_count(per_class, "per_class")
    seed = _check_seed(seed, "seed")
    writers = math.ceil(count / (NUM_CLASSES * per_class))
    _check_range(seed, writers, TRAIN_SEEDS, TEST_SEEDS, "training")
    dataset = _build("train", writers, per_class, seed, False, bool(balanced), cache_dir, processes, progress)
    return dataset.images[:count], dataset.labels[:count]


# --- measures and pictures -----------------------------------------------------------------------


def stroke_width(images: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Mean stroke width of each 28 x 28 digit in pixels: the pixels at or above ``threshold``
    divided by the length of their skeleton (its pixel count, ``skimage.morphology.skeletonize``).

    Args:
        images: (N, 28, 28) uint8, ink = 255.

    Returns:
        (N,) float64; NaN for a digit with no pixel at the threshold.
    """
    from skimage.morphology import skeletonize

    out = np.full(len(images), np.nan)
    for i, image in enumerate(np.asarray(images)):
        ink = image >= threshold
        length = int(skeletonize(ink).sum())
        if length:
            out[i] = ink.sum() / length
    return out


def grid_image(per_style: int = 12, held_out: bool = False, first_seed: int = TEST_SEED, zoom: int = 3) -> Image.Image:
    """A picture of every style: one row per style, its name on the left, ``per_style``
    instances by writers ``first_seed``, ``first_seed + 1``, ... (each in that style), dark ink
    on white. Returns an "L" image."""
    names = style_names()
    cell, label_width = MNIST_SIZE * zoom, 200
    canvas = Image.new("L", (label_width + per_style * (cell + 2), len(names) * (cell + 2)), 255)
    pen = ImageDraw.Draw(canvas)
    for row, name in enumerate(names):
        d = digit_of(name)
        y = row * (cell + 2)
        pen.text((4, y + cell // 2 - 6), name, fill=0)
        for i in range(per_style):
            h = hand(first_seed + i, held_out=held_out, styles={d: name})
            rng = np.random.default_rng((INSTANCE_STREAM, first_seed + i, row))
            image = render(write(name, rng, h), h.pen_width)
            tile = Image.fromarray(255 - image).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_width + i * (cell + 2), y))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG: one row per style")
    parser.add_argument("--per-style", type=int, default=12, help="instances per style in the grid (default 12)")
    parser.add_argument("--held-out", action="store_true", help="the grid with the test set's widened ranges")
    parser.add_argument(
        "--first-seed", type=int, default=TEST_SEED, help=f"seed of the first writer (default {TEST_SEED})"
    )
    parser.add_argument("--build", action="store_true", help="build (or load) the default test set and summarise it")
    args = parser.parse_args(argv)
    if args.grid is None and not args.build:
        parser.error("nothing to do: pass --grid PATH and/or --build")
    if args.grid is not None:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        grid_image(args.per_style, args.held_out, args.first_seed).save(args.grid)
        print(f"grid: {args.grid}")
    if args.build:
        dataset = styles_set()
        counts = np.bincount(dataset.styles, minlength=len(style_names()))
        for name, n in zip(style_names(), counts.tolist()):
            print(f"{name:28s} {n:5d}")


if __name__ == "__main__":
    main()
