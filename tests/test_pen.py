"""The page's "challenge: adverse pen" toggle (web/pen.js), in headless Chromium: what the pens
draw on the canvas (pixels read back), and what the model is then shown (the 28x28 preview)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_browser import STROKES, draw, prediction

pytestmark = pytest.mark.browser

#: ?penseed= of the tests' pages: the adverse pen draws the same way in every run.
SEED = 4242
CANVAS = 280
#: The bar of the 7 (STROKES[7]'s first segment): row 55, from column 70 to 210, drawn first,
#: so along it the pen has drawn x - 70 canvas pixels.
BAR_ROW, BAR_START, BAR_END = 55, 70, 210

#: In the page: the drawing canvas's RGBA, the preview's grey levels (28x28), and for the
#: columns asked for, the adverse pen's width (web/pen.js) at distance x - BAR_START.
READ_JS = """async ({ columns, seed, start }) => {
    const pen = await import('./pen.js');
    const draw = document.getElementById('draw').getContext('2d');
    const preview = document.getElementById('preview').getContext('2d');
    const palette = pen.ADVERSE_PALETTE.map((c) => pen.parseColour(c));
    return {
        rgba: Array.from(draw.getImageData(0, 0, 280, 280).data),
        preview: Array.from(preview.getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0)),
        widths: columns.map((x) => pen.adverseWidth(seed, x - start)),
        palette,
        paletteInk: pen.ADVERSE_PALETTE.map((c) => pen.inkOfColour(c)),
    };
}"""


def open_pen_page(browser, url: str):
    """The page with ?penseed=SEED, once its model is loaded."""
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}?penseed={SEED}")
    page.wait_for_function("window.mnist !== undefined", timeout=60_000)
    page.errors = errors
    return page


def draw_and_wait(page, strokes):
    """Draw the polylines and wait for the prediction made at the end of the last stroke."""
    before = prediction(page)[1]
    draw(page, strokes)
    page.wait_for_function(f"Number(document.querySelector('[data-testid=prediction]').dataset.seq) > {before}")
    page.wait_for_timeout(200)  # a live prediction may have been the one shown: let the last land


def read(page, columns=()):
    out = page.evaluate(READ_JS, {"columns": list(columns), "seed": SEED, "start": BAR_START})
    rgba = np.array(out["rgba"], np.uint8).reshape(CANVAS, CANVAS, 4)
    preview = np.array(out["preview"], np.float64).reshape(28, 28)
    return rgba, preview, out


def paper_ink(rgba: np.ndarray) -> np.ndarray:
    """(280, 280) ink of the canvas as it looks on white: 255 - BT.601 luma of the composite."""
    colour = rgba[..., :3].astype(np.float64)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    composite = colour * alpha + 255 * (1 - alpha)
    return 255 - composite @ np.array([0.299, 0.587, 0.114])


def preview_regions(rgba: np.ndarray, preview: np.ndarray):
    """For each ink pixel of the 28x28 preview, the canvas rectangle it was averaged from
    (web/preprocess.js: crop to the ink's box, 20 px for the longer side, shift so the centre
    of mass is in the middle; the shift is where the preview's own ink starts)."""
    alpha = rgba[..., 3]
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    y0, x0 = rows[0], cols[0]
    step = max(rows[-1] + 1 - y0, cols[-1] + 1 - x0) / 20
    prow, pcol = np.flatnonzero(preview.any(axis=1)), np.flatnonzero(preview.any(axis=0))
    for py in range(28):
        for px in range(28):
            if preview[py, px] > 0:
                top, left = y0 + (py - prow[0]) * step, x0 + (px - pcol[0]) * step
                yield (
                    py,
                    px,
                    (slice(int(round(top)), int(round(top + step))), slice(int(round(left)), int(round(left + step)))),
                )


def test_the_adverse_pen_draws_varying_widths_and_colours_and_the_model_sees_faint_ink(browser, server):
    page = open_pen_page(browser, server)
    toggle = page.locator("[data-testid=adverse-pen]")
    assert toggle.is_visible() and not toggle.is_checked()
    # It sits beside Clear, on the same row, under the canvas.
    clear_box, toggle_box = page.locator("[data-testid=clear]").bounding_box(), toggle.bounding_box()
    canvas_box = page.locator("canvas[data-testid=draw]").bounding_box()
    assert abs((clear_box["y"] + clear_box["height"] / 2) - (toggle_box["y"] + toggle_box["height"] / 2)) < 4
    assert (
        toggle_box["x"] > clear_box["x"] + clear_box["width"]
        and toggle_box["y"] > canvas_box["y"] + canvas_box["height"]
    )
    label_box = page.locator("label:has([data-testid=adverse-pen])").bounding_box()
    assert label_box["x"] + label_box["width"] <= canvas_box["x"] + canvas_box["width"] + 4, "no overflow"
    assert "challenge: adverse pen" in page.locator("label:has([data-testid=adverse-pen])").inner_text()
    page.check("[data-testid=adverse-pen]")
    assert toggle.get_attribute("data-seed") == str(SEED)

    draw_and_wait(page, STROKES[7])
    shown, seq, probs = prediction(page)
    assert shown in "0123456789" and shown != "" and seq > 0
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-4
    print(f"adverse 7: the page says {shown} ({max(probs):.1%})")

    bar = range(BAR_START, BAR_END + 1)
    rgba, preview, out = read(page, bar)
    pen_width = dict(zip(bar, out["widths"]))  # the adverse pen's width where it drew column x
    alpha = rgba[..., 3]
    palette = [tuple(c) for c in out["palette"]]

    # Colours: the solid pixels are palette colours (to a grey level or two where the browser
    # blended a colour over itself; blends of two colours only on the seams), and several of
    # them take real room.
    solid = rgba[alpha == 255][:, :3].astype(np.int16)
    distance = np.abs(solid[:, None, :] - np.array(palette, np.int16)[None]).max(axis=2)  # (pixels, colours)
    nearest, close = distance.argmin(axis=1), distance.min(axis=1) <= 2
    assert close.mean() > 0.95, f"{close.mean():.1%} of the solid pixels are palette colours"
    counts = np.bincount(nearest[close], minlength=len(palette))
    big = {palette[i]: int(n) for i, n in enumerate(counts) if n >= 150}
    print("colours drawn (solid pixels):", big)
    assert len(big) >= 3
    inks = [out["paletteInk"][palette.index(c)] for c in big]
    assert min(inks) < 130 < 200 < max(inks), "light (faint) and dark (strong) colours both drawn"

    # Widths: along the 7's bar each column is at least as tall as the pen where it passed, and
    # at most as tall as the widest pen within a cap's reach; the heights vary along the bar.
    heights = []
    for x in range(BAR_START + 20, BAR_END - 30):  # clear of the end caps and the downstroke
        column = alpha[:, x] > 127
        top = BAR_ROW - 25 + np.flatnonzero(column[BAR_ROW - 25 : BAR_ROW + 26])
        height = int(top[-1] - top[0] + 1)
        reach = [w for c, w in pen_width.items() if abs(c - x) <= 16]
        assert pen_width[x] - 2 <= height <= max(reach) + 2, (x, pen_width[x], height)
        heights.append(height)
    print(f"bar of the 7: stroke heights {min(heights)}..{max(heights)} px")
    assert max(heights) - min(heights) >= 8

    # What the model sees: each preview pixel is the mean ink of its canvas area as the canvas
    # looks on white (255 - luma), not its coverage (alpha): fainter where the colour is light.
    ink, coverage = paper_ink(rgba), alpha.astype(np.float64)
    light, dark, checked = [], [], 0
    for py, px, area in preview_regions(rgba, preview):
        if ink[area].size == 0:
            continue
        value, by_colour, by_alpha = preview[py, px], ink[area].mean(), coverage[area].mean()
        assert abs(value - by_colour) <= 12, (py, px, value, by_colour)
        checked += 1
        if by_alpha > 200:  # fully covered: the colour alone sets the ink
            (light if by_colour < 130 else dark).append(value)
    print(
        f"preview: {checked} pixels checked; solid areas in light colours {np.mean(light):.0f} "
        f"(n={len(light)}), in dark ones {np.mean(dark):.0f} (n={len(dark)})"
    )
    assert checked > 40 and light and dark
    assert max(light) < 140 and np.mean(light) < np.mean(dark) - 60
    assert page.errors == []
    page.close()


def test_without_the_toggle_the_pen_is_the_normal_one(browser, server):
    page = open_pen_page(browser, server)
    for switch in ("start", "on-off"):
        if switch == "on-off":  # switched on and off again: the normal pen is back
            page.click("[data-testid=clear]")
            page.check("[data-testid=adverse-pen]")
            page.uncheck("[data-testid=adverse-pen]")
        draw_and_wait(page, STROKES[7])
        assert prediction(page)[0] == "7"
        rgba, preview, _ = read(page)
        alpha = rgba[..., 3]
        assert alpha.max() == 255 and (rgba[alpha > 0][:, :3] == 0).all(), "black only"
        heights = [int((alpha[BAR_ROW - 25 : BAR_ROW + 26, x] > 127).sum()) for x in range(90, 180)]
        assert set(heights) <= {19, 20, 21}, sorted(set(heights))  # PEN_WIDTH = 20
        # The ink is the alpha, as before colours counted: the preview is toMnist(alpha).
        expected = page.evaluate(
            """async (alpha) => {
            const { toMnist } = await import('./preprocess.js');
            return Array.from(toMnist(alpha, 280, 280));
        }""",
            alpha.flatten().tolist(),
        )
        np.testing.assert_allclose(preview.flatten(), np.clip(np.rint(expected), 0, 255), atol=1)
    page.close()


def test_a_seed_reproduces_the_adverse_drawing(browser, server):
    """Clear starts the pen again; with ?penseed= it is the same pen, so the same strokes come
    out the same (up to where the browser split the mouse path into events)."""
    page = open_pen_page(browser, server)
    page.check("[data-testid=adverse-pen]")
    drawings = []
    for _ in range(2):
        page.click("[data-testid=clear]")
        assert prediction(page)[0] == ""
        draw_and_wait(page, STROKES[0])
        drawings.append(read(page)[0].astype(np.int16))
    differs = (np.abs(drawings[0] - drawings[1]).max(axis=2) > 8).mean()
    print(f"two drawings with seed {SEED}: {differs:.2%} of pixels differ")
    assert differs < 0.01
    assert len({tuple(c) for c in drawings[0][drawings[0][..., 3] == 255][:, :3].tolist()}) >= 3
    page.close()


def test_bad_pen_seeds_are_refused(browser, server):
    page = open_pen_page(browser, server)
    messages = page.evaluate("""async () => {
        const { createPen, adverseAt } = await import('./pen.js');
        const out = [];
        for (const call of [() => createPen({ adverse: true, seed: -1 }), () => createPen({ seed: 2 ** 32 }),
                            () => adverseAt(1.5, 0), () => adverseAt(0, -3), () => adverseAt(0, NaN)]) {
            try { call(); out.push(null); } catch (e) { out.push(e instanceof RangeError ? e.message : String(e)); }
        }
        return out;
    }""")
    assert all(m and ("seed" in m or "distance" in m) for m in messages), json.dumps(messages)
    page.close()
