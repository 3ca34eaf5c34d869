"""Shared fixtures: real MNIST data, the committed model, a served page in headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.browser import CHROMIUM, CHROMIUM_ARGS, WEBGPU_ARGS  # noqa: E402
from trainer import data  # noqa: E402
from trainer.export import load_model  # noqa: E402
from trainer.model import normalize  # noqa: E402

WEIGHTS = ROOT / "models" / "model.safetensors"
#: The venv's invoke, the one `./dev` runs.
INVOKE = shutil.which("invoke", path=str(Path(sys.executable).parent)) or "invoke"
#: The CPU builds, each tested against PyTorch: our kernels with relaxed SIMD (every browser the
#: tests run, headless Chromium, has it) and with plain simd128, and burn's flex and ndarray.
BACKENDS = ("fast-relaxed", "fast-simd128", "flex", "ndarray")
#: Set (to anything) to serve what web/pkg holds as it is, building nothing: for running browser
#: tests while the wasm is being rebuilt elsewhere. Without it the tests run `invoke serve`.
NO_BUILD = bool(os.environ.get("MNIST_TEST_NO_BUILD"))
#: Set by `invoke test` (the full suite): a missing native module is an error, not a reason to
#: skip the tests marked `native` (`invoke test --quick` runs without them).
REQUIRE_NATIVE = bool(os.environ.get("MNIST_REQUIRE_NATIVE"))


#: Under pytest-xdist (`invoke test`: one worker per core) each worker keeps to its share of the
#: cores, and so do the processes it starts (OMP_NUM_THREADS): PyTorch's default of a thread
#: per core made two workers' training runs fight for both cores (a capsule-network test's 20 s
#: took 90 s beside another worker). RAYON_NUM_THREADS: burn-flex's threads in mnist_infer.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    os.environ.setdefault("RAYON_NUM_THREADS", str(THREADS))
    torch.set_num_threads(THREADS)


#: Test files that run for minutes on one worker (training runs, WebGPU on SwiftShader, the
#: evaluation reports), slowest first. `invoke test` hands out whole files (`--dist loadfile`)
#: in collection order: collected last, one of them kept one core busy while the other idled.
SLOW_FIRST = ("test_train.py", "test_webgpu.py", "test_evaluate.py", "test_compare.py", "test_models_page.py")


def pytest_collection_modifyitems(session, config, items):
    """Put the files of SLOW_FIRST first (stable: the rest keep their order)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


def pytest_sessionstart(session):
    if REQUIRE_NATIVE:
        try:
            import mnist_infer  # noqa: F401
        except ImportError as e:
            pytest.exit(
                f"MNIST_REQUIRE_NATIVE is set but the native module is missing ({e}): `invoke setup` builds it",
                returncode=3,
            )


@pytest.fixture(scope="session")
def mnist_test() -> data.Split:
    """The 10,000 MNIST test digits (fetched and md5-checked on first use)."""
    return data.load_split(train=False)


@pytest.fixture(scope="session")
def model():
    """The committed default model, in eval mode."""
    return load_model(WEIGHTS)


@pytest.fixture(scope="session")
def torch_probabilities(mnist_test):
    """``torch_probabilities(backend)``: PyTorch's probabilities for the first 1,000 test
    digits, (1000, 10) float32, computed with the weights the wasm build ``backend`` embeds
    (``tasks.embedded_weights``: int8 for our kernels' builds by default, widened as the Rust
    reader widens them), so each build is held to today's tolerances."""
    import tasks

    images, cache = normalize(mnist_test.images[:1000].unsqueeze(1)), {}

    def of(backend: str) -> torch.Tensor:
        path = tasks.embedded_weights(backend)
        if path not in cache:
            with torch.no_grad():
                cache[path] = torch.softmax(load_model(path)(images), dim=1)
        return cache[path]

    return of


def non_digits() -> np.ndarray:
    """A few 28x28 images that are no digit, (6, 784) float32 0..255: noise, a filled block, a
    checkerboard, stripes, a dense zigzag scribble and a ring of dots."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (28, 28))]
    block = np.zeros((28, 28))
    block[4:24, 4:24] = 255
    images.append(block)
    yy, xx = np.mgrid[:28, :28]
    images.append(np.where((yy // 4 + xx // 4) % 2 == 0, 255.0, 0.0))
    images.append(np.where(yy % 6 < 3, 255.0, 0.0))
    scribble = Image.new("L", (28, 28))
    ImageDraw.Draw(scribble).line([(4 + 20 * (i % 2), 4 + 2 * i) for i in range(11)], fill=255, width=2)
    images.append(np.asarray(scribble, dtype=np.float64))
    dots = Image.new("L", (28, 28))
    for k in range(12):
        x, y = 14 + 9 * np.cos(k * np.pi / 6), 14 + 9 * np.sin(k * np.pi / 6)
        ImageDraw.Draw(dots).ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=255)
    images.append(np.asarray(dots, dtype=np.float64))
    return np.stack(images).reshape(-1, 784).astype(np.float32)


def with_metadata(tmp_path, name: str, changes: dict[str, str | None]):
    """A copy of the committed model with its metadata changed: a value sets a key (as
    trainer.export.update_metadata writes it), None removes it."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from trainer.export import update_metadata

    path = tmp_path / f"{name}.safetensors"
    tensors = load_file(WEIGHTS)
    with safe_open(WEIGHTS, "np") as f:
        metadata = {k: v for k, v in f.metadata().items() if changes.get(k, "") is not None}
    save_file(tensors, path, metadata=metadata)
    return update_metadata(path, {k: v for k, v in changes.items() if v is not None})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, seconds: float, what: str) -> None:
    """Wait until ``url`` answers; fail the test if ``proc`` exits or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not come up")
            time.sleep(0.5)


def invoke_serve(*options: str):
    """`invoke serve` on a free loopback port (it builds what is stale first); yields its URL."""
    if NO_BUILD:
        yield from serve_prebuilt(webgpu="--webgpu" in options)
        return
    port = free_port()
    proc = subprocess.Popen([INVOKE, "serve", "--port", str(port), *options], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(proc, url + "config.json", seconds=1200, what="invoke serve")  # a cold wasm build takes minutes
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def serve_prebuilt(webgpu: bool):
    """What `invoke serve` serves (with the same config.json), minus its builds (NO_BUILD)."""
    import tasks
    from server.app import make_server

    offered = [b for b in tasks.built_backends() if webgpu or b not in tasks.GPU_BACKENDS]
    server = make_server("127.0.0.1", 0, tasks.DEFAULT_BACKEND, offered, log_requests=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def server():
    """`invoke serve`: the page as users get it (no WebGPU build: ?backend=wgpu is not offered)."""
    yield from invoke_serve()


@pytest.fixture(scope="session")
def webgpu_server():
    """`invoke serve --webgpu`: the wgpu build is offered too (the page uses it when asked)."""
    yield from invoke_serve("--webgpu")


@pytest.fixture(scope="session")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (invoke setup installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright):
    """Headless Chromium without WebGPU (as on a machine with no usable GPU)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def webgpu_browser(playwright):
    """Headless Chromium with WebGPU on SwiftShader (Chromium's CPU implementation)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=WEBGPU_ARGS, headless=True)
    yield browser
    browser.close()


def load(page, url: str):
    """Open `url` in `page` and wait for its classifier; fails with the page's status and errors
    if window.mnist does not appear within a minute. Returns `page`."""
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    try:
        page.wait_for_function("window.mnist !== undefined", timeout=60_000)
    except Exception:
        status = page.locator("[data-testid=status]").inner_text()
        pytest.fail(f"window.mnist never appeared ({status}; errors: {errors})")
    return page


def open_page(browser, url: str, backend: str):
    """A page with the classifier loaded on `backend`; fails with the page's status if not."""
    return load(browser.new_page(), f"{url}?backend={backend}")


def canvas_to_viewport(page):
    """A function from drawing-canvas pixels (0..280) to the viewport's CSS pixels, where the
    pointer must go to draw there: the canvas's content box (inside its border), scaled to its
    rendered size."""
    box = page.evaluate(
        """() => { const c = document.querySelector('canvas[data-testid=draw]'), r = c.getBoundingClientRect();
                   return {x: r.left + c.clientLeft, y: r.top + c.clientTop, sx: c.clientWidth / c.width,
                           sy: c.clientHeight / c.height}; }"""
    )
    return lambda x, y: (box["x"] + x * box["sx"], box["y"] + y * box["sy"])


def open_as_a_user(browser, url, query="", before_load=None):
    """The page at `url` + `query`, once its model is loaded. Returns the page and what it
    shows: window.mnist.backend, the Backend line, the status line."""
    page = browser.new_page()
    if before_load:
        before_load(page)
    load(page, url + query)
    shown = (
        page.evaluate("window.mnist.backend"),
        page.locator("[data-testid=backend]").inner_text(),
        page.locator("[data-testid=status]").inner_text(),
    )
    print(f"backend {shown[0]!r}; status {shown[2]!r}")
    return page, shown
