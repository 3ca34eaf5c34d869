"""`invoke bench`: our wasm builds against ONNX Runtime Web, in one headless Chromium run.

Prints, per runtime (ONNX Runtime Web, then each build in web/pkg: our kernels fast-relaxed and
fast-simd128, burn's flex, ndarray and wgpu): median and p90 predict time over N real MNIST test
digits (batch 1, one thread), the ratio to ONNX Runtime Web measured in the same run, accuracy
on those digits, wasm size (raw and gzip), the start time (module load to a ready classifier)
and the time from page load to the first prediction on index.html (median of a few loads).
Then the time of each stage of one forward pass (the builds' own `profile`) for our kernels
and burn's flex, side by side. Where models/capsnet.safetensors is committed, also the capsule
network picked in the page (`?model=capsnet`) on our kernels' builds, through window.mnist.predict,
with the size of its weights file as f32, f16 and int8.
Writes the same figures to reports/bench.json.

The pages are served cross-origin isolated (server/app.py), so performance.now() resolves 5 us,
not 100 us: a predict takes a fraction of a millisecond.

The wgpu build runs on the WebGPU adapter Chromium has: here SwiftShader, a CPU implementation
(see bench/browser.py), so its figures are CPU figures, not a GPU's.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from mnist_common.paths import DEFAULT_WEIGHTS, MODELS_DIR, REPORTS_DIR, ROOT, WEB_DIR
from server.app import make_server
from trainer import data
from trainer.export import export_onnx, load_model
from trainer.model import MNIST_MEAN, MNIST_STD

from .browser import CHROMIUM, WEBGPU_ARGS

WEB = WEB_DIR
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
ORT_WASM = ORT_DIST / "ort-wasm-simd-threaded.wasm"
ORT = "onnxruntime-web"
#: The wasm builds, in the order they are reported (those not built are left out).
BUILDS = ("fast-relaxed", "fast-simd128", "flex", "ndarray", "wgpu")
#: Builds also timed through the page's own API (window.mnist.predict on index.html: the
#: worker hand-off included), beside the raw classifier: the CPU builds.
PAGE_BUILDS = ("fast-relaxed", "fast-simd128", "flex", "ndarray")
#: Builds whose forward pass is shown stage by stage: our kernels and burn's flex.
PROFILED = ("fast-relaxed", "fast-simd128", "flex")
#: Forward passes the per-stage times average over.
PROFILE_REPEATS = 200
#: Page loads per build for the first-prediction time (its median is reported): one load
#: varies by tens of ms on a 2-core machine.
FIRST_PREDICTION_LOADS = 5
#: The digits are timed in this many rounds, each runtime in turn on a round's share: ORT-web
#: and every build then share whatever the machine does meanwhile, so the ratios hold when the
#: 2-core VM speeds up or slows down during a run (single runs timed one after another gave
#: the page 0.50x, then 0.81x ORT-web).
ROUNDS = 4
#: The capsule network (issue 24), timed through the page's API on our kernels' builds.
CAPSNET = MODELS_DIR / "capsnet.safetensors"
CAPSNET_BUILDS = ("fast-relaxed", "fast-simd128")


def ensure_ort() -> None:
    """Install onnxruntime-web (pinned in web/package.json) unless it is there."""
    if not ORT_WASM.exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=WEB, check=True)


def sizes(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    return len(raw), len(gzip.compress(raw, 9))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def built_builds() -> tuple[str, ...]:
    """The builds of BUILDS that web/pkg holds."""
    return tuple(b for b in BUILDS if (WEB / "pkg" / b / "mnist_wasm_bg.wasm").exists())


def runtime_name(build: str) -> str:
    """How a build is named in the report: ours by its name, burn's as "burn <backend>"."""
    return build if build.startswith("fast-") else f"burn {build}"


#: Run before the page's own scripts: the moment app.js publishes window.mnist, classify
#: `image`; window.firstPrediction is a Promise of the time it returned (ms from navigation).
#: So the figure is the page's, not the polling of a test driver (wait_for_function looks once
#: per animation frame, 16 ms, and first injects Playwright's own script, about 45 ms of the
#: page's main thread on a 2-core machine, while the page is still starting).
FIRST_PREDICTION_HOOK = """(image) => {
    let resolve;
    window.firstPrediction = new Promise((r) => { resolve = r; });
    let mnist;
    Object.defineProperty(window, "mnist", {
        configurable: true,
        get: () => mnist,
        set: (value) => {
            mnist = value;
            value.predict(image).then(() => resolve(performance.now()));
        },
    });
}"""


def page_name(build: str) -> str:
    """How a build timed through window.mnist.predict is named in the report."""
    return f"page {build}"


def require_backend(page, backend: str) -> None:
    """Raise RuntimeError unless ``page`` (index.html, its classifier loaded) runs ``backend``:
    a build that cannot start makes the page fall back to another, and its figures would be
    that one's."""
    running = page.evaluate("window.mnist.backend")
    if running != backend:
        raise RuntimeError(f"the page was asked for {backend} and runs {running}")


def open_page(browser, url: str, backend: str, model: str | None = None):
    """index.html?backend=``backend`` with its classifier loaded; with ``model``, that model of
    the picker (``?model=``) instead of the build's embedded one."""
    page = browser.new_page()
    page.goto(f"{url}?backend={backend}" + (f"&model={model}" if model else ""))
    page.wait_for_function("window.mnist !== undefined", timeout=60_000)
    if model:
        page.wait_for_function(f"window.mnist.model === {json.dumps(model)}", timeout=60_000)
    require_backend(page, backend)
    return page


def page_run(page, images: list[list[int]]) -> dict:
    """``window.mnist.predict`` once per image on a page of ``open_page`` (web/bench.js
    runPage): what a caller of the page's API gets."""
    return page.evaluate("async (imgs) => (await import('./bench.js')).runPage(imgs)", images)


def merge(runs: dict, name: str, run: dict) -> None:
    """Add one round's ``run`` of runtime ``name`` to ``runs``: its times and digits appended,
    its start time and profile kept from the first round that has one."""
    if name not in runs:
        runs[name] = {**run, "times": list(run["times"]), "digits": list(run["digits"])}
        return
    kept = runs[name]
    kept["times"] += run["times"]
    kept["digits"] += run["digits"]
    if kept.get("profile") is None and run.get("profile") is not None:
        kept["profile"] = run["profile"]


def capsnet_name(build: str) -> str:
    """How the capsule network's page run on a build is named in the report."""
    return f"page {build} capsnet"


def capsnet_weights_sizes() -> dict[str, int]:
    """Bytes of the committed capsnet's weights stored as f32, f16 (the committed file's dtype)
    and int8 (``mnist_common.weights.convert_weights``, what ``--weights-dtype`` does to embedded
    weights)."""
    from mnist_common.weights import convert_weights

    with tempfile.TemporaryDirectory() as folder:
        return {
            dtype: convert_weights(CAPSNET, Path(folder) / f"capsnet-{dtype}.safetensors", dtype).stat().st_size
            for dtype in ("f32", "f16", "int8")
        }


def first_prediction_ms(browser, url: str, backend: str, image: list[int]) -> float:
    """ms from navigation start to the first prediction returned on the real page, in a fresh
    browser context (nothing cached), asked for `backend` with ?backend=."""
    page = browser.new_page()
    page.add_init_script(script=f"({FIRST_PREDICTION_HOOK})({json.dumps(image)})")
    page.goto(f"{url}?backend={backend}", wait_until="commit")  # nothing of the driver's meanwhile
    ms = page.evaluate(  # awaits the Promise
        "Promise.race([window.firstPrediction, new Promise((_, reject) => "
        "setTimeout(() => reject(new Error('no prediction within a minute')), 60000))])"
    )
    require_backend(page, backend)
    page.close()
    return ms


def stage_block(stage: str, previous: int) -> int:
    """Where a profiled stage sits in the network, to line up builds whose stages differ
    (flex: conv1, norm1, gelu1, pool1; ours: one fused conv1 stage): 0 normalise, n for conv
    block n (conv/norm/gelu/pool n), 10 + n for fc n, 100 softmax; otherwise `previous`."""
    name = stage.lower()
    if name.startswith("normali"):
        return 0
    if name.startswith("softmax"):
        return 100
    match = re.match(r"(conv|norm|bn|gelu|pool|fc)(\d+)", name)
    if match is None:
        return previous
    return int(match[2]) + (10 if match[1] == "fc" else 0)


def stage_rows(profiles: dict[str, list[dict]]) -> list[str]:
    """Every stage name of `profiles` ({build: [{"stage", "ms"}, ...]}) once, ordered by its
    place in the network, then by build, then by its order within the build."""
    keys: dict[str, tuple[int, int, int]] = {}
    for column, stages in enumerate(profiles.values()):
        block = 0
        for position, entry in enumerate(stages):
            block = stage_block(entry["stage"], block)
            keys.setdefault(entry["stage"], (block, column, position))
    return sorted(keys, key=keys.get)


def per_layer_table(profiles: dict[str, list[dict]]) -> list[str]:
    """The per-stage profiles as text lines: one row per stage, one column per build."""
    rows = stage_rows(profiles)
    width = max(len(r) for r in [*rows, "stage"]) + 2
    columns = [max(len(b) + 2, 10) for b in profiles]
    lines = ["stage".ljust(width) + "".join(b.rjust(w) for b, w in zip(profiles, columns))]
    lines.append("-" * len(lines[0]))
    for row in rows:
        cells = []
        for stages, w in zip(profiles.values(), columns):
            ms = [e["ms"] for e in stages if e["stage"] == row]
            cells.append(f"{sum(ms):.4f}".rjust(w) if ms else "-".rjust(w))
        lines.append(row.ljust(width) + "".join(cells))
    lines.append("-" * len(lines[0]))
    totals = [f"{sum(e['ms'] for e in stages):.4f}".rjust(w) for stages, w in zip(profiles.values(), columns)]
    lines.append("sum of the stages".ljust(width) + "".join(totals))
    return lines


def main(images: int = 1000, backends: tuple[str, ...] | None = None) -> dict:
    """Measure `backends` (default: every build in web/pkg) and ONNX Runtime Web; print and
    write reports/bench.json; return the figures."""
    from playwright.sync_api import sync_playwright

    backends = built_builds() if backends is None else tuple(backends)
    if not backends:
        raise SystemExit("no wasm build in web/pkg: run `invoke build-wasm` first")
    ensure_ort()
    onnx_path = export_onnx(load_model(DEFAULT_WEIGHTS), WEB / "pkg" / "ort" / "model.onnx")
    test = data.load_split(train=False)
    digits = test.images[:images].reshape(images, -1).tolist()
    labels = test.labels[:images]

    default = "fast-simd128" if "fast-simd128" in backends else backends[0]
    server = make_server("127.0.0.1", 0, default, list(backends), log_requests=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        with sync_playwright() as p:
            # WebGPU on SwiftShader (a CPU implementation) for wgpu; the CPU builds do not use it.
            browser = p.chromium.launch(executable_path=CHROMIUM, args=WEBGPU_ARGS)
            page = browser.new_page()
            page.goto(url + "bench.html")
            page.wait_for_function("window.bench !== undefined")
            adapter = page.evaluate("window.bench.webgpuAdapter()")
            timer = page.evaluate("window.bench.timerResolution()")
            pages = {page_name(b): open_page(browser, url, b) for b in backends if b in PAGE_BUILDS}
            if CAPSNET.exists():
                for b in CAPSNET_BUILDS:
                    if b in backends:
                        pages[capsnet_name(b)] = open_page(browser, url, b, model="capsnet")
            runs: dict[str, dict] = {}
            share = -(-images // ROUNDS)
            for k, start in enumerate(range(0, images, share)):
                part = digits[start : start + share]
                print(f"round {k + 1} of {ROUNDS}: {len(part)} digits through each runtime in turn", flush=True)
                ort = page.evaluate(
                    "([m, mean, std, imgs]) => window.bench.runOrt(m, mean, std, imgs)",
                    [f"{url}pkg/ort/model.onnx", MNIST_MEAN, MNIST_STD, part],
                )
                merge(runs, ORT, ort)
                for b in backends:
                    repeats = PROFILE_REPEATS if b in PROFILED and k == 0 else 0
                    run = page.evaluate("([b, imgs, n]) => window.bench.runBuild(b, imgs, n)", [b, part, repeats])
                    merge(runs, runtime_name(b), run)
                for name, tab in pages.items():
                    merge(runs, name, page_run(tab, part))
            for tab in pages.values():
                tab.close()
            # Round robin, after one load that is not counted: whichever build went first would
            # otherwise also pay the browser's and the server's own warm-up (~60 ms here).
            first_prediction_ms(browser, url, backends[0], digits[0])
            first = {runtime_name(b): [] for b in backends}
            for _ in range(FIRST_PREDICTION_LOADS):
                for b in backends:
                    first[runtime_name(b)].append(first_prediction_ms(browser, url, b, digits[0]))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()

    wasm_files = {runtime_name(b): WEB / "pkg" / b / "mnist_wasm_bg.wasm" for b in backends}
    wasm_files.update({page_name(b): WEB / "pkg" / b / "mnist_wasm_bg.wasm" for b in backends})
    wasm_files.update({capsnet_name(b): WEB / "pkg" / b / "mnist_wasm_bg.wasm" for b in backends})
    wasm_files[ORT] = ORT_WASM
    results = summarise(runs, labels, wasm_files, first)
    profiles = {b: runs[runtime_name(b)]["profile"] for b in backends if runs[runtime_name(b)].get("profile")}
    results["_per_layer"] = {"image": "MNIST test digit 0", "repeats": PROFILE_REPEATS, "ms": profiles}
    if CAPSNET.exists():
        results["_capsnet_weights_bytes"] = capsnet_weights_sizes()
    results["_meta"] = {
        "images": images,
        "onnx_model_bytes": onnx_path.stat().st_size,
        "webgpu_adapter": adapter,
        "timer": timer,
        "page_handoff": {name: run["handoff"] for name, run in runs.items() if "handoff" in run},
        "note": "ORT wasm size excludes model.onnx; our wasm includes the weights",
    }
    report(results, images, onnx_path, adapter, timer)
    out = REPORTS_DIR / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return results


def summarise(runs: dict, labels, wasm_files: dict[str, Path], first: dict[str, list[float]]) -> dict:
    """Per runtime: median/p90 ms, ratio to ORT's median, accuracy, sizes, start and first
    prediction (the median of `first`'s page loads)."""
    baseline = statistics.median(runs[ORT]["times"])
    results: dict[str, dict] = {}
    for name, run in runs.items():
        median = statistics.median(run["times"])
        raw, gz = sizes(wasm_files[name])
        results[name] = {
            "median_ms": round(median, 4),
            "p90_ms": round(percentile(run["times"], 0.9), 4),
            "vs_ort": round(median / baseline, 2),
            "accuracy": (torch.tensor(run["digits"]) == labels).float().mean().item(),
            "init_ms": round(run["initMs"], 1) if run["initMs"] is not None else None,
            "wasm_bytes": raw,
            "wasm_gzip_bytes": gz,
            "first_prediction_ms": round(statistics.median(first[name]), 1) if name in first else None,
            "first_prediction_loads_ms": [round(ms, 1) for ms in first.get(name, [])],
        }
    return results


def report(results: dict, images: int, onnx_path: Path, adapter: dict | None, timer: dict) -> None:
    """Print the figures: one line per runtime, then the per-stage table."""
    isolated = "cross-origin isolated" if timer["crossOriginIsolated"] else "NOT cross-origin isolated"
    print(
        f"\nIn-browser inference, headless Chromium, batch 1, one thread, {images} MNIST test digits "
        f"(timer step {timer['stepMs'] * 1000:.0f} us, {isolated})"
    )
    header = (
        f"{'runtime':<27}{'median ms':>10}{'p90 ms':>9}{'vs ORT':>8}{'accuracy':>10}{'wasm MB':>9}"
        f"{'gzip MB':>9}{'start ms':>10}{'first pred ms':>15}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        if name.startswith("_"):
            continue
        first_ms = f"{r['first_prediction_ms']:.0f}" if r["first_prediction_ms"] is not None else "-"
        start_ms = f"{r['init_ms']:.0f}" if r["init_ms"] is not None else "-"
        print(
            f"{name:<27}{r['median_ms']:>10.3f}{r['p90_ms']:>9.3f}{r['vs_ort']:>7.2f}x{r['accuracy']:>10.2%}"
            f"{r['wasm_bytes'] / 1e6:>9.2f}{r['wasm_gzip_bytes'] / 1e6:>9.2f}{start_ms:>10}{first_ms:>15}"
        )
    print(
        "Our wasm sizes include the embedded weights (1.04 MB); ORT's exclude model.onnx "
        f"({onnx_path.stat().st_size / 1e6:.2f} MB)."
    )
    print(
        "page <build>: window.mnist.predict on index.html, as the page's users call it (the hand-off to "
        "the inference worker included); the others: the classifier called directly in bench.html."
    )
    print(
        "start: module load to a ready classifier, in the benchmark page; first pred: page load to the "
        f"first prediction on index.html (worker start included; median of {FIRST_PREDICTION_LOADS} loads)."
    )
    handoffs = set(results.get("_meta", {}).get("page_handoff", {}).values())
    if handoffs:
        print(f"The page handed images to its worker through: {', '.join(sorted(handoffs))}.")
    if "burn wgpu" in results:
        print(f"burn wgpu ran on the WebGPU adapter {adapter}.")
        if adapter and adapter["architecture"] == "swiftshader":
            print(
                "That is SwiftShader, Chromium's CPU implementation of WebGPU: the wgpu figures are CPU "
                "figures, not a GPU's."
            )
    if "_capsnet_weights_bytes" in results:
        b = results["_capsnet_weights_bytes"]
        print(
            "page <build> capsnet: the capsule network (models/capsnet.safetensors, f16) picked in the page, "
            "fetched from /models/ besides the wasm, its weights as "
            + ", ".join(f"{dtype} {n / 1e6:.2f} MB" for dtype, n in b.items())
            + "; its 'vs ORT' is against ORT running the cnn."
        )
    per_layer = results["_per_layer"]
    if per_layer["ms"]:
        print(
            f"\nPer stage, one forward pass of {per_layer['image']}, mean of {per_layer['repeats']} runs, ms "
            "(each build's own stages; - where a build has no such stage):"
        )
        print("\n".join(per_layer_table(per_layer["ms"])))
