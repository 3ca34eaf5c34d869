"""mnist_common/preprocess.py: MNIST-style preprocessing of images, and its parity with web/preprocess.js."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_common.preprocess import (
    DIGIT_BOX,
    MNIST_SIZE,
    ImageError,
    ink_bounds,
    ink_from_image,
    ink_from_rgba,
    js_round,
    load_ink,
    to_mnist,
)
from tests.conftest import WEIGHTS, open_page
from trainer.export import read_metadata
from trainer.model import normalize

CANVAS = 280


def upscale(digit: np.ndarray, rng: np.random.Generator, smooth: bool) -> np.ndarray:
    """A (28, 28) uint8 MNIST digit drawn 5-9x larger at a random place on a 280x280 canvas."""
    side = int(rng.integers(140, 251))
    resample = Image.BILINEAR if smooth else Image.NEAREST
    big = np.asarray(Image.fromarray(digit).resize((side, side), resample))
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    y, x = rng.integers(0, CANVAS - side + 1, size=2)
    canvas[y : y + side, x : x + side] = big
    return canvas


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(x, y) with pixel centres at (x + 0.5, y + 0.5), the JS convention."""
    ys, xs = np.indices(image.shape) + 0.5
    return float((image * xs).sum() / image.sum()), float((image * ys).sum() / image.sum())


def classify(model, images: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(normalize(torch.from_numpy(np.stack(images)).unsqueeze(1))).argmax(1).numpy()


def classify_probabilities(model, image: np.ndarray) -> np.ndarray:
    """(10,) logits of one (28, 28) image (the order of its classes is all the tests use)."""
    with torch.no_grad():
        return model(normalize(torch.from_numpy(image[None, None].astype(np.float32))))[0].numpy()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def test_upscaled_mnist_digits_come_back_as_mnist(model, mnist_test):
    n = 200
    rng = np.random.default_rng(0)
    outs = [to_mnist(upscale(mnist_test.images[i].numpy(), rng, smooth=i % 2 == 1)) for i in range(n)]
    for out in outs:
        assert out.shape == (MNIST_SIZE, MNIST_SIZE) and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 255
        x0, y0, x1, y1 = ink_bounds(out)
        assert max(x1 - x0, y1 - y0) == DIGIT_BOX
        cx, cy = centre_of_mass(out)
        assert abs(cx - 14) <= 0.5 + 1e-6 and abs(cy - 14) <= 0.5 + 1e-6
    accuracy = (classify(model, outs) == mnist_test.labels[:n].numpy()).mean()
    print(f"upscaled MNIST digits through to_mnist: accuracy {accuracy:.2%}")
    assert accuracy >= 0.98


def test_a_square_fills_the_20x20_box_in_the_centre():
    ink = np.zeros((10, 12))
    ink[3:5, 7:9] = 255
    out = to_mnist(ink)
    expected = np.zeros((28, 28), np.float32)
    expected[4:24, 4:24] = 255
    np.testing.assert_array_equal(out, expected)


def test_sizes_and_shifts_round_half_up_like_javascript():
    assert [js_round(v) for v in (2.5, 3.5, -2.5, 0.49999999999999994, -0.5)] == [3, 4, -2, 0, 0]
    ink = np.zeros((50, 50), np.uint8)
    ink[5:45, 10:15] = 255  # 5 x 40: 2 source px per output px, width 2.5 -> 3 (Python's round: 2)
    x0, y0, x1, y1 = ink_bounds(to_mnist(ink))
    assert (x1 - x0, y1 - y0) == (3, 20)
    # 3 columns centred: mass centre 1.5 -> shift round(12.5) = 13 (Python's round: 12)
    assert x0 == 13


def test_blank_images_give_none():
    assert to_mnist(np.zeros((CANVAS, CANVAS), np.uint8)) is None
    assert to_mnist(np.zeros((0, 7))) is None
    assert ink_bounds(np.zeros((3, 3))) is None
    assert ink_bounds(np.pad([[9]], ((1, 2), (3, 4)))) == (3, 1, 4, 2)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(784),
        np.zeros((2, 28, 28)),
        np.full((5, 5), np.nan),
        np.full((5, 5), np.inf),
        np.full((5, 5), 256.0),
        np.full((5, 5), -1.0),
        np.array([["a", "b"]]),
        np.ones((3, 3), bool),
    ],
    ids=["1-D", "3-D", "nan", "inf", "above-255", "negative", "strings", "bool"],
)
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        to_mnist(bad)


def image_files(canvas: np.ndarray) -> dict[str, bytes]:
    """One digit (ink = 255) saved the ways people save digits."""
    paper = 255 - canvas
    alpha = np.zeros(canvas.shape + (4,), np.uint8)
    alpha[..., 3] = canvas  # black ink on transparent, like the page's canvas
    opaque = np.dstack([paper] * 3 + [np.full_like(paper, 255)])
    return {
        "white-on-black PNG": encode(Image.fromarray(canvas), "PNG"),
        "black-on-white JPEG": encode(Image.fromarray(paper).convert("RGB"), "JPEG", quality=95),
        "black-on-white opaque RGBA PNG": encode(Image.fromarray(opaque, "RGBA"), "PNG"),
        "16-bit white-on-black PNG": encode(Image.fromarray(canvas.astype(np.uint16) * 257), "PNG"),
        "black-on-white palette GIF": encode(Image.fromarray(paper).convert("P"), "GIF"),
        "black-on-white 1-bit BMP": encode(Image.fromarray(paper).convert("1", dither=Image.Dither.NONE), "BMP"),
        "ink on transparent PNG": encode(Image.fromarray(alpha, "RGBA"), "PNG"),
    }


def test_polarity_and_format_do_not_matter(model, mnist_test):
    rng = np.random.default_rng(1)
    labels = mnist_test.labels.numpy()
    picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
    worst: dict[str, float] = {}
    for i in picks:
        canvas = upscale(mnist_test.images[i].numpy(), rng, smooth=False)
        files = image_files(canvas)
        reference = to_mnist(load_ink(files["white-on-black PNG"]))
        for name, data in files.items():
            out = to_mnist(load_ink(data))
            # A transparent canvas's alpha is the ink as it is (the page's path, no noise floor).
            expected = to_mnist(canvas) if name == "ink on transparent PNG" else reference
            worst[name] = max(worst.get(name, 0.0), float(np.abs(out - expected).max()))
            if name == "black-on-white 1-bit BMP":
                # Thresholded at 50 % grey, blocky strokes: the right digit, or "not a digit"
                # (the default model, trained with outlier exposure, calls the 1-bit 5 that).
                probabilities = torch.softmax(torch.from_numpy(classify_probabilities(model, out)), 0)
                tau = float(read_metadata(WEIGHTS)["not_a_digit_max_probability"])
                assert int(probabilities.argmax()) == labels[i] or float(probabilities.max()) < tau, (
                    f"{name} of a {labels[i]}"
                )
            else:
                assert classify(model, [out])[0] == labels[i], f"{name} of a {labels[i]}"
    print("max |diff| against the white-on-black PNG:", {k: round(v, 2) for k, v in worst.items()})
    assert worst["black-on-white JPEG"] <= 8
    del worst["black-on-white 1-bit BMP"]  # thresholded at 50% grey: only the label is the same
    assert all(v <= 1e-3 for k, v in worst.items() if "JPEG" not in k)


def test_levels_of_a_photo_like_image():
    grey = np.full((60, 40), 200, np.uint8)  # grey paper
    grey[20:40, 18:22] = 40  # dark ink
    grey[5, 5] = 195  # paper noise
    ink = ink_from_image(Image.fromarray(grey).convert("RGB"))
    assert ink.dtype == np.float32 and ink.shape == (60, 40)
    assert ink_bounds(ink) == (18, 20, 22, 40)
    assert ink[30, 20] == pytest.approx((200 - 40) * 255 / 200, abs=1e-3)
    assert ink_from_image(Image.new("RGBA", (9, 9), (0, 0, 0, 0))).max() == 0
    assert ink_from_image(Image.new("L", (9, 9), 255)).max() == 0


def test_wide_and_float_modes_are_scaled_to_0_255():
    ink = np.zeros((30, 30), np.uint8)
    ink[5:25, 12:18] = 255
    ink[5:25, 11] = 128
    images = {
        "I;16": Image.fromarray(ink.astype(np.uint16) * 257),
        "I": Image.fromarray(ink.astype(np.int32) * 257),
        "F": Image.fromarray(ink.astype(np.float32) / 255),
    }
    for mode, image in images.items():
        assert image.mode == mode
        np.testing.assert_allclose(ink_from_image(image), ink, atol=1e-3, err_msg=mode)
    with pytest.raises(ImageError, match="NaN"):
        ink_from_image(Image.fromarray(np.full((4, 4), np.nan, np.float32)))


def test_exif_orientation_is_applied():
    paper = np.full((30, 50), 255, np.uint8)
    paper[2:6, 2:40] = 0  # a horizontal bar
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    ink = load_ink(encode(Image.fromarray(paper), "JPEG", exif=exif, quality=95))
    assert ink.shape == (50, 30)
    x0, y0, x1, y1 = ink_bounds(ink)
    assert x1 - x0 < y1 - y0  # now a vertical bar


def test_unreadable_files_raise_image_error_naming_the_file(tmp_path):
    noise = encode(Image.fromarray(np.random.default_rng(4).integers(0, 256, (200, 200), np.uint8)), "PNG")
    cases = {
        "notes.txt": b"seven, I think\n",
        "truncated.png": noise[: len(noise) // 2],  # header intact, pixel data cut
        "empty.png": b"",
        "bomb.png": encode(Image.new("1", (8000, 6000)), "PNG"),  # 48 MP, 6 KB
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "missing.png", "."]:
        path = tmp_path / name
        with pytest.raises(ImageError, match=re.escape(str(path))) as error:
            load_ink(path)
        print(f"{name}: {error.value}")
    with pytest.raises(ImageError, match="image data: empty"):
        load_ink(b"")
    assert load_ink(noise).shape == (200, 200)


def test_ink_from_rgba_is_luma_on_white_paper():
    """ink = alpha * (255 - BT.601 luma) / 255, rounded: black gives its alpha exactly, light
    blue faint ink, white and transparent none."""
    alpha = np.arange(256, dtype=np.uint8).reshape(16, 16)
    black = np.zeros((16, 16, 4), np.uint8)
    black[..., 3] = alpha
    ink = ink_from_rgba(black)
    assert ink.dtype == np.float32 and ink.shape == (16, 16)
    np.testing.assert_array_equal(ink, alpha)  # the page's ink before colours counted
    pixels = np.array(
        [
            [
                [0x4F, 0xC3, 0xF7, 255],
                [0x4F, 0xC3, 0xF7, 128],
                [255, 255, 255, 255],
                [0x1A, 0x23, 0x7E, 255],
                [200, 10, 10, 0],
            ]
        ],
        np.uint8,
    )
    light_blue = 255 - (0.299 * 0x4F + 0.587 * 0xC3 + 0.114 * 0xF7)  # 88.8
    np.testing.assert_array_equal(
        ink_from_rgba(pixels), [[round(light_blue), round(128 * light_blue / 255), 0, 212, 0]]
    )
    for bad in (np.zeros((4, 4, 3)), np.zeros((4, 4)), np.full((2, 2, 4), 300.0), np.full((2, 2, 4), np.nan)):
        with pytest.raises(ValueError):
            ink_from_rgba(bad)


def test_coloured_ink_on_transparent_is_read_as_the_page_reads_it():
    """A drawing saved from a transparent canvas: black strokes give their alpha, light blue
    ones faint ink, as on the page (so `invoke predict` sees what the page's model sees)."""
    rgba = np.zeros((60, 60, 4), np.uint8)
    rgba[10:50, 10:20] = (0, 0, 0, 255)
    rgba[10:50, 30:40] = (0x4F, 0xC3, 0xF7, 255)  # light blue
    rgba[10:50, 9] = (0, 0, 0, 100)  # an anti-aliased edge
    ink = load_ink(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert ink[30, 15] == 255 and ink[30, 9] == 100 and ink[30, 35] == 89 and ink[30, 25] == 0


# --- parity with web/preprocess.js, in Chromium -----------------------------------------------

SHAPES = {  # polylines on the 280x280 canvas
    "1": [[(150, 40), (145, 140), (140, 240)]],
    "7": [[(70, 55), (210, 55), (170, 130), (125, 240)]],
    "0": [[(140 + 60 * math.sin(t * math.pi / 20), 140 - 95 * math.cos(t * math.pi / 20)) for t in range(41)]],
    "4": [[(180, 230), (180, 40), (60, 170), (220, 170)]],
    "- (wide, thin)": [[(30, 150), (250, 155)]],
    "2 (small, off-centre)": [[(20, 30), (60, 20), (70, 50), (20, 100), (80, 100)]],
}

DRAW_JS = """async ({ shapes, widths, digits }) => {
    const { toMnist, inkFromImageData } = await import('./preprocess.js');
    const canvas = new OffscreenCanvas(280, 280);
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    const results = [];
    const capture = (name) => {
        const ink = inkFromImageData(ctx.getImageData(0, 0, 280, 280));
        const out = toMnist(ink, 280, 280);
        results.push({ name, ink: Array.from(ink), out: out && Array.from(out) });
    };
    for (const width of widths) {
        for (const [name, lines] of Object.entries(shapes)) {
            ctx.clearRect(0, 0, 280, 280);
            Object.assign(ctx, { lineWidth: width, lineCap: 'round', lineJoin: 'round', strokeStyle: '#000' });
            for (const line of lines) {
                ctx.beginPath();
                ctx.moveTo(...line[0]);
                for (const point of line.slice(1)) ctx.lineTo(...point);
                ctx.stroke();
            }
            capture(`${name} pen ${width}`);
        }
    }
    const small = new OffscreenCanvas(28, 28);
    digits.forEach(({ pixels, x, y, side }, i) => {
        const image = new ImageData(28, 28);
        pixels.forEach((v, k) => { image.data[4 * k + 3] = v; });
        small.getContext('2d').putImageData(image, 0, 0);
        ctx.clearRect(0, 0, 280, 280);
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(small, x, y, side, side);
        capture(`MNIST test digit ${i} at ${side}px`);
    });
    return results;
}"""


@pytest.mark.browser
def test_python_matches_the_page_on_canvas_drawings(browser, server, mnist_test):
    rng = np.random.default_rng(2)
    digits = []
    for i in range(8):
        side = int(rng.integers(120, 261))
        x, y = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
        digits.append({"pixels": mnist_test.images[i].flatten().tolist(), "x": x, "y": y, "side": side})
    page = open_page(browser, server, "flex")
    results = page.evaluate(DRAW_JS, {"shapes": SHAPES, "widths": [8, 16, 24], "digits": digits})
    page.close()
    assert len(results) == 3 * len(SHAPES) + len(digits)
    worst = 0.0
    for result in results:
        ink = np.array(result["ink"], np.float32).reshape(CANVAS, CANVAS)
        assert result["out"] is not None and ink.max() > 0, result["name"]
        diff = float(np.abs(to_mnist(ink) - np.array(result["out"], np.float32).reshape(28, 28)).max())
        worst = max(worst, diff)
    print(f"canvas drawings ({len(results)}): max |Python - JS| = {worst:.2e} grey levels")
    assert worst <= 2


def parity_arrays():
    """Arrays of many shapes, densities and value kinds, with a fixed seed."""
    rng = np.random.default_rng(3)
    arrays = [np.zeros((4, 4)), np.pad([[255.0]], 3), np.full((3, 500), 255.0), np.full((500, 3), 17.5)]
    tall = np.zeros((50, 50))
    tall[5:45, 10:15] = 255
    arrays.append(tall)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 300, size=2))
        density = rng.choice([0.001, 0.05, 0.5])
        values = rng.uniform(0, 255, (h, w)) * (rng.random((h, w)) < density)
        arrays.append(np.round(values) if rng.random() < 0.5 else values)
    return arrays


@pytest.mark.browser
def test_python_matches_the_page_on_identical_arrays(browser, server, mnist_test):
    arrays = parity_arrays() + [mnist_test.images[i].numpy().astype(np.float64) for i in range(5)]
    page = open_page(browser, server, "flex")
    outs = page.evaluate(
        """async (arrays) => {
            const { toMnist } = await import('./preprocess.js');
            return arrays.map(({ data, width, height }) => {
                const out = toMnist(data, width, height);
                return out && Array.from(out);
            });
        }""",
        [{"data": a.flatten().tolist(), "width": a.shape[1], "height": a.shape[0]} for a in arrays],
    )
    page.close()
    worst = 0.0
    for array, js in zip(arrays, outs, strict=True):
        ours = to_mnist(array)
        assert (ours is None) == (js is None)
        if ours is not None:
            worst = max(worst, float(np.abs(ours - np.array(js, np.float32).reshape(28, 28)).max()))
    print(f"identical arrays ({len(arrays)}): max |Python - JS| = {worst:.2e} grey levels")
    assert worst <= 1e-3


#: In the page: strokes in several colours and opacities on a transparent canvas; returns the
#: canvas's RGBA and web/preprocess.js's inkFromImageData of it.
COLOUR_JS = """async ({ strokes }) => {
    const { inkFromImageData } = await import('./preprocess.js');
    const canvas = new OffscreenCanvas(280, 280);
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    const out = [];
    for (const group of strokes) {
        ctx.clearRect(0, 0, 280, 280);
        for (const { colour, width, line } of group) {
            Object.assign(ctx, { lineWidth: width, lineCap: 'round', lineJoin: 'round', strokeStyle: colour });
            ctx.beginPath();
            ctx.moveTo(...line[0]);
            for (const point of line.slice(1)) ctx.lineTo(...point);
            ctx.stroke();
        }
        const image = ctx.getImageData(0, 0, 280, 280);
        out.push({ rgba: Array.from(image.data), ink: Array.from(inkFromImageData(image)) });
    }
    return out;
}"""


@pytest.mark.browser
def test_python_ink_matches_the_page_on_coloured_strokes(browser, server):
    """inkFromImageData (JS) and ink_from_rgba (Python) give the same ink, value for value, on
    canvases drawn in the adverse pen's colours and in translucent ones; black strokes give
    their alpha, as the page read them before colours counted."""
    from trainer.synthetic.redraw import ADVERSE_PALETTE

    lines = list(SHAPES.values())
    colours = [*ADVERSE_PALETTE, "rgba(0, 0, 0, 0.4)", "rgba(79, 195, 247, 0.5)", "#ffffff"]
    groups = [[{"colour": "#000000", "width": 20, "line": line} for line in lines[0] + lines[1]]]
    groups.append(
        [
            {"colour": colour, "width": 6 + i, "line": [(20 + 20 * i, 30), (40 + 18 * i, 250)]}
            for i, colour in enumerate(colours)
        ]
    )
    groups.append(
        [
            {"colour": colours[i % len(colours)], "width": 14 + 2 * i, "line": line}
            for i, line in enumerate(sum(lines, []))
        ]
    )
    page = open_page(browser, server, "flex")
    results = page.evaluate(COLOUR_JS, {"strokes": groups})
    page.close()
    for k, result in enumerate(results):
        rgba = np.array(result["rgba"], np.uint8).reshape(CANVAS, CANVAS, 4)
        js = np.array(result["ink"], np.float32).reshape(CANVAS, CANVAS)
        np.testing.assert_array_equal(ink_from_rgba(rgba), js, err_msg=f"group {k}")
        if k == 0:
            np.testing.assert_array_equal(js, rgba[..., 3])  # black: ink = alpha
    strip = lambda i: js_strip(results[1], i)  # noqa: E731
    inks = [strip(i) for i in range(len(colours))]
    print("ink at the centre of each colour's stroke:", dict(zip(colours, inks)))
    assert inks[0] == 255 and inks[ADVERSE_PALETTE.index("#4fc3f7")] == 89 and inks[-1] == 0
    assert inks[len(ADVERSE_PALETTE)] == round(0.4 * 255)  # translucent black: its alpha


def js_strip(result, i: int) -> int:
    """The ink at the middle of the i-th stroke of the one-stroke-per-colour group."""
    x = round((20 + 20 * i + 40 + 18 * i) / 2)
    return int(result["ink"][140 * CANVAS + x])
