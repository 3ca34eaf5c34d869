"""trainer/synthetic/redraw.py: MNIST test digits reduced to strokes and redrawn with the page's pen."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch
from skimage.morphology import skeletonize

from tests.conftest import ROOT
from trainer.model import normalize
from trainer.synthetic import redraw
from trainer.synthetic.redraw import (
    CANVAS_SIZE,
    PAGE_PEN_WIDTH,
    PEN_WIDTHS,
    blank_count,
    redraw_digit,
    redrawn_set,
    redrawn_sets,
    skeleton,
    training_redrawn,
)

#: Digits the accuracy tests redraw (about 20 ms each for all four pens).
N_DIGITS = 300
#: Accuracy floor on the first 300 test digits per pen width. The committed model (2026-11,
#: 99.67 % clean) makes 3 / 3 / 1 / 1 errors (99.0 / 99.0 / 99.7 / 99.7 % at pens 8 / 14 / 20 /
#: 28); the floors allow 6 errors at pens 20 and 28 and 9 at the others. The sets are
#: deterministic, so only a new model moves these numbers.
MIN_ACCURACY = {8: 0.97, 14: 0.97, 20: 0.98, 28: 0.98}


@pytest.fixture(scope="module")
def digits(mnist_test):
    """The first N_DIGITS test digits (N, 28, 28) uint8 and their labels (N,) int64."""
    return mnist_test.images[:N_DIGITS].numpy(), mnist_test.labels[:N_DIGITS]


@pytest.fixture(scope="module")
def redrawn(digits):
    """{pen width: (N, 28, 28) float32} for the first N_DIGITS, built here (no cache)."""
    started = time.perf_counter()
    sets = redrawn_sets(digits[0], PEN_WIDTHS, cache_dir=None, processes=1, progress=False)
    seconds = time.perf_counter() - started
    print(
        f"\nredrew {N_DIGITS} digits x {len(PEN_WIDTHS)} pens in {seconds:.1f} s "
        f"({seconds / N_DIGITS / len(PEN_WIDTHS) * 1e3:.1f} ms per digit and pen, one process)"
    )
    return sets


PEN_JS = ROOT / "web" / "pen.js"


def js_number(name: str) -> float:
    """The value of ``export const NAME = <number>;`` in web/pen.js."""
    match = re.search(rf"export const {name} = (\d+(?:\.\d+)?);", PEN_JS.read_text())
    assert match, f"web/pen.js no longer exports {name} as a number"
    return float(match.group(1))


def js_array(name: str) -> str:
    """The text between the brackets of ``export const NAME = [ ... ];`` in web/pen.js."""
    match = re.search(rf"export const {name} = \[(.*?)\];", PEN_JS.read_text(), re.S)
    assert match, f"web/pen.js no longer exports the array {name}"
    return match.group(1)


def test_constants_mirror_the_page():
    """CANVAS_SIZE and PAGE_PEN_WIDTH are copies of web/index.html's canvas and web/pen.js's
    normal pen (which web/app.js draws with)."""
    html = (ROOT / "web" / "index.html").read_text()
    canvas = re.search(r'<canvas[^>]*id="draw"[^>]*>', html).group(0)
    assert f'width="{CANVAS_SIZE}"' in canvas and f'height="{CANVAS_SIZE}"' in canvas, canvas
    pen = PEN_JS.read_text()
    assert js_number("PEN_WIDTH") == PAGE_PEN_WIDTH
    assert "width: PEN_WIDTH" in pen and "ctx.lineWidth = width" in pen and 'ctx.lineCap = "round"' in pen
    assert 'PEN_COLOUR = "#000000"' in pen, "the normal pen is black: full ink"
    app = (ROOT / "web" / "app.js").read_text()
    assert re.search(r'import \{[^}]*\bcreatePen\b[^}]*\} from "\./pen\.js"', app), "the page draws with pen.js"
    assert "pen.move(ctx" in app and "pen.down(ctx" in app
    assert PAGE_PEN_WIDTH in PEN_WIDTHS


def test_adverse_pen_constants_mirror_pen_js():
    """Every constant of the adverse pen and the luma weights: the Python twins equal web/pen.js's."""
    from mnist_common.preprocess import LUMA_WEIGHTS

    for name in (
        "ADVERSE_MIN_WIDTH",
        "ADVERSE_MAX_WIDTH",
        "WIDTH_KNOT_PX",
        "COLOUR_RUN_PX",
        "PIECE_PX",
        "WIDTH_STREAM",
        "COLOUR_STREAM",
    ):
        assert js_number(name) == getattr(redraw, name), name
    palette = tuple(re.findall(r'"(#[0-9a-fA-F]{6})"', js_array("ADVERSE_PALETTE")))
    assert palette == redraw.ADVERSE_PALETTE
    weights = tuple(float(w) for w in js_array("LUMA_WEIGHTS").split(","))
    assert weights == LUMA_WEIGHTS == (0.299, 0.587, 0.114)


#: In Node: web/pen.js's hash, pen and inks for the seeds and distances given in argv (JSON).
PEN_NODE = """
import { readFileSync } from "node:fs";
const [source, argsJson] = process.argv.slice(-2);
const pen = await import("data:text/javascript," + encodeURIComponent(readFileSync(source, "utf8")));
const { seeds, distances, ints } = JSON.parse(argsJson);
console.log(JSON.stringify({
  hashes: ints.map((x) => pen.hash32(x)),
  states: seeds.map((seed) => distances.map((d) => pen.adverseAt(seed, d))),
  inks: pen.ADVERSE_PALETTE.map((colour) => pen.inkOfColour(colour)),
}));
"""


def test_adverse_pen_values_match_pen_js_in_node():
    """The Python pen (hash, width walk, colour walk, colour -> ink) gives exactly web/pen.js's
    numbers, run by Node: no drift in the algorithm either."""
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    assert node, "node is needed (npm installs the build tools)"
    seeds = [0, 1, redraw.ADVERSE_SEED, redraw.ADVERSE_SEED + 9999, 2**32 - 1]
    distances = [0, 0.5, 3.999, 4, 23.9, 24, 39.99, 40, 41.5, 100, 777.7, 1999.25]
    ints = [0, 1, 2, 255, 65536, 2**31, 2**32 - 1, 2**32 + 5, 123456789]
    run = subprocess.run(
        [
            node,
            "--input-type=module",
            "-e",
            PEN_NODE,
            str(PEN_JS),
            json.dumps({"seeds": seeds, "distances": distances, "ints": ints}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    js = json.loads(run.stdout)
    assert js["hashes"] == [redraw.hash32(x) for x in ints]
    for seed, states in zip(seeds, js["states"], strict=True):
        for distance, state in zip(distances, states, strict=True):
            assert (state["width"], state["colour"]) == redraw.adverse_at(seed, distance), (seed, distance)
    assert js["inks"] == [redraw.ink_of_colour(c) for c in redraw.ADVERSE_PALETTE]


def test_skeleton_is_thin_and_inside_the_strokes(digits):
    for image in digits[0][:100]:
        skel = skeleton(image)
        assert skel.shape == (CANVAS_SIZE, CANVAS_SIZE) and skel.dtype == bool
        assert skel.any(), "a non-blank digit has a skeleton"
        # 1 px wide: thinning it again removes nothing, and a 2x2 block of skeleton occurs only
        # where strokes cross (one such junction cannot be thinned without cutting a stroke).
        np.testing.assert_array_equal(skeletonize(skel), skel)
        assert (skel[:-1, :-1] & skel[1:, :-1] & skel[:-1, 1:] & skel[1:, 1:]).sum() <= 2
        # Far fewer pixels than the strokes it comes from (MNIST strokes are 2-3 px = 20-30
        # canvas px wide).
        assert skel.sum() < (image > 0).sum() * redraw.UPSCALE**2 / 10
        # Its pixels lie within the upscaled digit's ink (footprint of the 28x28 digit, x10).
        footprint = np.kron(image > 0, np.ones((redraw.UPSCALE, redraw.UPSCALE), bool))
        footprint = footprint | np.roll(footprint, 1, 0) | np.roll(footprint, -1, 0)
        footprint = footprint | np.roll(footprint, 1, 1) | np.roll(footprint, -1, 1)
        assert not (skel & ~footprint).any()


def test_blank_digit_gives_no_skeleton_and_zeros():
    blank = np.zeros((28, 28), np.uint8)
    assert not skeleton(blank).any()
    assert not redraw_digit(blank).any()
    images = np.stack([blank, np.full((28, 28), 10, np.uint8)])  # too faint to reach the threshold
    sets = redrawn_sets(images, PEN_WIDTHS, cache_dir=None, progress=False)
    for array in sets.values():
        assert array.shape == (2, 28, 28) and not array.any()
        assert blank_count(array) == 2


@pytest.mark.parametrize("pen_width", [8, 14, 20, 28, 7.5])
def test_pen_is_round_with_the_given_diameter(pen_width):
    """One skeleton pixel gives a disk of area pi w^2 / 4; a straight skeleton a round-capped
    bar (L - 1) w + pi w^2 / 4; both centred on the skeleton pixels' centres."""
    dot = np.zeros((CANVAS_SIZE, CANVAS_SIZE), bool)
    dot[140, 140] = True
    canvas = redraw.redraw(dot, pen_width)
    assert canvas.dtype == np.float32 and canvas.min() >= 0 and canvas.max() == 255
    assert canvas.sum() / 255 == pytest.approx(math.pi * pen_width**2 / 4, rel=0.02)
    centre = (canvas.sum(axis=1) @ (np.arange(CANVAS_SIZE) + 0.5)) / canvas.sum()
    assert centre == pytest.approx(140.5, abs=0.05)
    horizontal = np.zeros_like(dot)
    horizontal[140, 100:180] = True  # 80 pixels: centres 79 px apart
    diagonal = np.zeros_like(dot)
    diagonal[np.arange(100, 160), np.arange(100, 160)] = True  # 60 pixels: 59 * sqrt(2) px
    for bar, length in ((horizontal, 79), (diagonal, 59 * math.sqrt(2))):
        area = redraw.redraw(bar, pen_width).sum() / 255
        assert area == pytest.approx(length * pen_width + math.pi * pen_width**2 / 4, rel=0.02)


def test_strokes_get_wider_with_the_pen(digits, redrawn):
    canvases = [[redraw.redraw(skeleton(image), w).sum() for w in PEN_WIDTHS] for image in digits[0][:20]]
    assert all(np.all(np.diff(masses) > 0) for masses in canvases), "ink on the canvas grows with the pen"
    mean_mass = [redrawn[w].sum(axis=(1, 2)).mean() / 255 for w in PEN_WIDTHS]
    mnist_mass = digits[0].astype(np.float64).sum(axis=(1, 2)).mean() / 255
    print(
        "mean ink mass, 28x28 px of full ink:",
        {w: round(float(m), 1) for w, m in zip(PEN_WIDTHS, mean_mass)},
        f"MNIST {mnist_mass:.1f}",
    )
    assert np.all(np.diff(mean_mass) > 0)
    per_digit = np.stack([redrawn[w].sum(axis=(1, 2)) for w in PEN_WIDTHS], axis=1)
    assert (np.diff(per_digit, axis=1) > 0).all(axis=1).mean() >= 0.98


def test_output_is_mnist_shaped(redrawn):
    for width, images in redrawn.items():
        assert images.shape == (N_DIGITS, 28, 28) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 255
        assert blank_count(images) == 0
        for image in images:
            rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
            assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20, f"pen {width}: longer side is 20 px"
            mass = image.sum()
            centre_y = image.sum(axis=1) @ (np.arange(28) + 0.5) / mass
            centre_x = image.sum(axis=0) @ (np.arange(28) + 0.5) / mass
            assert abs(centre_y - 14) <= 0.5 and abs(centre_x - 14) <= 0.5, (width, centre_y, centre_x)


def test_redrawn_digits_are_classified_well(model, digits, redrawn):
    labels = digits[1]
    accuracy = {}
    with torch.no_grad():
        for width, images in redrawn.items():
            predicted = model(normalize(torch.from_numpy(images).unsqueeze(1))).argmax(dim=1)
            accuracy[width] = (predicted == labels).float().mean().item()
    print(
        f"accuracy on the first {N_DIGITS} test digits redrawn, per pen width (px):",
        {w: f"{a:.2%}" for w, a in accuracy.items()},
        f"(page's pen: {PAGE_PEN_WIDTH})",
    )
    for width, value in accuracy.items():
        assert value >= MIN_ACCURACY[width], f"pen {width}: {value:.2%} < {MIN_ACCURACY[width]:.0%}"


def test_cache_is_used_the_second_time(digits, tmp_path, monkeypatch):
    images = digits[0][:40]
    started = time.perf_counter()
    first = redrawn_set(images, PAGE_PEN_WIDTH, cache_dir=tmp_path, progress=False)
    built_s = time.perf_counter() - started
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith(f"pen{PAGE_PEN_WIDTH}-n40-")

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cached set should have been loaded, not redrawn")

    monkeypatch.setattr(redraw, "redraw_digit", no_drawing)
    started = time.perf_counter()
    second = redrawn_set(images, PAGE_PEN_WIDTH, cache_dir=tmp_path, progress=False)
    cached_s = time.perf_counter() - started
    print(f"40 digits: built in {built_s:.2f} s, from the cache in {cached_s * 1e3:.1f} ms")
    np.testing.assert_array_equal(first, second)
    assert cached_s < built_s / 5
    # Other digits, or another pen, are another entry: they are built, not taken from this one.
    with pytest.raises(AssertionError, match="should have been loaded"):
        redrawn_set(digits[0][40:80], PAGE_PEN_WIDTH, cache_dir=tmp_path, progress=False)


def test_a_damaged_cache_file_is_rebuilt(digits, tmp_path):
    images = digits[0][:5]
    first = redrawn_set(images, 14, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.npy")
    path.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(redrawn_set(images, 14, cache_dir=tmp_path, progress=False), first)
    assert np.load(path).shape == (5, 28, 28)


def test_worker_processes_give_the_same_result(digits, redrawn):
    pooled = redrawn_sets(digits[0][:150], (8, PAGE_PEN_WIDTH), cache_dir=None, processes=2, progress=False)
    np.testing.assert_array_equal(pooled[8], redrawn[8][:150])
    np.testing.assert_array_equal(pooled[PAGE_PEN_WIDTH], redrawn[PAGE_PEN_WIDTH][:150])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: skeleton(np.zeros((28, 28), np.float32)), "uint8"),
        (lambda: skeleton(np.zeros((280, 280), np.uint8)), r"\(28, 28\)"),
        (lambda: redraw.redraw(np.zeros((28, 28), bool), 20), r"\(280, 280\)"),
        (lambda: redraw.redraw(np.zeros((280, 280), bool), 0), "positive"),
        (lambda: redraw.redraw(np.zeros((280, 280), bool), float("nan")), "positive"),
        (lambda: redrawn_set(np.zeros((2, 28, 28), np.int64), 20, cache_dir=None), "uint8"),
        (lambda: redrawn_set(np.zeros((28, 28), np.uint8), 20, cache_dir=None), r"\(N, 28, 28\)"),
        (lambda: redrawn_set(np.zeros((1, 28, 28), np.uint8), -3, cache_dir=None), "positive"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_training_digits_are_redrawn_with_the_pens_in_turn(digits):
    """``training_redrawn`` (``invoke train --redrawn``): digit i with pen i mod len(pens),
    rounded to uint8 like MNIST's own images; a digit with no strokes is left out with its label."""
    images, labels = digits[0][:12].copy(), digits[1][:12].numpy()
    images[5] = 0  # blank: no skeleton, nothing to train on
    out, kept = training_redrawn(images, labels, pen_widths=(8, 20, 28), cache_dir=None, processes=1, progress=False)
    assert out.dtype == np.uint8 and out.shape == (11, 28, 28)
    assert kept.tolist() == [label for i, label in enumerate(labels) if i != 5]
    rows = [i for i in range(12) if i != 5]
    for row, i in zip(out, rows):
        expected = redraw_digit(images[i], ((8, 20, 28)[i % 3],))[0]
        assert np.abs(row.astype(np.float32) - expected).max() <= 0.5, i
    with pytest.raises(ValueError, match=r"expected \(12,\) labels"):
        training_redrawn(images, labels[:3], cache_dir=None, processes=1, progress=False)


# --- the adverse pen (web/pen.js's challenge pen) ------------------------------------------------

#: Accuracy floor of the committed model on the first N_DIGITS digits redrawn with the adverse
#: pen. The committed model (2026-11) reads 91.67 % of them (25 errors; 99.67 % with the page's
#: pen); the floor allows 36 errors. The set is deterministic: only a new model moves this.
MIN_ADVERSE_ACCURACY = 0.88


@pytest.fixture(scope="module")
def adverse(digits):
    """(N_DIGITS, 28, 28) float32: the first N_DIGITS redrawn with the adverse pen, built here."""
    started = time.perf_counter()
    images = redraw.adverse_set(digits[0], cache_dir=None, processes=1, progress=False)
    seconds = time.perf_counter() - started
    print(
        f"\nredrew {N_DIGITS} digits with the adverse pen in {seconds:.1f} s "
        f"({seconds / N_DIGITS * 1e3:.1f} ms per digit, one process)"
    )
    return images


def straight_line(length: int = 200) -> np.ndarray:
    """A horizontal skeleton on row 140, columns 40 .. 40 + length - 1."""
    skel = np.zeros((CANVAS_SIZE, CANVAS_SIZE), bool)
    skel[140, 40 : 40 + length] = True
    return skel


def test_palette_inks_are_luma_on_white():
    """ink = 255 - BT.601 luma: black full, the dark colours strong, light and cold ones faint."""
    inks = {c: redraw.ink_of_colour(c) for c in redraw.ADVERSE_PALETTE}
    print("ink per palette colour:", {c: round(v, 1) for c, v in inks.items()})
    assert inks["#000000"] == 255
    assert inks["#4fc3f7"] == pytest.approx(255 - (0.299 * 0x4F + 0.587 * 0xC3 + 0.114 * 0xF7))
    assert inks["#4fc3f7"] < 100 and inks["#80deea"] < 70 and inks["#b3e5fc"] < 45  # light blue, cyans
    assert inks["#1a237e"] > 200 and inks["#b71c1c"] > 170  # navy, dark red
    assert list(inks.values()) == sorted(inks.values(), reverse=True), "the palette runs dark to light"
    assert redraw.ink_of_colour("#FFFFFF") == 0


def test_adverse_pen_walks_through_widths_and_colours():
    seed = 7
    states = [redraw.adverse_at(seed, d) for d in np.arange(0, 4000, 2.0)]
    widths = np.array([w for w, _ in states])
    assert widths.min() >= redraw.ADVERSE_MIN_WIDTH and widths.max() <= redraw.ADVERSE_MAX_WIDTH
    assert widths.max() - widths.min() > 20, "the width wanders over most of its range"
    assert np.abs(np.diff(widths)).max() < 4, "smoothly: under 4 px change per 2 px of stroke"
    runs = [redraw.adverse_at(seed, r * redraw.COLOUR_RUN_PX + 1)[1] for r in range(100)]
    assert set(runs) == set(redraw.ADVERSE_PALETTE), "every colour comes up"
    assert all(a != b for a, b in zip(runs, runs[1:])), "each run another colour"
    assert redraw.adverse_at(seed, 123.4) == redraw.adverse_at(seed, 123.4) != redraw.adverse_at(seed + 1, 123.4)


def test_adverse_stroke_has_the_pens_widths_and_inks():
    """A straight skeleton drawn with the adverse pen. Its pieces are PIECE_PX long, each a
    round-capped line in the pen's width and colour where it starts, drawn over the ones
    before. Every column has the ink of the last piece that covers it (faint where that colour
    is light) and is as tall as the pieces covering it."""
    seed, first, length = 11, 40, 240
    canvas = redraw.redraw_adverse(straight_line(length), seed)
    assert canvas.shape == (CANVAS_SIZE, CANVAS_SIZE) and canvas.dtype == np.float32
    assert canvas.min() >= 0 and canvas.max() <= 255
    step = redraw.PIECE_PX  # steps of 1 px: a piece is PIECE_PX steps
    pieces = [
        (first + k, min(first + k + step, first + length - 1), *redraw.adverse_at(seed, float(k)))
        for k in range(0, length - 1, step)
    ]
    checked, inks_seen, heights = 0, set(), []
    for x in range(first, first + length):
        covering, height = [], 0.0
        for a, b, width, colour in pieces:
            dx = max(a - x, 0, x - b)  # from column x to the piece's centre line
            if dx < width / 2:
                covering.append((dx, width, colour))
                height = max(height, 2 * math.sqrt((width / 2) ** 2 - dx**2))
        dx, width, colour = covering[-1]
        # The last covering piece's cap edge, or a later piece's, within a pixel of the column's
        # centre shares the pixel between two colours: skip such columns.
        edges = [abs(width / 2 - dx) for dx, width, _ in covering] + [
            abs(max(a - x, 0, x - b) - w / 2) for a, b, w, _ in pieces
        ]
        if min(edges) < 1.0:
            continue
        ink = redraw.ink_of_colour(colour)
        assert canvas[140, x] == pytest.approx(ink, abs=0.5), (x, colour)
        tall = int((canvas[:, x] > 0).sum())
        assert height - 1 <= tall <= height + 2, (x, height, tall)
        inks_seen.add(round(ink))
        heights.append(tall)
        checked += 1
    print(
        f"straight stroke: {checked} columns checked, heights {min(heights)}..{max(heights)} px, "
        f"inks {sorted(inks_seen)}"
    )
    assert checked > 50
    assert max(heights) - min(heights) > 8, "the width varies along the stroke"
    assert len(inks_seen) >= 3 and min(inks_seen) < 130, "several colours along the stroke, light ones faint"


def test_trace_strokes_draws_every_edge_once(digits):
    for image in digits[0][:40]:
        skel = skeleton(image)
        strokes = redraw.trace_strokes(skel)
        covered = np.zeros_like(skel)
        steps = set()
        for stroke in strokes:
            assert stroke.ndim == 2 and stroke.shape[1] == 2 and len(stroke) >= 1
            covered[stroke[:, 0], stroke[:, 1]] = True
            step = np.abs(np.diff(stroke, axis=0))
            assert (step.max(axis=1, initial=1) == 1).all(), "consecutive pixels are 8-neighbours"
            for a, b in zip(map(tuple, stroke[:-1]), map(tuple, stroke[1:])):
                edge = (min(a, b), max(a, b))
                assert edge not in steps, "an edge is drawn once"
                steps.add(edge)
        np.testing.assert_array_equal(covered, skel)
        assert len(strokes) <= 12
    assert redraw.trace_strokes(np.zeros((5, 5), bool)) == []


def test_adverse_set_is_deterministic_and_seeded(digits, adverse):
    images = digits[0][:30]
    again = redraw.adverse_set(images, cache_dir=None, processes=1, progress=False)
    np.testing.assert_array_equal(again, adverse[:30])  # and a prefix of a longer set is its prefix
    other = redraw.adverse_set(images, seed=redraw.ADVERSE_SEED + 1000, cache_dir=None, progress=False)
    assert not np.array_equal(other, again)
    # digit i is drawn with seed ADVERSE_SEED + i: digit 5 alone, with seed + 5, is the same
    np.testing.assert_array_equal(redraw.redraw_adverse_digit(images[5], redraw.ADVERSE_SEED + 5), again[5])
    pooled = redraw.adverse_set(digits[0][:150], cache_dir=None, processes=2, progress=False)
    np.testing.assert_array_equal(pooled, adverse[:150])


def test_adverse_digits_are_faint_and_varied(digits, adverse):
    """MNIST-shaped, but with less ink than the page's pen and more spread in stroke darkness."""
    page = redrawn_set(digits[0], PAGE_PEN_WIDTH, cache_dir=None, processes=1, progress=False)
    assert adverse.shape == (N_DIGITS, 28, 28) and adverse.dtype == np.float32
    assert adverse.min() >= 0 and adverse.max() <= 255 and blank_count(adverse) == 0
    for image in adverse:
        rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20

    # The darkest 5 % of each digit's ink pixels: near full ink with the page's pen; with the
    # adverse pen lower on average (a digit drawn only in light colours stays faint).
    def core(images):
        return np.array([np.percentile(image[image > 0], 95) for image in images])

    print(
        f"95th percentile of ink: page pen {core(page).mean():.0f}, adverse pen {core(adverse).mean():.0f} "
        f"(min {core(adverse).min():.0f})"
    )
    assert core(adverse).mean() < core(page).mean() - 15
    assert core(adverse).min() < 160


def test_adverse_digits_are_harder_but_mostly_read(model, digits, adverse, redrawn):
    labels = digits[1]
    with torch.no_grad():
        predicted = model(normalize(torch.from_numpy(adverse).unsqueeze(1))).argmax(dim=1)
    accuracy = (predicted == labels).float().mean().item()
    print(f"accuracy on the first {N_DIGITS} test digits redrawn with the adverse pen: {accuracy:.2%}")
    assert accuracy >= MIN_ADVERSE_ACCURACY


def test_adverse_cache_is_used_the_second_time(digits, tmp_path, monkeypatch):
    images = digits[0][:20]
    first = redraw.adverse_set(images, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.npy")
    assert path.name.startswith(f"adverse-seed{redraw.ADVERSE_SEED}-n20-")

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cached set should have been loaded, not redrawn")

    monkeypatch.setattr(redraw, "redraw_adverse_digit", no_drawing)
    np.testing.assert_array_equal(redraw.adverse_set(images, cache_dir=tmp_path, progress=False), first)
    with pytest.raises(AssertionError, match="should have been loaded"):  # another seed: another entry
        redraw.adverse_set(images, seed=5, cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: redraw.adverse_at(-1, 0), "seed"),
        (lambda: redraw.adverse_at(2**32, 0), "seed"),
        (lambda: redraw.adverse_at(1.5, 0), "seed"),
        (lambda: redraw.adverse_at(True, 0), "seed"),
        (lambda: redraw.adverse_at(0, -1), "distance"),
        (lambda: redraw.adverse_at(0, float("inf")), "distance"),
        (lambda: redraw.ink_of_colour("lightblue"), "#rrggbb"),
        (lambda: redraw.redraw_adverse(np.zeros((28, 28), bool), 0), r"\(280, 280\)"),
        (lambda: redraw.adverse_set(np.zeros((2, 28, 28), np.float32), cache_dir=None), "uint8"),
        (lambda: redraw.adverse_set(np.zeros((2, 28, 28), np.uint8), seed=-3, cache_dir=None), "seed"),
    ],
)
def test_bad_adverse_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
