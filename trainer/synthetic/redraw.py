"""A "redrawn MNIST" test set: MNIST test digits drawn again with the page's kind of pen.

MNIST digits are scanned pen strokes, blurred and anti-aliased by the scanner; a digit drawn on
the page's canvas is a stroke of constant width with round caps and joints. To measure the model
on inputs of the second kind without collecting drawings, every test digit is

1. reduced to its strokes: upscaled bilinearly from 28x28 to the canvas size (``UPSCALE`` = 10x),
   thresholded at ``INK_THRESHOLD`` (the half-maximum contour of the ink) and skeletonised
   (``skimage.morphology.skeletonize``) at that scale, so that the centre lines are smooth;
2. redrawn on a blank ``CANVAS_SIZE`` x ``CANVAS_SIZE`` canvas with a round pen of a given width
   in canvas pixels (Pillow ``ImageDraw``: a line of that width between every two 8-connected
   skeleton pixels, plus a filled disk of that diameter on every skeleton pixel, so that caps
   and joints are round), drawn at ``SUPERSAMPLE`` times the resolution and box-downsampled,
   which anti-aliases the edges as a browser canvas does;
3. passed through the page's own preprocessing, ``mnist_common.preprocess.to_mnist`` (the Python
   twin of web/preprocess.js), which gives the model's 28x28 input.

Convention everywhere: grey values 0..255, ink = 255, background = 0, row-major (H, W).

An adverse-pen variant (``adverse_set``, the page's "challenge" pen of web/pen.js) draws the
skeleton, traced into ordered strokes (``trace_strokes``), with a pen whose width (8-32 px) and
colour change along the stroke; a colour's ink is 255 - its BT.601 luma on white, so light blue
or pale cyan strokes are faint. Digit i is drawn with pen seed ``ADVERSE_SEED + i``.

Building takes about 1.5 ms of CPU per digit for the skeleton and 5 ms per digit and pen width
for drawing and preprocessing (about 20 ms per digit for the adverse pen, skeleton included), so
``redrawn_sets`` and ``adverse_set`` spread the digits over the CPU cores (one skeleton per digit
serves every pen width) and cache each built set as a ``.npy`` file under ``data/redrawn/``,
keyed by a hash of everything that determines it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mnist_common.preprocess import MNIST_SIZE, to_mnist

from ..data import DEFAULT_DATA_DIR
from ..export import write_atomically

#: Side of the page's drawing canvas in pixels: mirrors ``<canvas id="draw" width="280"
#: height="280">`` in web/index.html (tests/test_redraw.py checks that they agree).
CANVAS_SIZE = 280
#: Pen width of the page's normal pen, in canvas pixels: mirrors ``PEN_WIDTH`` in web/pen.js
#: (its ``lineWidth``, round caps and joints), checked by tests/test_redraw.py.
PAGE_PEN_WIDTH = 20
#: Pen widths of the redrawn sets, in canvas pixels: thin to fat strokes around the page's 20
#: (after ``to_mnist`` scales a digit by about 20/200, a pen of w px gives strokes of about
#: w/10 px on the 28x28 grid; MNIST's own strokes are about 2-3 px wide).
PEN_WIDTHS = (8, 14, 20, 28)
#: Upscaling factor from MNIST's 28x28 to the canvas (280 / 28).
UPSCALE = CANVAS_SIZE // MNIST_SIZE
#: Grey level (0..255) at or above which an upscaled MNIST pixel counts as stroke: half of full
#: ink, so the stroke's outline is its half-maximum contour.
INK_THRESHOLD = 128
#: Drawing resolution relative to the canvas; the result is box-averaged back down, so edge
#: pixels get partial ink (anti-aliasing), as on the page's canvas.
SUPERSAMPLE = 4
#: Part of the cache key, with the source of the drawing functions: bump it when a set changes
#: for a reason the key does not see (a helper outside ``algorithm_digest``'s list).
ALGORITHM_VERSION = 1
#: Where built sets are cached (``data/`` is ignored by git).
DEFAULT_CACHE_DIR = DEFAULT_DATA_DIR / "redrawn"
#: Below this many digits the pool's start-up (about a second) is not worth it.
MIN_DIGITS_FOR_POOL = 400
#: Digits per task handed to a worker process.
CHUNK = 100

#: The 4 "forward" 8-neighbour offsets (dy, dx): every 8-connected pair of pixels is joined once.
_FORWARD_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


def skeleton(image28: np.ndarray) -> np.ndarray:
    """The 1-pixel-wide centre lines of a digit's strokes, at canvas resolution.

    Args:
        image28: (28, 28) uint8 MNIST digit, 0..255, ink = 255.

    Returns:
        (280, 280) bool, True on the skeleton (8-connected, 1 px wide); all False when no
        pixel of the upscaled digit reaches ``INK_THRESHOLD`` (a blank digit).

    Raises:
        ValueError: ``image28`` is not a (28, 28) uint8 array.
    """
    from skimage.morphology import skeletonize  # imported here: it takes a while to load

    image28 = np.asarray(image28)
    if image28.shape != (MNIST_SIZE, MNIST_SIZE) or image28.dtype != np.uint8:
        raise ValueError(
            f"expected a ({MNIST_SIZE}, {MNIST_SIZE}) uint8 digit, got shape {image28.shape} dtype {image28.dtype}"
        )
    big = Image.fromarray(image28).resize((CANVAS_SIZE, CANVAS_SIZE), Image.BILINEAR)
    strokes = np.asarray(big) >= INK_THRESHOLD
    box = _bounding_box(strokes, margin=1)
    out = np.zeros_like(strokes)
    if box is not None:  # skeletonize only the strokes' box (a blank border keeps it exact)
        out[box] = skeletonize(strokes[box])
    return out


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """Row and column slices of the True pixels of a 2-D mask, widened by ``margin`` pixels on
    every side and clipped to the array; None when nothing is True."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)),
    )


def check_pen_width(pen_width: float) -> float:
    """``pen_width`` as a float, or ValueError unless it is a finite number > 0."""
    try:
        width = float(pen_width)
    except (TypeError, ValueError):
        raise ValueError(f"pen width must be a number of canvas pixels, got {pen_width!r}") from None
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"pen width must be a positive number of canvas pixels, got {pen_width!r}")
    return width


def redraw(skel: np.ndarray, pen_width: float) -> np.ndarray:
    """Draw a skeleton with a round pen on a blank canvas, anti-aliased.

    The ink is the union of a disk of diameter ``pen_width`` centred on every skeleton pixel and
    a line of width ``pen_width`` between every two 8-connected skeleton pixels: what a canvas
    stroke with ``lineCap = lineJoin = "round"`` along the skeleton covers.

    Args:
        skel: (280, 280) bool skeleton, as from ``skeleton``.
        pen_width: pen diameter in canvas pixels, > 0 (the page's is ``PAGE_PEN_WIDTH``).

    Returns:
        (280, 280) float32 in 0..255, ink = 255, background = 0; edge pixels hold their
        covered fraction (1/SUPERSAMPLE^2 steps). All zeros for an empty skeleton.

    Raises:
        ValueError: ``skel`` is not (280, 280), or ``pen_width`` is not a positive number.
    """
    width = check_pen_width(pen_width)
    return _draw_in_box(skel, width, lambda region: _draw(region, width))


def _draw_in_box(skel, pen_width: float, draw) -> np.ndarray:
    """A (280, 280) float32 canvas with ``draw(region)`` of the skeleton's bounding box: only
    that box, widened by the pen's radius (``pen_width / 2`` canvas px), can get ink.

    Raises:
        ValueError: ``skel`` is not (280, 280).
    """
    skel = np.asarray(skel, dtype=bool)
    if skel.shape != (CANVAS_SIZE, CANVAS_SIZE):
        raise ValueError(f"expected a ({CANVAS_SIZE}, {CANVAS_SIZE}) skeleton, got shape {skel.shape}")
    out = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.float32)
    box = _bounding_box(skel, margin=math.ceil(pen_width / 2) + 1)
    if box is not None:
        out[box] = draw(skel[box])
    return out


def _draw(skel: np.ndarray, pen_width: float) -> np.ndarray:
    """``redraw`` on a region: (H, W) bool skeleton -> (H, W) float32 ink, 0..255."""
    height, width = skel.shape
    diameter = pen_width * SUPERSAMPLE  # in supersampled pixels
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    pen = ImageDraw.Draw(canvas)

    def centre(index: np.ndarray) -> np.ndarray:
        # Canvas pixel i covers supersampled pixels i*S .. i*S + S-1; Pillow puts pixel k's
        # centre at coordinate k, so canvas pixel i's centre is at i*S + (S-1)/2.
        return index * SUPERSAMPLE + (SUPERSAMPLE - 1) / 2

    # Pillow's ellipse includes the end pixels of its box, so a box from c - h to c + h is
    # 2h + 1 pixels across: h = (diameter - 1) / 2. tests/test_redraw.py checks the areas
    # (pi w^2 / 4 for one pixel, a round-capped bar for a straight skeleton) within 2 %.
    half = (diameter - 1) / 2
    ys, xs = np.nonzero(skel)
    for cy, cx in zip(centre(ys).tolist(), centre(xs).tolist()):
        pen.ellipse((cx - half, cy - half, cx + half, cy + half), fill=255)
    line_width = max(1, round(diameter))
    padded = np.pad(skel, 1)
    for dy, dx in _FORWARD_NEIGHBOURS:
        neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        y0, x0 = np.nonzero(skel & neighbour)
        for ay, ax, by, bx in zip(
            centre(y0).tolist(), centre(x0).tolist(), centre(y0 + dy).tolist(), centre(x0 + dx).tolist()
        ):
            pen.line(((ax, ay), (bx, by)), fill=255, width=line_width)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32)


def redraw_digit(image28: np.ndarray, pen_widths: tuple[float, ...] = PEN_WIDTHS) -> np.ndarray:
    """One MNIST digit redrawn with each pen width and preprocessed as the page does.

    Args:
        image28: (28, 28) uint8 MNIST digit, 0..255, ink = 255.
        pen_widths: pen widths in canvas pixels.

    Returns:
        (len(pen_widths), 28, 28) float32 in 0..255, ink = 255: ``to_mnist`` of each redrawn
        canvas; all zeros for a digit whose skeleton is empty (``to_mnist`` finds no ink).
    """
    skel = skeleton(image28)
    out = np.zeros((len(pen_widths), MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    if skel.any():
        for i, width in enumerate(pen_widths):
            pixels = to_mnist(redraw(skel, width))
            if pixels is not None:
                out[i] = pixels
    return out


#: The functions whose source is part of the cache key (bound at import, so the key does not
#: change when a test replaces one of them).
_ALGORITHM = (skeleton, _bounding_box, redraw, _draw, redraw_digit)


def _redraw_chunk(task: tuple[np.ndarray, tuple[float, ...]]) -> np.ndarray:
    """Worker: (k, 28, 28) uint8 digits and pen widths -> (k, len(pen_widths), 28, 28) float32."""
    images, pen_widths = task
    return np.stack([redraw_digit(image, pen_widths) for image in images])


def check_images(images) -> np.ndarray:
    """``images`` as an (N, 28, 28) uint8 numpy array (a CPU torch tensor is accepted)."""
    array = np.asarray(images)
    if array.ndim != 3 or array.shape[1:] != (MNIST_SIZE, MNIST_SIZE) or array.dtype != np.uint8:
        raise ValueError(
            f"expected (N, {MNIST_SIZE}, {MNIST_SIZE}) uint8 digits, got shape {array.shape} dtype {array.dtype}"
        )
    return np.ascontiguousarray(array)


@functools.lru_cache(maxsize=1)
def algorithm_digest() -> str:
    """sha256 of what a redrawn set depends on: the source of the functions that compute it
    (here and the whole of mnist_common/preprocess.py), its constants, ``ALGORITHM_VERSION`` and
    the versions of Pillow and scikit-image. Editing anything else in this module (messages,
    caching, the pool) keeps the cache."""
    import inspect

    import PIL
    import skimage

    from mnist_common import preprocess

    digest = hashlib.sha256(Path(preprocess.__file__).read_bytes())
    for function in _ALGORITHM:
        digest.update(inspect.getsource(function).encode())
    settings = (
        ALGORITHM_VERSION,
        CANVAS_SIZE,
        INK_THRESHOLD,
        SUPERSAMPLE,
        _FORWARD_NEIGHBOURS,
        PIL.__version__,
        skimage.__version__,
    )
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, images: np.ndarray, pen_width: float) -> Path:
    """Where the redrawn set of ``images`` with ``pen_width`` is cached.

    The name is ``pen<width>-n<N>-<hash>.npy``, the hash covering the algorithm
    (``algorithm_digest``), the pen width, N and the digits' bytes.
    """
    width = check_pen_width(pen_width)
    digest = hashlib.sha256(f"{algorithm_digest()} pen={width!r} n={len(images)}".encode())
    digest.update(images.tobytes())
    return Path(cache_dir) / f"pen{width:g}-n{len(images)}-{digest.hexdigest()[:16]}.npy"


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    """The cached (n, 28, 28) float32 set at ``path``, or None if missing or unusable."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.shape != (n, MNIST_SIZE, MNIST_SIZE) or array.dtype != np.float32:
        return None
    return array


def _save_cached(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, array, allow_pickle=False)

    write_atomically(path, write)


def default_processes(n: int) -> int:
    """Worker processes for ``n`` digits: one per usable core, none (1) for small sets."""
    if n < MIN_DIGITS_FOR_POOL:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def map_chunks(worker, tasks: list, total: int, desc: str, processes: int, progress: bool) -> list:
    """``[worker(task) for task in tasks]``, over ``processes`` forked worker processes when
    more than 1, with a tqdm bar counting ``len`` of each result up to ``total`` digits."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="digit", disable=not progress, leave=False)
    parts = []
    with bar:
        if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            for task in tasks:
                parts.append(worker(task))
                bar.update(len(parts[-1]))
        else:
            # fork, not spawn: spawn re-runs the caller's main script in every worker, which
            # fails for a script without an ``if __name__ == "__main__"`` guard. The workers use
            # only numpy, Pillow and scikit-image, never torch's thread pools, which fork would
            # not carry over. Leaving the ``with`` (an error, Ctrl-C) terminates the workers.
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for part in pool.imap(worker, tasks):
                    parts.append(part)
                    bar.update(len(part))
    return parts


def _build(images: np.ndarray, pen_widths: tuple[float, ...], processes: int, progress: bool) -> np.ndarray:
    """(N, len(pen_widths), 28, 28) float32: every digit redrawn with every pen width."""
    tasks = [(images[i : i + CHUNK], pen_widths) for i in range(0, len(images), CHUNK)]
    parts = map_chunks(
        _redraw_chunk,
        tasks,
        len(images),
        f"redrawing (pens {', '.join(f'{w:g}' for w in pen_widths)})",
        processes,
        progress,
    )
    if not parts:
        return np.zeros((0, len(pen_widths), MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    return np.concatenate(parts)


def redrawn_sets(
    images,
    pen_widths=PEN_WIDTHS,
    *,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> dict[float, np.ndarray]:
    """Redrawn versions of ``images``, one set per pen width, built once and cached.

    Sets found in ``cache_dir`` are loaded; the others are built together (one skeleton per
    digit serves every width), over ``processes`` worker processes, and then cached.

    Args:
        images: (N, 28, 28) uint8 MNIST digits, 0..255, ink = 255 (numpy, or a CPU tensor).
        pen_widths: pen widths in canvas pixels, each > 0.
        cache_dir: folder of the ``.npy`` cache (created when needed); None: no cache.
        processes: worker processes; None: ``default_processes(N)``; 1: in this process.
        progress: show a tqdm progress bar while building.

    Returns:
        {pen width: (N, 28, 28) float32 in 0..255, ink = 255}, in the order of ``pen_widths``.
        A digit whose skeleton is empty (no pixel reaches ``INK_THRESHOLD``) comes out as all
        zeros, the page's "no prediction"; ``blank_count`` counts them.

    Raises:
        ValueError: ``images`` is not (N, 28, 28) uint8, or a pen width is not positive.
    """
    images = check_images(images)
    widths = tuple(check_pen_width(w) for w in pen_widths)
    results: dict[float, np.ndarray] = {}
    paths = {w: cache_path(cache_dir, images, w) for w in widths} if cache_dir is not None else {}
    for width, path in paths.items():
        cached = _load_cached(path, len(images))
        if cached is not None:
            results[width] = cached
    missing = tuple(w for w in dict.fromkeys(widths) if w not in results)
    if missing:
        started = time.perf_counter()
        workers = processes or default_processes(len(images))
        built = _build(images, missing, workers, progress)
        seconds = time.perf_counter() - started
        if progress:
            blanks = ", ".join(str(blank_count(built[:, i])) for i in range(len(missing)))
            print(
                f"redrew {len(images):,} digits with pens {', '.join(f'{w:g}' for w in missing)} px "
                f"in {seconds:.1f} s ({workers} process{'es' if workers > 1 else ''}; "
                f"blank: {blanks})",
                flush=True,
            )
        for i, width in enumerate(missing):
            results[width] = np.ascontiguousarray(built[:, i])
            if width in paths:
                _save_cached(paths[width], results[width])
    return {w: results[check_pen_width(w)] for w in pen_widths}


def redrawn_set(
    images,
    pen_width: float,
    *,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``images`` redrawn with one pen width: (N, 28, 28) float32 in 0..255, ink = 255.

    See ``redrawn_sets`` for the arguments, caching and blank digits (all zeros).
    """
    return redrawn_sets(images, (pen_width,), cache_dir=cache_dir, processes=processes, progress=progress)[pen_width]


def blank_mask(redrawn: np.ndarray) -> np.ndarray:
    """(N,) bool: which of the (N, 28, 28) redrawn digits are blank (all zeros: no prediction on
    the page)."""
    return np.asarray(redrawn).reshape(len(redrawn), -1).max(axis=1, initial=0) == 0


def blank_count(redrawn: np.ndarray) -> int:
    """How many of the (N, 28, 28) redrawn digits are blank (``blank_mask``)."""
    return int(blank_mask(redrawn).sum())


#: Pen widths of the redrawn *training* digits (``training_redrawn``), in canvas pixels: from the
#: thinnest redrawn test pen to the fattest, a digit each in turn.
TRAINING_PEN_WIDTHS = (8, 10, 12, 14, 17, 20, 24, 28)


def training_redrawn(
    images,
    labels,
    *,
    pen_widths: tuple[float, ...] = TRAINING_PEN_WIDTHS,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST *training* digits redrawn with the page's kind of pen, to train on: what a digit
    drawn on the page looks like after ``to_mnist`` (constant stroke width, round caps), which
    the ``draw`` augmentation only approximates.

    Digit i is redrawn with ``pen_widths[i % len(pen_widths)]``; each width's digits are built
    and cached as one ``redrawn_set``. Digits whose skeleton is empty are left out.

    Args:
        images: (N, 28, 28) uint8 MNIST training digits, 0..255, ink = 255. Never the held-out
            validation images or the test set: the redrawn test sets are built from the latter.
        labels: (N,) int labels 0..9.
        pen_widths, cache_dir, processes, progress: as for ``redrawn_sets``.

    Returns:
        images (M, 28, 28) uint8, ink = 255, M <= N; their labels (M,) int64.

    Raises:
        ValueError: ``images`` is not (N, 28, 28) uint8, ``labels`` is not (N,), or a pen width
            is not positive.
    """
    images = check_images(images)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"expected ({len(images)},) labels, got shape {labels.shape}")
    out = np.zeros(images.shape, dtype=np.float32)
    for k, width in enumerate(pen_widths):
        group = slice(k, None, len(pen_widths))
        out[group] = redrawn_set(images[group], width, cache_dir=cache_dir, processes=processes, progress=progress)
    kept = ~blank_mask(out)
    return np.clip(np.rint(out[kept]), 0, 255).astype(np.uint8), labels[kept]


# --- the adverse pen ----------------------------------------------------------------------------
#
# The page's "challenge: adverse pen" (web/pen.js): its width and colour change along the stroke,
# and a colour's ink is 255 - its BT.601 luma (light, cold colours give faint strokes). The
# ``redrawn_adverse`` test set draws every test digit's skeleton, traced into ordered strokes,
# with that pen. The constants and the pen's functions below are twins of web/pen.js's;
# tests/test_redraw.py compares the constants with the file and the pen's values with Node.

#: Narrowest and widest adverse pen, in canvas pixels (``ADVERSE_MIN_WIDTH``, ``ADVERSE_MAX_WIDTH``).
ADVERSE_MIN_WIDTH = 8
ADVERSE_MAX_WIDTH = 32
#: Stroke length between two random widths, in canvas pixels (``WIDTH_KNOT_PX``).
WIDTH_KNOT_PX = 24
#: Stroke length drawn in one colour, in canvas pixels (``COLOUR_RUN_PX``).
COLOUR_RUN_PX = 40
#: Longest piece of stroke drawn with one width and colour, in canvas pixels (``PIECE_PX``).
PIECE_PX = 4
#: The adverse pen's colours, "#rrggbb", dark to light (``ADVERSE_PALETTE``).
ADVERSE_PALETTE = (
    "#000000",
    "#1a237e",
    "#b71c1c",
    "#2e7d32",
    "#e91e63",
    "#00bcd4",
    "#ff9800",
    "#4fc3f7",
    "#80deea",
    "#b3e5fc",
)
#: Hash streams of the pen's random numbers (``WIDTH_STREAM``, ``COLOUR_STREAM``).
WIDTH_STREAM = 1
COLOUR_STREAM = 2
#: Pen seed of the adverse set's first digit: digit i of the test split is drawn with seed
#: ``ADVERSE_SEED + i``, so the first N digits of a ``--limit N`` run are drawn as in a full run.
ADVERSE_SEED = 1729

_MASK32 = 0xFFFFFFFF
#: The 8 neighbour offsets (dy, dx), in the order the tracer tries them.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def hash32(x: int) -> int:
    """web/pen.js's ``hash32`` (Chris Wellons' "lowbias32"): an int taken modulo 2^32 -> an
    int in 0 .. 2^32 - 1."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def uniform(seed: int, stream: int, k: int) -> float:
    """web/pen.js's ``uniform``: the k-th random number of a stream of a seed, in [0, 1)."""
    return hash32(hash32(hash32(seed) + stream) + k) / 4294967296


def _check_seed(seed) -> int:
    """``seed`` as an int, or ValueError unless it is an integer in 0 .. 2^32 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= _MASK32:
        raise ValueError(f"pen seed must be an integer in 0..2^32-1, got {seed!r}")
    return int(seed)


def adverse_width(seed: int, distance: float) -> float:
    """web/pen.js's ``adverseWidth``: the pen's diameter in canvas pixels, in
    [ADVERSE_MIN_WIDTH, ADVERSE_MAX_WIDTH], after ``distance`` canvas pixels of stroke (random
    knots every WIDTH_KNOT_PX, smoothstep in between; the same float operations as the JS)."""
    position = distance / WIDTH_KNOT_PX
    k = math.floor(position)
    t = position - k
    s = t * t * (3 - 2 * t)
    span = ADVERSE_MAX_WIDTH - ADVERSE_MIN_WIDTH
    a = ADVERSE_MIN_WIDTH + span * uniform(seed, WIDTH_STREAM, k)
    b = ADVERSE_MIN_WIDTH + span * uniform(seed, WIDTH_STREAM, k + 1)
    return a + (b - a) * s


def adverse_colour_index(seed: int, run: int) -> int:
    """web/pen.js's ``adverseColourIndex``: the palette index of colour run ``run`` (>= 0);
    each run has another colour than the run before."""
    indices = _colour_runs(seed)  # the walk's indices so far, extended as far as needed
    n = len(ADVERSE_PALETTE)
    if not indices:
        indices.append(math.floor(uniform(seed, COLOUR_STREAM, 0) * n))
    for r in range(len(indices), run + 1):
        indices.append((indices[-1] + 1 + math.floor(uniform(seed, COLOUR_STREAM, r) * (n - 1))) % n)
    return indices[run]


@functools.lru_cache(maxsize=64)
def _colour_runs(seed: int) -> list[int]:
    """The palette indices of ``seed``'s colour runs computed so far (``adverse_colour_index``
    extends the list): a redrawn digit asks for run after run, so each is computed once."""
    return []


def adverse_at(seed: int, distance: float) -> tuple[float, str]:
    """web/pen.js's ``adverseAt``: the adverse pen after ``distance`` canvas pixels of stroke.

    Args:
        seed: integer 0 .. 2^32 - 1.
        distance: canvas pixels drawn so far, finite and >= 0.

    Returns:
        (diameter in canvas pixels, colour "#rrggbb" from ``ADVERSE_PALETTE``).

    Raises:
        ValueError: a bad seed or distance.
    """
    seed = _check_seed(seed)
    if not (isinstance(distance, (int, float, np.floating, np.integer)) and math.isfinite(distance) and distance >= 0):
        raise ValueError(f"pen distance must be a finite number >= 0, got {distance!r}")
    distance = float(distance)
    return (
        adverse_width(seed, distance),
        ADVERSE_PALETTE[adverse_colour_index(seed, math.floor(distance / COLOUR_RUN_PX))],
    )


def ink_of_colour(colour: str) -> float:
    """web/pen.js's ``inkOfColour``: the ink of an opaque "#rrggbb" on white paper, 255 - its
    BT.601 luma (``mnist_common.preprocess.LUMA_WEIGHTS``), in 0..255, not rounded.

    Raises:
        ValueError: ``colour`` is not "#" and six hex digits.
    """
    from mnist_common.preprocess import LUMA_WEIGHTS

    if not (
        isinstance(colour, str)
        and len(colour) == 7
        and colour[0] == "#"
        and all(c in "0123456789abcdefABCDEF" for c in colour[1:])
    ):
        raise ValueError(f'expected a colour "#rrggbb", got {colour!r}')
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    luma = LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue
    return 255 * (255 - luma) / 255


def trace_strokes(skel: np.ndarray) -> list[np.ndarray]:
    """A skeleton as ordered strokes, the way a pen could draw it.

    The skeleton pixels are a graph (8-neighbours; a diagonal step is left out where a pixel
    at its corner already joins the two). Strokes are walked until every edge is drawn once:
    each starts at the topmost (then leftmost) pixel with an odd number of undrawn edges (an
    end or a junction), or with any undrawn edge when there is none (a loop such as a 0), and
    goes on along undrawn edges, at each pixel taking the one straightest ahead (the direction
    of the last 4 steps), until it reaches a pixel with none. Pixels with no neighbour at all
    come last, as one-pixel strokes (dots).

    Args:
        skel: (H, W) bool skeleton, as from ``skeleton``.

    Returns:
        the strokes in drawing order, each an (L, 2) int64 array of (row, column) pixels, L >= 1,
        consecutive pixels 8-neighbours. Empty for an empty skeleton.
    """
    skel = np.asarray(skel, dtype=bool)
    ys, xs = np.nonzero(skel)  # row-major: topmost, then leftmost first
    pixels = list(zip(ys.tolist(), xs.tolist()))
    present = set(pixels)
    adjacency = {}
    for y, x in pixels:
        adjacency[(y, x)] = [
            (y + dy, x + dx)
            for dy, dx in _NEIGHBOURS
            if (y + dy, x + dx) in present and not (dy and dx and ((y + dy, x) in present or (y, x + dx) in present))
        ]
    drawn: set[tuple] = set()
    degree = {p: len(near) for p, near in adjacency.items()}  # undrawn edges per pixel

    def undrawn(p):
        return [q for q in adjacency[p] if (min(p, q), max(p, q)) not in drawn]

    strokes = []
    while True:
        free = [p for p in pixels if degree[p]]
        if not free:
            break
        odd = [p for p in free if degree[p] % 2 == 1]
        path = [(odd or free)[0]]
        while options := undrawn(path[-1]):
            p = path[-1]
            back = path[max(0, len(path) - 5)]
            ahead = (p[0] - back[0], p[1] - back[1])
            # The undrawn edge straightest ahead (largest cosine); the first one when starting.
            q = max(
                options,
                key=lambda q: (
                    ((q[0] - p[0]) * ahead[0] + (q[1] - p[1]) * ahead[1]) / math.hypot(q[0] - p[0], q[1] - p[1])
                ),
            )
            drawn.add((min(p, q), max(p, q)))
            degree[p] -= 1
            degree[q] -= 1
            path.append(q)
        strokes.append(np.array(path, dtype=np.int64))
    strokes += [np.array([p], dtype=np.int64) for p in pixels if not adjacency[p]]
    return strokes


def redraw_adverse(skel: np.ndarray, seed: int) -> np.ndarray:
    """Draw a skeleton with the page's adverse pen on a blank canvas, anti-aliased.

    As the page draws a stroke: the strokes of ``trace_strokes`` in order, each in pieces of at
    most ``PIECE_PX`` canvas pixels along the skeleton; a piece is a round-capped line from its
    first to its last pixel, with the width and colour of ``adverse_at(seed, distance)`` at the
    distance drawn before it (counted over all the strokes), its ink that colour's on white
    (``ink_of_colour``). A later piece covers an earlier one where they overlap (an opaque
    colour painted over another on the canvas). Drawn at ``SUPERSAMPLE`` times the resolution,
    then box-averaged.

    Args:
        skel: (280, 280) bool skeleton, as from ``skeleton``.
        seed: the pen's seed, integer 0 .. 2^32 - 1.

    Returns:
        (280, 280) float32 in 0..255, ink = 255, background = 0. All zeros for an empty skeleton.

    Raises:
        ValueError: ``skel`` is not (280, 280), or a bad seed.
    """
    seed = _check_seed(seed)
    return _draw_in_box(skel, ADVERSE_MAX_WIDTH, lambda region: _draw_adverse(region, seed))


def _draw_adverse(skel: np.ndarray, seed: int) -> np.ndarray:
    """``redraw_adverse`` on a region: (H, W) bool skeleton -> (H, W) float32 ink, 0..255.

    Every piece is drawn into an int32 label image with its own label (a later piece
    overwrites), and the labels are then mapped to their pieces' ink and box-averaged."""
    height, width = skel.shape
    labels = Image.new("I", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    pen = ImageDraw.Draw(labels)
    inks = [0.0]  # label 0: paper

    def centre(index: int) -> float:  # as in _draw: canvas pixel i's centre, supersampled
        return index * SUPERSAMPLE + (SUPERSAMPLE - 1) / 2

    def piece(start, end, distance: float) -> None:
        diameter, colour = adverse_at(seed, distance)
        diameter *= SUPERSAMPLE
        inks.append(ink_of_colour(colour))
        label = len(inks) - 1
        half = (diameter - 1) / 2  # as in _draw: Pillow's ellipse box includes its end pixels
        (ay, ax), (by, bx) = (centre(v) for v in start), (centre(v) for v in end)
        for cy, cx in ((ay, ax), (by, bx)):
            pen.ellipse((cx - half, cy - half, cx + half, cy + half), fill=label)
        if (ay, ax) != (by, bx):
            pen.line(((ax, ay), (bx, by)), fill=label, width=max(1, round(diameter)))

    distance = 0.0
    for stroke in trace_strokes(skel):
        points = stroke.tolist()
        if len(points) == 1:
            piece(points[0], points[0], distance)
            continue
        steps = np.hypot(*np.diff(stroke, axis=0).T).tolist()  # 1 or sqrt(2) px each
        i = 0
        while i < len(steps):
            j, length = i + 1, steps[i]
            while j < len(steps) and length + steps[j] <= PIECE_PX:
                length += steps[j]
                j += 1
            piece(points[i], points[j], distance)
            distance += length
            i = j
    ink = np.asarray(inks, dtype=np.float64)[np.asarray(labels, dtype=np.int32)]
    ink = ink.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))
    return ink.astype(np.float32)


def redraw_adverse_digit(image28: np.ndarray, seed: int) -> np.ndarray:
    """One MNIST digit redrawn with the adverse pen and preprocessed as the page does.

    Args:
        image28: (28, 28) uint8 MNIST digit, 0..255, ink = 255.
        seed: the pen's seed, integer 0 .. 2^32 - 1.

    Returns:
        (28, 28) float32 in 0..255, ink = 255: ``to_mnist`` of the redrawn canvas; all zeros
        for a digit whose skeleton is empty.

    Raises:
        ValueError: ``image28`` is not a (28, 28) uint8 array, or a bad seed.
    """
    skel = skeleton(image28)
    pixels = to_mnist(redraw_adverse(skel, seed)) if skel.any() else None
    return pixels if pixels is not None else np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)


#: The functions whose source is part of the adverse set's cache key (besides ``_ALGORITHM``'s).
_ADVERSE_ALGORITHM = (
    hash32,
    uniform,
    adverse_width,
    adverse_colour_index,
    adverse_at,
    ink_of_colour,
    trace_strokes,
    redraw_adverse,
    _draw_adverse,
    redraw_adverse_digit,
)


def _adverse_chunk(task: tuple[np.ndarray, int]) -> np.ndarray:
    """Worker: ((k, 28, 28) uint8 digits, seed of the first) -> (k, 28, 28) float32."""
    images, first_seed = task
    return np.stack([redraw_adverse_digit(image, (first_seed + i) & _MASK32) for i, image in enumerate(images)])


def adverse_cache_path(cache_dir: Path, images: np.ndarray, seed: int) -> Path:
    """Where the adverse-pen set of ``images`` drawn from ``seed`` is cached:
    ``adverse-seed<seed>-n<N>-<hash>.npy``, the hash covering ``algorithm_digest``, the adverse
    pen's functions and constants, the seed, N and the digits' bytes."""
    import inspect

    digest = hashlib.sha256(f"{algorithm_digest()} adverse seed={seed} n={len(images)}".encode())
    for function in _ADVERSE_ALGORITHM:
        digest.update(inspect.getsource(function).encode())
    from mnist_common.preprocess import LUMA_WEIGHTS

    digest.update(
        repr(
            (
                ADVERSE_MIN_WIDTH,
                ADVERSE_MAX_WIDTH,
                WIDTH_KNOT_PX,
                COLOUR_RUN_PX,
                PIECE_PX,
                ADVERSE_PALETTE,
                WIDTH_STREAM,
                COLOUR_STREAM,
                _NEIGHBOURS,
                LUMA_WEIGHTS,
            )
        ).encode()
    )
    digest.update(images.tobytes())
    return Path(cache_dir) / f"adverse-seed{seed}-n{len(images)}-{digest.hexdigest()[:16]}.npy"


def adverse_set(
    images,
    seed: int = ADVERSE_SEED,
    *,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    processes: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``images`` redrawn with the page's adverse pen, built once and cached.

    Digit i is drawn with pen seed ``seed + i`` (modulo 2^32): the set of the first N digits is
    the first N of the full set's.

    Args:
        images: (N, 28, 28) uint8 MNIST digits, 0..255, ink = 255 (numpy, or a CPU tensor).
        seed: pen seed of the first digit, integer 0 .. 2^32 - 1.
        cache_dir: folder of the ``.npy`` cache (created when needed); None: no cache.
        processes: worker processes; None: ``default_processes(N)``; 1: in this process.
        progress: show a tqdm progress bar and a line of timing while building.

    Returns:
        (N, 28, 28) float32 in 0..255, ink = 255; a digit with an empty skeleton is all zeros.

    Raises:
        ValueError: ``images`` is not (N, 28, 28) uint8, or a bad seed.
    """
    images = check_images(images)
    seed = _check_seed(seed)
    path = adverse_cache_path(cache_dir, images, seed) if cache_dir is not None else None
    if path is not None and (cached := _load_cached(path, len(images))) is not None:
        return cached
    started = time.perf_counter()
    workers = processes or default_processes(len(images))
    tasks = [(images[i : i + CHUNK], (seed + i) & _MASK32) for i in range(0, len(images), CHUNK)]
    parts = map_chunks(_adverse_chunk, tasks, len(images), "redrawing (adverse pen)", workers, progress)
    built = np.concatenate(parts) if parts else np.zeros((0, MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    if progress:
        print(
            f"redrew {len(images):,} digits with the adverse pen in {time.perf_counter() - started:.1f} s "
            f"({workers} process{'es' if workers > 1 else ''}; blank: {blank_count(built)})",
            flush=True,
        )
    if path is not None:
        _save_cached(path, built)
    return built
