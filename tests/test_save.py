"""Saving labelled drawings from the page (issue 15): draw, label, save through the real page
and server into SQLite, restart the server, find them again, pixels and strokes intact."""

import json
import threading
import urllib.request

import numpy as np
import pytest

from tests.conftest import open_page
from tests.test_browser import STROKES, draw

pytestmark = pytest.mark.browser


def start(db):
    import tasks
    from server.app import make_server

    offered = [b for b in tasks.built_backends() if b not in tasks.GPU_BACKENDS]
    server = make_server("127.0.0.1", 0, tasks.DEFAULT_BACKEND, offered, log_requests=False, samples_db=db)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/"


def stop(server):
    server.shutdown()
    server.server_close()


def saved(url):
    with urllib.request.urlopen(url + "api/samples?limit=100") as response:
        return json.load(response)


def test_drawings_are_saved_with_their_label_and_survive_a_restart(browser, tmp_path):
    db = tmp_path / "samples.db"
    server, url = start(db)
    page = open_page(browser, url, "fast-relaxed")
    status = page.locator("[data-testid=status]")
    page.click("[data-testid=save]")
    assert "draw a digit first" in status.inner_text()
    kept = []
    for digit, label in [(7, "7"), (1, "7")]:  # the second: a 1 the writer says is a 7
        page.click("[data-testid=clear]")
        draw(page, STROKES[digit])
        page.wait_for_function("document.querySelector('[data-testid=prediction]').dataset.unsure !== ''")
        assert page.locator("[data-testid=label]").input_value() == str(digit)  # preset: the prediction
        page.select_option("[data-testid=label]", label)
        kept.append(page.evaluate("window.mnist.lastPixels"))
        page.click("[data-testid=save]")
        page.wait_for_function(
            "document.querySelector('[data-testid=status]').textContent.startsWith('saved as sample')"
        )
    page.close()
    stop(server)

    server, url = start(db)  # a new server on the same database
    answer = saved(url)
    stop(server)
    assert answer["total"] == 2 and answer["next"] is None
    for sample, pixels, digit in zip(answer["samples"], kept, [7, 1]):
        assert sample["label"] == 7 and sample["predicted"] == digit and sample["model"] == "cnn"
        assert np.array_equal(sample["pixels"], np.floor(np.array(pixels) + 0.5).astype(int))
        assert sample["canvas"] == [280, 280] and sample["pen_width"] == 20
        strokes = sample["strokes"]
        assert len(strokes) == len(STROKES[digit]) and len(strokes[0]) >= len(STROKES[digit][0])
        # Where the pointer went, in canvas pixels (the canvas's border is not part of it).
        for stroke, drawn in zip(strokes, STROKES[digit]):
            for (x, y, _), (want_x, want_y) in zip((stroke[0], stroke[-1]), (drawn[0], drawn[-1])):
                assert abs(x - want_x) <= 0.5 and abs(y - want_y) <= 0.5, (x, y, want_x, want_y)
        times = [t for stroke in strokes for _, _, t in stroke]
        assert times == sorted(times) and times[0] == 0


def test_a_refused_save_says_why(browser, tmp_path):
    (tmp_path / "samples.db").mkdir()  # a folder where the database file should be
    server, url = start(tmp_path / "samples.db")
    page = open_page(browser, url, "fast-relaxed")
    draw(page, STROKES[0])
    page.wait_for_function("document.querySelector('[data-testid=prediction]').dataset.unsure !== ''")
    page.click("[data-testid=save]")
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.startsWith('not saved')")
    page.close()
    stop(server)
