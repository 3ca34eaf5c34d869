"""trainer/synthetic/writers.py: synthetic writers, each with its own consistent style, drawn with the page's pen."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_common.preprocess import MNIST_SIZE
from trainer.model import normalize
from trainer.synthetic import writers
from trainer.synthetic.redraw import CANVAS_SIZE, redraw
from trainer.synthetic.writers import (
    NUM_CLASSES,
    WriterStyle,
    choose_glyphs,
    cross_seven,
    draw_strokes,
    flag_one,
    has_hole,
    hook_nine,
    is_stick,
    teach_split,
    write_digits,
    writer_style,
    writers_set,
)

#: The set the accuracy and consistency tests use: writers 0..11 from ``WRITER_SEED``, 3 digits
#: per class each (360 digits, a few seconds in one process).
N_WRITERS, PER_CLASS = 12, 3
#: The committed model (2026-12-07, afternoon, 99.60 % on MNIST's test digits) reads all of this
#: set; the soup of eight of that morning (99.63 %) made 2 errors, a 3 of writer 3 and a 0 of
#: writer 7. The one of 2026-11 (99.67 %) also
#: made 2, both 2s of writer 6 (seed 20156, whose 2 is a flat-topped Z); over 100 writers x 3 per
#: class it read 98.5 %, its worst writers 87-90 % (flagged 1s read as 7s above all). The set is
#: deterministic, so only a new model (or a change to the writers) moves them.
MIN_ACCURACY = 0.8


@pytest.fixture(scope="module")
def source(mnist_test):
    """MNIST's test digits as numpy: (10000, 28, 28) uint8 and (10000,) int64."""
    return mnist_test.images.numpy(), mnist_test.labels.numpy()


@pytest.fixture(scope="module")
def small_set(source):
    """N_WRITERS x 10 x PER_CLASS writer digits, built here (no cache, one process)."""
    started = time.perf_counter()
    dataset = writers_set(*source, N_WRITERS, PER_CLASS, cache_dir=None, processes=1, progress=False)
    seconds = time.perf_counter() - started
    print(
        f"\nwrote {len(dataset.images)} digits of {N_WRITERS} writers in {seconds:.1f} s "
        f"({seconds / len(dataset.images) * 1e3:.1f} ms per digit, one process)"
    )
    return dataset


def glyphs_of(style: WriterStyle, source) -> dict[int, np.ndarray]:
    """The writer's base glyphs: {class: (28, 28) uint8}."""
    images, labels = source
    return {k: images[i] for k, i in choose_glyphs(style, images, labels).items()}


def test_a_style_is_fixed_by_its_seed():
    assert writer_style(7) == writer_style(7) == writer_style(np.int64(7))
    styles = [writer_style(seed) for seed in range(200)]
    assert len({(s.slant, s.pen_width) for s in styles}) == 200, "every writer has its own style"
    for name, bounds in (
        ("slant", writers.SLANT_RANGE),
        ("aspect", writers.ASPECT_RANGE),
        ("rotation", writers.ROTATION_RANGE),
        ("pen_width", writers.PEN_WIDTH_RANGE),
        ("size", writers.SIZE_RANGE),
    ):
        values = np.array([getattr(s, name) for s in styles])
        assert bounds[0] <= values.min() and values.max() <= bounds[1], name
        assert values.max() - values.min() > 0.8 * (bounds[1] - bounds[0]), f"{name} spans its range"
    for name, p in writers.VARIANT_PROBABILITY.items():
        share = np.mean([getattr(s, name) for s in styles])
        assert abs(share - p) < 0.12, f"{name}: {share:.2f} of writers, expected about {p}"
    rms = np.array([writers.elastic_rms(s.elastic) for s in styles])
    low, high = writers.ELASTIC_AMPLITUDE_RANGE
    assert low - 1e-9 <= rms.min() and rms.max() <= high + 1e-9
    print(styles[0].describe())


def test_the_same_writer_writes_the_same_digits(source):
    style = writer_style(writers.WRITER_SEED)
    glyphs = glyphs_of(style, source)
    first, labels = write_digits(style, glyphs, 2)
    again, _ = write_digits(style, glyphs, 2)
    np.testing.assert_array_equal(first, again)
    assert labels.dtype == np.int64 and labels.tolist() == [k for k in range(NUM_CLASSES) for _ in range(2)]
    other_instances, _ = write_digits(style, glyphs, 2, seed=1)
    assert not np.array_equal(first, other_instances), "another instance seed draws other instances"
    other_writer = writer_style(writers.WRITER_SEED + 1)
    assert other_writer != style
    theirs, _ = write_digits(other_writer, glyphs_of(other_writer, source), 2)
    assert all(not np.array_equal(a, b) for a, b in zip(first, theirs)), "another writer writes every digit otherwise"


def test_a_set_has_mnist_shaped_labelled_digits(small_set, source):
    n = N_WRITERS * NUM_CLASSES * PER_CLASS
    images, labels, who, styles, glyphs = small_set
    assert images.shape == (n, MNIST_SIZE, MNIST_SIZE) and images.dtype == np.uint8
    assert labels.shape == who.shape == (n,) and labels.dtype == who.dtype == np.int64
    assert [s.seed for s in styles] == list(range(writers.WRITER_SEED, writers.WRITER_SEED + N_WRITERS))
    for w in range(N_WRITERS):
        mine = who == w
        assert mine.sum() == NUM_CLASSES * PER_CLASS
        assert np.bincount(labels[mine], minlength=NUM_CLASSES).tolist() == [PER_CLASS] * NUM_CLASSES
    # Every digit has ink, as much as a stroke across the 20-px box at least, and a full-ink core.
    ink = images.reshape(n, -1).astype(np.int64)
    assert ink.sum(axis=1).min() > 20 * 255 and ink.max(axis=1).min() > 200
    # The digit fills the 20 x 20 box and is centred as the page's preprocessing centres it.
    rows = images.max(axis=2) > 0
    heights = MNIST_SIZE - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1)
    assert heights.max() <= 22 and np.median(heights) >= 19
    # The base glyphs are source digits of their class.
    assert glyphs.shape == (N_WRITERS, NUM_CLASSES)
    assert (source[1][glyphs] == np.arange(NUM_CLASSES)).all()


def test_a_writer_writes_a_class_alike_and_other_writers_otherwise(small_set):
    """Two digits of one class by one writer are closer (mean absolute pixel difference) than
    two of that class by different writers: the writer's glyph and style stay."""
    images = small_set.images.astype(np.float64) / 255
    within, between = [], []
    for label in range(NUM_CLASSES):
        of_class = [images[(small_set.writers == w) & (small_set.labels == label)] for w in range(N_WRITERS)]
        for w in range(N_WRITERS):
            within.append(np.abs(of_class[w][0] - of_class[w][1]).mean())
            between += [np.abs(of_class[w][0] - of_class[v][1]).mean() for v in range(N_WRITERS) if v != w]
    print(f"\nmean pixel distance: same writer {np.mean(within):.3f}, other writers {np.mean(between):.3f}")
    assert np.mean(within) < 0.5 * np.mean(between)
    # Not only on average: for most writer-class pairs the writer's own other digit is closest.
    per_pair = np.array(within) < np.array(between).reshape(len(within), N_WRITERS - 1).min(axis=1)
    assert per_pair.mean() > 0.8


def read_right(model, dataset) -> np.ndarray:
    """(N,) bool: ``model``'s top-1 on each of ``dataset``'s digits is its label."""
    with torch.no_grad():
        predicted = model(normalize(torch.from_numpy(dataset.images).unsqueeze(1))).argmax(dim=1).numpy()
    return predicted == dataset.labels


def test_the_committed_model_reads_most_writer_digits(model, small_set):
    right = read_right(model, small_set)
    per_writer = [right[small_set.writers == w].mean() for w in range(N_WRITERS)]
    print(
        f"\ncommitted model on {len(right)} writer digits: {right.mean():.2%}; per writer "
        + " ".join(f"{a:.0%}" for a in per_writer)
    )
    assert MIN_ACCURACY <= right.mean()


def test_mistakes_come_by_writer_and_class(small_set):
    """A writer writes a class in one style, so a misread glyph is misread in several of its
    instances: the errors fall in fewer (writer, class) pairs than there are errors. Measured with
    the zoo's mlp, the model that misreads this set most (11 errors in 6 pairs, 2026-12-07); the
    committed cnn makes 2 here, too few to tell."""
    from mnist_common.paths import MODELS_DIR
    from trainer.export import load_model

    wrong = ~read_right(load_model(MODELS_DIR / "mlp.safetensors"), small_set)
    pairs = {(int(w), int(k)) for w, k in zip(small_set.writers[wrong], small_set.labels[wrong])}
    print(f"\nmlp: {wrong.sum()} errors in {len(pairs)} (writer, class) pairs: {sorted(pairs)}")
    assert wrong.sum() >= 4, "too few errors to see how they cluster"
    assert len(pairs) < wrong.sum()


def test_crossed_seven_puts_a_bar_across_the_stem(source):
    """A writer whose 7 is crossed writes its 7s with more ink in the middle rows than the same
    writer without the cross (same glyph, same instance draws), and the bar is horizontal,
    across the stem, at CROSS_HEIGHT."""
    crossed = dataclasses.replace(writer_style(11), crossed_seven=True)
    plain = dataclasses.replace(crossed, crossed_seven=False)
    glyphs = glyphs_of(crossed, source)
    with_bar, labels = write_digits(crossed, glyphs, 4)
    without, _ = write_digits(plain, glyphs, 4)
    sevens = labels == 7
    np.testing.assert_array_equal(with_bar[~sevens], without[~sevens])  # only the 7s change
    band = slice(12, 19)  # the middle rows of the 20-px digit box (rows 4..23)
    ink_with = with_bar[sevens][:, band].reshape(4, -1).sum(axis=1, dtype=np.int64)
    ink_without = without[sevens][:, band].reshape(4, -1).sum(axis=1, dtype=np.int64)
    assert (ink_with > 1.15 * ink_without).all(), (ink_with, ink_without)

    along = np.linspace(0, 1, 101)[:, None]
    top = np.array([-0.3, -0.5]) + along * [0.6, 0]  # a 7: its top bar, then its stem from the
    stem = np.array([0.3, -0.5]) + along * [-0.3, 1]  # top right to the bottom left
    bar = cross_seven([top, stem])[-1]
    y = -0.5 + writers.CROSS_HEIGHT
    assert bar.shape == (2, 2) and bar[0, 1] == bar[1, 1] == pytest.approx(y)
    stem_x = 0.3 - 0.3 * (y + 0.5)
    assert bar[:, 0].mean() == pytest.approx(stem_x, abs=0.05)  # the bar's middle on the stem
    assert bar[1, 0] - bar[0, 0] == pytest.approx(2 * writers.CROSS_HALF_LENGTH)


def test_flagged_one_gets_a_flag_and_maybe_a_base():
    stick = [np.column_stack([np.zeros(50), np.linspace(-0.5, 0.5, 50)])]
    assert is_stick(stick)
    flagged = flag_one(stick)
    assert len(flagged) == 2
    flag = flagged[-1]
    np.testing.assert_allclose(flag[-1], [0, -0.5])  # it ends at the top of the stem
    dx, dy = flag[0] - flag[-1]
    assert dx < 0 and dy > 0, "the flag starts below and left of the top"
    assert math.degrees(math.atan2(-dx, dy)) == pytest.approx(writers.FLAG_ANGLE)
    assert math.hypot(dx, dy) == pytest.approx(writers.FLAG_LENGTH)
    based = flag_one(stick, base=True)
    assert len(based) == 3
    np.testing.assert_allclose(based[-1], [[-writers.BASE_HALF_LENGTH, 0.5], [writers.BASE_HALF_LENGTH, 0.5]])
    assert not is_stick(flagged), "a flagged 1 is no longer a plain stick"


def test_a_flagged_writer_picks_a_plain_one_and_draws_the_flag(source):
    style = dataclasses.replace(writer_style(3), flagged_one=True, based_one=False)
    plain = dataclasses.replace(style, flagged_one=False)
    glyphs = glyphs_of(style, source)
    assert is_stick(writers.upright(writers.glyph_strokes(glyphs[1])))
    flagged_ones, labels = write_digits(style, glyphs, 3)
    plain_ones, _ = write_digits(plain, glyphs, 3)
    ones = labels == 1
    # The flag widens the digit: more columns with ink (to_mnist scales by the longer side).
    columns = lambda images: (images.max(axis=1) > 64).sum(axis=1)  # noqa: E731
    assert (columns(flagged_ones[ones]) >= columns(plain_ones[ones]) + 2).all()


def test_hooked_nine_curls_the_tail_left_and_only_a_tail():
    turn = np.linspace(0, 2 * np.pi, 40)
    loop = np.column_stack([0.2 * np.cos(turn), -0.25 + 0.2 * np.sin(turn)])
    tail = np.array([[0.2, -0.25], [0.2, 0.5]])
    hooked = hook_nine([loop, tail])
    assert len(hooked) == 3
    hook = hooked[-1]
    np.testing.assert_allclose(hook[0], [0.2, 0.5])  # it leaves from the tail's end
    assert hook[:, 1].max() == pytest.approx(0.5 + writers.HOOK_RADIUS, abs=1e-3)  # first down
    assert hook[-1, 0] < 0.2 - writers.HOOK_RADIUS and hook[-1, 1] < hook[:, 1].max()  # then left, up
    zero = [loop * [1, 2.5] + [0, 0.25]]  # no stroke end: nothing to hook
    assert len(hook_nine(zero)) == 1
    six = [np.array([[0.2, -0.5], [-0.2, 0.0], [0.0, 0.5], [0.2, 0.2], [-0.15, 0.1]])]  # ends up top
    assert len(hook_nine(six)) == 1


def test_open_and_closed_fours_are_chosen_by_their_hole(source):
    for seed in range(6):
        for open_four in (True, False):
            style = dataclasses.replace(writer_style(seed), open_four=open_four)
            assert has_hole(glyphs_of(style, source)[4]) != open_four


def test_looped_classes_keep_their_loop(small_set, source):
    images, _ = source
    for w in range(N_WRITERS):
        for label in writers.LOOPED:
            assert has_hole(images[small_set.glyphs[w, label]])


def test_the_pen_is_round_with_the_writers_width():
    """draw_strokes draws what redraw draws: a round-capped bar for a straight stroke (area
    L w + pi w^2 / 4 within 2 %), the same ink as redraw of the same centre line within 2 %."""
    for width in (10.0, 20.0, 30.0):
        stroke = np.array([[80.0, 140.0], [200.0, 140.0]])
        ink = draw_strokes([stroke], width)
        assert ink.shape == (CANVAS_SIZE, CANVAS_SIZE) and ink.dtype == np.float32
        area = ink.sum() / 255
        assert area == pytest.approx(120 * width + math.pi * width**2 / 4, rel=0.02)
        skel = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=bool)
        skel[140, 80:201] = True
        assert area == pytest.approx(redraw(skel, width).sum() / 255, rel=0.02)
        dot = draw_strokes([np.array([[140.0, 140.0]])], width).sum() / 255
        assert dot == pytest.approx(math.pi * width**2 / 4, rel=0.03)
    assert draw_strokes([], 20).max() == 0


def test_teach_split_takes_the_first_shots_of_each_class(small_set):
    teach, test = teach_split(small_set, 4, shots=2)
    mine = np.flatnonzero(small_set.writers == 4)
    assert len(teach) == 2 * NUM_CLASSES and len(test) == (PER_CLASS - 2) * NUM_CLASSES
    assert sorted(np.concatenate([teach, test]).tolist()) == mine.tolist()
    assert np.bincount(small_set.labels[teach], minlength=NUM_CLASSES).tolist() == [2] * NUM_CLASSES
    with pytest.raises(ValueError, match="shots must be 1..2"):
        teach_split(small_set, 4, shots=PER_CLASS)
    with pytest.raises(ValueError, match="no writer 99"):
        teach_split(small_set, 99)


def test_cache_is_used_the_second_time(source, tmp_path, monkeypatch):
    images, labels = source[0][:500], source[1][:500]
    built = writers_set(images, labels, 2, 1, cache_dir=tmp_path, processes=1, progress=False)
    assert len(list(tmp_path.glob("writers2-per1-seed*.npz"))) == 1

    def fail(task):
        raise AssertionError("the cached set should have been loaded")

    monkeypatch.setattr(writers, "_write_writer", fail)
    again = writers_set(images, labels, 2, 1, cache_dir=tmp_path, processes=1, progress=False)
    np.testing.assert_array_equal(again.images, built.images)
    np.testing.assert_array_equal(again.glyphs, built.glyphs)
    assert again.styles == built.styles
    with pytest.raises(AssertionError, match="should have been loaded"):  # another key: built again
        writers_set(images, labels, 2, 1, first_seed=5, cache_dir=tmp_path, processes=1, progress=False)


def test_a_damaged_cache_file_is_rebuilt(source, tmp_path):
    images, labels = source[0][:500], source[1][:500]
    built = writers_set(images, labels, 1, 1, cache_dir=tmp_path, processes=1, progress=False)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not an npz")
    again = writers_set(images, labels, 1, 1, cache_dir=tmp_path, processes=1, progress=False)
    np.testing.assert_array_equal(again.images, built.images)
    assert np.load(path)["images"].shape == built.images.shape  # and written back


def test_worker_processes_give_the_same_result(source, small_set):
    images, labels = source
    pooled = writers_set(images, labels, 3, PER_CLASS, cache_dir=None, processes=2, progress=False)
    n = len(pooled.images)
    np.testing.assert_array_equal(pooled.images, small_set.images[:n])
    np.testing.assert_array_equal(pooled.glyphs, small_set.glyphs[:3])


def test_the_command_writes_a_grid(tmp_path, source, capsys):
    grid = tmp_path / "grid.png"
    writers.main(["--writers", "2", "--per-class", "2", "--no-cache", "--grid", str(grid), "--grid-per-class", "2"])
    out = capsys.readouterr().out
    assert f"writer {writers.WRITER_SEED}:" in out and f"grid: {grid}" in out
    image = Image.open(grid)
    assert image.size == (2 * (NUM_CLASSES * 2 * MNIST_SIZE + (NUM_CLASSES - 1) * 4), 2 * (2 * MNIST_SIZE + 2))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: writer_style("3"), TypeError, "writer seed must be an integer, got str"),
        (lambda s: writer_style(2.0), TypeError, "writer seed must be an integer, got float"),
        (lambda s: writer_style(True), TypeError, "writer seed must be an integer, got bool"),
        (lambda s: writer_style(-1), ValueError, "writer seed must be >= 0"),
        (
            lambda s: write_digits(writer_style(1), glyphs_of(writer_style(1), s), 0),
            ValueError,
            "per_class must be at least 1",
        ),
        (
            lambda s: write_digits(writer_style(1), glyphs_of(writer_style(1), s), 2.5),
            TypeError,
            "per_class must be an integer",
        ),
        (
            lambda s: write_digits(writer_style(1), {k: s[0][0] for k in range(9)}, 1),
            ValueError,
            "no digit for class 9",
        ),
        (
            lambda s: write_digits(writer_style(1), {k: np.zeros((28, 28), np.uint8) for k in range(10)}, 1),
            ValueError,
            "glyph of class 0 has no ink",
        ),
        (
            lambda s: write_digits(writer_style(1), {k: np.zeros((20, 20), np.uint8) for k in range(10)}, 1),
            ValueError,
            r"expected a \(28, 28\) uint8 digit",
        ),
        (lambda s: write_digits({"seed": 1}, {}, 1), TypeError, "style must be a WriterStyle"),
        (
            lambda s: writers_set(np.zeros((10, 27, 27), np.uint8), np.arange(10), 1, 1, cache_dir=None),
            ValueError,
            r"expected \(N, 28, 28\) uint8 digits",
        ),
        (
            lambda s: writers_set(s[0][:10].astype(np.float32), s[1][:10], 1, 1, cache_dir=None),
            ValueError,
            "uint8 digits",
        ),
        (
            lambda s: writers_set(s[0][:10], s[1][:9], 1, 1, cache_dir=None),
            ValueError,
            r"expected \(10,\) integer labels",
        ),
        (lambda s: writers_set(s[0][:10], s[1][:10] + 10, 1, 1, cache_dir=None), ValueError, "labels must lie in 0..9"),
        (
            lambda s: writers_set(s[0][s[1] != 3][:50], s[1][s[1] != 3][:50], 1, 1, cache_dir=None),
            ValueError,
            "the source digits have no 3",
        ),
        (lambda s: writers_set(*s, 0, 1, cache_dir=None), ValueError, "writers must be at least 1"),
        (lambda s: writers_set(*s, 1, 0, cache_dir=None), ValueError, "per_class must be at least 1"),
        (lambda s: writers_set(*s, 1, 1, first_seed="a", cache_dir=None), TypeError, "first_seed must be an integer"),
    ],
)
def test_bad_arguments_are_refused(source, call, error, message):
    with pytest.raises(error, match=message):
        call(source)
