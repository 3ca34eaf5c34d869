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
3. passed through the page's own preprocessing, ``trainer.preprocess.to_mnist`` (the Python
   twin of web/preprocess.js), which gives the model's 28x28 input.

Convention everywhere: grey values 0..255, ink = 255, background = 0, row-major (H, W).

Building takes about 1.5 ms of CPU per digit for the skeleton and 5 ms per digit and pen width
for drawing and preprocessing, so ``redrawn_sets`` spreads the digits over the CPU cores (one
skeleton per digit serves every pen width) and caches each built set as a ``.npy`` file under
``data/redrawn/``, keyed by a hash of everything that determines it.
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

from .data import DEFAULT_DATA_DIR
from .export import write_atomically
from .preprocess import MNIST_SIZE, to_mnist

#: Side of the page's drawing canvas in pixels: mirrors ``<canvas id="draw" width="280"
#: height="280">`` in web/index.html (tests/test_redraw.py checks that they agree).
CANVAS_SIZE = 280
#: Pen width of the page, in canvas pixels: mirrors ``PEN_WIDTH`` in web/app.js (its
#: ``ctx.lineWidth``, round caps and joints), checked by tests/test_redraw.py.
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
#: for a reason the key does not see (a helper outside ``_algorithm_digest``'s list).
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
    return (slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)))


def _check_pen_width(pen_width: float) -> float:
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
    skel = np.asarray(skel, dtype=bool)
    if skel.shape != (CANVAS_SIZE, CANVAS_SIZE):
        raise ValueError(f"expected a ({CANVAS_SIZE}, {CANVAS_SIZE}) skeleton, got shape {skel.shape}")
    width = _check_pen_width(pen_width)
    out = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.float32)
    # Only the skeleton's box, widened by the pen's radius, can get ink: draw just that part.
    box = _bounding_box(skel, margin=math.ceil(width / 2) + 1)
    if box is not None:
        out[box] = _draw(skel[box], width)
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
        for ay, ax, by, bx in zip(centre(y0).tolist(), centre(x0).tolist(),
                                  centre(y0 + dy).tolist(), centre(x0 + dx).tolist()):
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


def _check_images(images) -> np.ndarray:
    """``images`` as an (N, 28, 28) uint8 numpy array (a CPU torch tensor is accepted)."""
    array = np.asarray(images)
    if array.ndim != 3 or array.shape[1:] != (MNIST_SIZE, MNIST_SIZE) or array.dtype != np.uint8:
        raise ValueError(
            f"expected (N, {MNIST_SIZE}, {MNIST_SIZE}) uint8 digits, got shape {array.shape} dtype {array.dtype}"
        )
    return np.ascontiguousarray(array)


@functools.lru_cache(maxsize=1)
def _algorithm_digest() -> str:
    """sha256 of what a redrawn set depends on: the source of the functions that compute it
    (here and the whole of trainer/preprocess.py), its constants, ``ALGORITHM_VERSION`` and
    the versions of Pillow and scikit-image. Editing anything else in this module (messages,
    caching, the pool) keeps the cache."""
    import inspect

    import PIL
    import skimage

    from . import preprocess

    digest = hashlib.sha256(Path(preprocess.__file__).read_bytes())
    for function in _ALGORITHM:
        digest.update(inspect.getsource(function).encode())
    settings = (ALGORITHM_VERSION, CANVAS_SIZE, INK_THRESHOLD, SUPERSAMPLE, _FORWARD_NEIGHBOURS,
                PIL.__version__, skimage.__version__)
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, images: np.ndarray, pen_width: float) -> Path:
    """Where the redrawn set of ``images`` with ``pen_width`` is cached.

    The name is ``pen<width>-n<N>-<hash>.npy``, the hash covering the algorithm
    (``_algorithm_digest``), the pen width, N and the digits' bytes.
    """
    width = _check_pen_width(pen_width)
    digest = hashlib.sha256(f"{_algorithm_digest()} pen={width!r} n={len(images)}".encode())
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


def _build(images: np.ndarray, pen_widths: tuple[float, ...], processes: int, progress: bool) -> np.ndarray:
    """(N, len(pen_widths), 28, 28) float32: every digit redrawn with every pen width."""
    from tqdm import tqdm

    tasks = [(images[i : i + CHUNK], pen_widths) for i in range(0, len(images), CHUNK)]
    bar = tqdm(total=len(images), desc=f"redrawing (pens {', '.join(f'{w:g}' for w in pen_widths)})",
               unit="digit", disable=not progress, leave=False)
    parts = []
    with bar:
        if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            for task in tasks:
                parts.append(_redraw_chunk(task))
                bar.update(len(parts[-1]))
        else:
            # fork, not spawn: spawn re-runs the caller's main script in every worker, which
            # fails for a script without an ``if __name__ == "__main__"`` guard. The workers use
            # only numpy, Pillow and scikit-image, never torch's thread pools, which fork would
            # not carry over. Leaving the ``with`` (an error, Ctrl-C) terminates the workers.
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for part in pool.imap(_redraw_chunk, tasks):
                    parts.append(part)
                    bar.update(len(part))
    if not parts:
        return np.zeros((0, len(pen_widths), MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    return np.concatenate(parts)


def redrawn_sets(images, pen_widths=PEN_WIDTHS, *, cache_dir: Path | None = DEFAULT_CACHE_DIR,
                 processes: int | None = None, progress: bool = True) -> dict[float, np.ndarray]:
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
    images = _check_images(images)
    widths = tuple(_check_pen_width(w) for w in pen_widths)
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
            print(f"redrew {len(images):,} digits with pens {', '.join(f'{w:g}' for w in missing)} px "
                  f"in {seconds:.1f} s ({workers} process{'es' if workers > 1 else ''}; "
                  f"blank: {blanks})", flush=True)
        for i, width in enumerate(missing):
            results[width] = np.ascontiguousarray(built[:, i])
            if width in paths:
                _save_cached(paths[width], results[width])
    return {w: results[_check_pen_width(w)] for w in pen_widths}


def redrawn_set(images, pen_width: float, *, cache_dir: Path | None = DEFAULT_CACHE_DIR,
                processes: int | None = None, progress: bool = True) -> np.ndarray:
    """``images`` redrawn with one pen width: (N, 28, 28) float32 in 0..255, ink = 255.

    See ``redrawn_sets`` for the arguments, caching and blank digits (all zeros).
    """
    return redrawn_sets(images, (pen_width,), cache_dir=cache_dir, processes=processes,
                        progress=progress)[pen_width]


def blank_count(redrawn: np.ndarray) -> int:
    """How many of the (N, 28, 28) redrawn digits are blank (all zeros: no prediction on the page)."""
    return int((np.asarray(redrawn).reshape(len(redrawn), -1).max(axis=1, initial=0) == 0).sum())
