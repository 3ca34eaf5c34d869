"""web/ is a static site: `python -m http.server` run in web/ (the design card's local server)
serves a page that predicts and switches models, from the config.json and models/ the build
writes there (`invoke build-wasm`, `invoke serve`)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from mnist_common.paths import WEB_DIR
from tests.conftest import free_port, wait_until_serving

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def static_site(server):
    """`python -m http.server` in web/ (after `invoke serve` has built what it serves)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=WEB_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(proc, url, seconds=30, what="python -m http.server")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def fetch_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def test_the_static_config_lists_what_the_server_lists(static_site, server):
    static, served = fetch_json(static_site + "config.json"), fetch_json(server + "config.json")
    assert static["default"] == served["default"]
    assert static["embedded"] == served["embedded"]
    assert [m["name"] for m in static["models"]] == [m["name"] for m in served["models"]]
    assert set(static["backends"]) >= {static["default"], "fast-relaxed"}
    for entry in static["models"]:  # every listed weights file is there, byte for byte
        with urllib.request.urlopen(static_site + entry["url"], timeout=10) as a:
            with urllib.request.urlopen(server + entry["url"], timeout=10) as b:
                assert a.read() == b.read(), entry["url"]


def test_the_static_page_predicts_and_switches_models(static_site, browser, mnist_test):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(static_site)
    page.wait_for_function("window.mnist !== undefined", timeout=60_000)
    # http.server sends no COOP/COEP headers: no shared memory, so the page keeps to messages.
    assert page.evaluate("window.mnist.handoff") == "messages (the page is not cross-origin isolated)"
    images = [mnist_test.images[i].flatten().tolist() for i in range(20)]
    labels = [int(mnist_test.labels[i]) for i in range(20)]

    def predicted():
        probs = page.evaluate("async (images) => Promise.all(images.map((i) => window.mnist.predict(i)))", images)
        return [max(range(10), key=p.__getitem__) for p in probs]

    assert sum(p == y for p, y in zip(predicted(), labels)) >= 19
    others = [name for name in page.evaluate("window.mnist.models") if name != page.evaluate("window.mnist.model")]
    assert others, "the static config lists one model only"
    page.evaluate("(name) => window.mnist.load(name)", others[0])
    assert page.evaluate("window.mnist.model") == others[0]
    assert sum(p == y for p, y in zip(predicted(), labels)) >= 19
    assert errors == []
    page.close()
