"""`invoke bench`: our wasm builds against ONNX Runtime Web, in one headless Chromium run.

Prints, per runtime: median and p90 predict time over N real MNIST test digits (batch 1, one
thread), the ratio to ONNX Runtime Web measured in the same run, accuracy on those digits,
wasm size (raw and gzip), the start time (module load to a ready classifier) and the time from
page load to the first prediction on index.html. Writes the same figures to reports/bench.json.

The wgpu build runs on the WebGPU adapter Chromium has: here SwiftShader, a CPU implementation
(see web/browser.py), so its figures are CPU figures, not a GPU's.
"""

from __future__ import annotations

import gzip
import json
import statistics
import subprocess
import threading
from pathlib import Path

import torch

from trainer import data
from trainer.export import export_onnx, load_model
from trainer.model import MNIST_MEAN, MNIST_STD

from .browser import CHROMIUM, WEBGPU_ARGS
from .server import make_server

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
ORT_WASM = ORT_DIST / "ort-wasm-simd-threaded.wasm"


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


def first_prediction_ms(browser, url: str, backend: str, image: list[int]) -> float:
    """ms from navigation start to the first prediction returned on the real page."""
    page = browser.new_page()
    page.goto(f"{url}?backend={backend}")
    page.wait_for_function("window.mnist !== undefined", timeout=60_000)
    running = page.evaluate("window.mnist.backend")
    if running != backend:
        raise RuntimeError(f"the page was asked for {backend} and runs {running}")
    ms = page.evaluate("async (img) => { await window.mnist.predict(img); return performance.now(); }", image)
    page.close()
    return ms


def main(images: int = 1000, backends: tuple[str, ...] = ("ndarray", "flex", "wgpu")) -> dict:
    from playwright.sync_api import sync_playwright

    ensure_ort()
    onnx_path = export_onnx(load_model(ROOT / "models" / "model.safetensors"), WEB / "pkg" / "ort" / "model.onnx")
    test = data.load_split(train=False)
    digits = test.images[:images].reshape(images, -1).tolist()
    labels = test.labels[:images]

    server = make_server("127.0.0.1", 0, "flex", list(backends))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    results: dict[str, dict] = {}
    try:
        with sync_playwright() as p:
            # WebGPU on SwiftShader (a CPU implementation) for wgpu; the CPU builds do not use it.
            browser = p.chromium.launch(executable_path=CHROMIUM, args=WEBGPU_ARGS)
            page = browser.new_page()
            page.goto(url + "bench.html")
            page.wait_for_function("window.bench !== undefined")
            adapter = page.evaluate("window.bench.webgpuAdapter()")
            runs = {f"burn {b}": page.evaluate("([b, imgs]) => window.bench.runBurn(b, imgs)", [b, digits]) for b in backends}
            runs["onnxruntime-web"] = page.evaluate(
                "([m, mean, std, imgs]) => window.bench.runOrt(m, mean, std, imgs)",
                [f"{url}pkg/ort/model.onnx", MNIST_MEAN, MNIST_STD, digits],
            )
            first = {f"burn {b}": first_prediction_ms(browser, url, b, digits[0]) for b in backends}
            browser.close()
    finally:
        server.shutdown()
        server.server_close()

    wasm_files = {f"burn {b}": WEB / "pkg" / b / "mnist_wasm_bg.wasm" for b in backends}
    wasm_files["onnxruntime-web"] = ORT_WASM
    baseline = statistics.median(runs["onnxruntime-web"]["times"])
    for name, run in runs.items():
        median = statistics.median(run["times"])
        raw, gz = sizes(wasm_files[name])
        results[name] = {
            "median_ms": round(median, 3),
            "p90_ms": round(percentile(run["times"], 0.9), 3),
            "vs_ort": round(median / baseline, 2),
            "accuracy": (torch.tensor(run["digits"]) == labels).float().mean().item(),
            "init_ms": round(run["initMs"], 1),
            "wasm_bytes": raw,
            "wasm_gzip_bytes": gz,
            "first_prediction_ms": round(first[name], 1) if name in first else None,
        }
    results["_meta"] = {"images": images, "onnx_model_bytes": onnx_path.stat().st_size, "webgpu_adapter": adapter,
                        "note": "ORT wasm size excludes model.onnx; burn wasm includes the weights"}

    print(f"\nIn-browser inference, headless Chromium, batch 1, one thread, {images} MNIST test digits")
    header = (f"{'runtime':<17}{'median ms':>10}{'p90 ms':>9}{'vs ORT':>8}{'accuracy':>10}{'wasm MB':>9}"
              f"{'gzip MB':>9}{'start ms':>10}{'first pred ms':>15}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        if name.startswith("_"):
            continue
        first_ms = f"{r['first_prediction_ms']:.0f}" if r["first_prediction_ms"] is not None else "-"
        print(f"{name:<17}{r['median_ms']:>10.2f}{r['p90_ms']:>9.2f}{r['vs_ort']:>7.2f}x{r['accuracy']:>10.2%}"
              f"{r['wasm_bytes'] / 1e6:>9.2f}{r['wasm_gzip_bytes'] / 1e6:>9.2f}{r['init_ms']:>10.0f}{first_ms:>15}")
    print("burn wasm sizes include the embedded weights (1.04 MB); ORT's exclude model.onnx "
          f"({onnx_path.stat().st_size / 1e6:.2f} MB).")
    print("start: module load to a ready classifier, in the benchmark page; first pred: page load to the "
          "first prediction on index.html (worker start included).")
    if "burn wgpu" in results:
        print(f"burn wgpu ran on the WebGPU adapter {adapter}.")
        if adapter and adapter["architecture"] == "swiftshader":
            print("That is SwiftShader, Chromium's CPU implementation of WebGPU: the wgpu figures are CPU "
                  "figures, not a GPU's.")
    out = ROOT / "reports" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return results
