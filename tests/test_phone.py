"""The page on a phone (issue 22): drawn on with a finger on a 390x844 touch screen, the canvas,
the predicted digit and the ten bars are all in sight without scrolling; on a desktop screen the
result stays beside the canvas."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT, canvas_to_viewport, load
from tests.test_browser import STROKES, prediction

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
REPORTS = ROOT / "reports"
README_SHOT = ROOT / "web" / "screenshots" / "phone.png"

#: The rendered boxes the assertions look at (CSS px, relative to the viewport), the scroll
#: position and the document's width. `covered`: points of the canvas (a 5x5 grid inside it)
#: and of each bar (its middle) where the topmost element is something else.
GEOMETRY = """() => {
    const box = (el) => { const r = el.getBoundingClientRect();
                          return {x: r.left, y: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height}; };
    const canvas = document.querySelector('canvas[data-testid=draw]');
    const c = canvas.getBoundingClientRect();
    const covered = [];
    for (let i = 1; i <= 5; i++) for (let j = 1; j <= 5; j++) {
        const x = c.left + c.width * i / 6, y = c.top + c.height * j / 6;
        const top = document.elementFromPoint(x, y);
        if (top !== canvas) covered.push(`canvas at (${x.toFixed(0)}, ${y.toFixed(0)}): ${top && top.outerHTML.slice(0, 80)}`);
    }
    const bars = [...document.querySelectorAll('#bars li')];
    for (const li of bars) {
        const r = li.getBoundingClientRect();
        const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        if (!li.contains(top)) covered.push(`bar ${li.firstChild.textContent}: ${top && top.outerHTML.slice(0, 80)}`);
    }
    // What else the page shows: none of it may overlap the canvas.
    const others = [...document.querySelectorAll(
        'header, footer, #prediction, #bars, .row, .models, figure, button, select, label, #status')];
    return {
        canvas: box(canvas),
        prediction: box(document.querySelector('[data-testid=prediction]')),
        digit: box(document.getElementById('digit')),
        bars: bars.map(box),
        others: others.map((el) => ({what: el.tagName + (el.id ? '#' + el.id : '') + (el.className ? '.' + el.className : ''),
                                     ...box(el)})),
        covered,
        scrollX: window.scrollX, scrollY: window.scrollY,
        docWidth: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
        innerWidth: window.innerWidth, innerHeight: window.innerHeight,
    };
}"""


def touch_draw(page, polylines):
    """Draw `polylines` (canvas pixels, 280x280) with a finger: CDP touch events, which Chromium
    turns into the pointer events (pointerType "touch") that the page listens to."""
    cdp = page.context.new_cdp_session(page)
    to_viewport = canvas_to_viewport(page)

    def at(x, y):
        x, y = to_viewport(x, y)
        return {"x": x, "y": y}

    for line in polylines:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [at(*line[0])]})
        for (x0, y0), (x1, y1) in zip(line, line[1:]):
            for k in range(1, 9):  # 8 steps a segment, as test_browser.draw's mouse moves
                t = k / 8
                cdp.send(
                    "Input.dispatchTouchEvent",
                    {"type": "touchMove", "touchPoints": [at(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)]},
                )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def inside(b, viewport):
    return (
        b["x"] >= 0
        and b["y"] >= 0
        and b["right"] <= viewport["width"] + 0.5
        and b["bottom"] <= viewport["height"] + 0.5
    )


def overlaps(a, b):
    return (
        min(a["right"], b["right"]) - max(a["x"], b["x"]) > 0.5
        and min(a["bottom"], b["bottom"]) - max(a["y"], b["y"]) > 0.5
    )


@pytest.fixture
def phone(browser):
    context = browser.new_context(viewport=PHONE, device_scale_factor=3, is_mobile=True, has_touch=True)
    yield context
    context.close()


def test_on_a_phone_the_answer_is_in_sight_while_a_finger_draws(phone, server):
    page = load(phone.new_page(), server)
    page.evaluate("""() => {
        window.__pointerTypes = [];
        document.getElementById('draw').addEventListener('pointerdown', (e) => window.__pointerTypes.push(e.pointerType));
    }""")
    assert page.evaluate("matchMedia('(pointer: coarse)').matches"), "the context does not emulate a touch screen"

    touch_draw(page, STROKES[7])
    page.wait_for_function(
        "document.querySelector('[data-testid=prediction]').dataset.seq > 0 && window.mnist.lastPixels !== null",
        timeout=10_000,
    )
    page.wait_for_timeout(300)  # the last (MC-dropout) answer and the bars' 80 ms transition
    digit, seq, probs = prediction(page)
    assert page.evaluate("window.__pointerTypes") == ["touch"] * len(STROKES[7])
    assert seq > 0
    assert digit == "7", f"a 7 drawn with a finger was read as {digit} ({probs})"

    REPORTS.mkdir(exist_ok=True)
    page.screenshot(path=str(REPORTS / "phone.png"))
    shutil.copyfile(REPORTS / "phone.png", README_SHOT)

    g = page.evaluate(GEOMETRY)
    print(
        {k: g[k] for k in ("canvas", "prediction", "scrollY", "docWidth", "innerWidth", "innerHeight")}, g["bars"][-1]
    )
    assert (g["innerWidth"], g["innerHeight"]) == (PHONE["width"], PHONE["height"])
    assert g["scrollX"] == 0 and g["scrollY"] == 0, "drawing scrolled the page"
    assert g["docWidth"] <= PHONE["width"], f"the page is {g['docWidth']} px wide: it scrolls sideways"
    assert g["canvas"]["width"] >= 250, f"the canvas is only {g['canvas']['width']} px wide"
    assert abs(g["canvas"]["width"] - g["canvas"]["height"]) < 1, "the canvas is not square"
    for name in ("canvas", "prediction", "digit"):
        assert inside(g[name], PHONE), f"{name} is not all in sight: {g[name]}"
    assert len(g["bars"]) == 10
    for d, bar in enumerate(g["bars"]):
        assert inside(bar, PHONE), f"bar {d} is not all in sight: {bar}"
        assert bar["height"] > 0 and bar["width"] > 100, f"bar {d} is squashed: {bar}"
    assert g["covered"] == [], "something lies over the canvas or a bar"
    assert [o for o in g["others"] if overlaps(o, g["canvas"])] == [], "something overlaps the canvas"


def test_on_a_desktop_the_result_stays_beside_the_canvas(browser, server):
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = load(context.new_page(), server)
        g = page.evaluate(GEOMETRY)
        result = page.locator("section.result").bounding_box()
        canvas = g["canvas"]
        assert (canvas["width"], canvas["height"]) == (284, 284), "the canvas is 280 CSS px and its border, as before"
        assert result["x"] >= canvas["right"], f"the result is not right of the canvas: {result} vs {canvas}"
        assert result["y"] < canvas["bottom"] and canvas["y"] < result["y"] + result["height"], "not side by side"
        for name in ("canvas", "prediction", "digit"):
            assert inside(g[name], DESKTOP), f"{name} is not all in sight: {g[name]}"
        assert all(inside(bar, DESKTOP) for bar in g["bars"])
        assert g["covered"] == []
        assert [o for o in g["others"] if overlaps(o, g["canvas"])] == []
        assert g["docWidth"] <= DESKTOP["width"]
    finally:
        context.close()
