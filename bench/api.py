"""`invoke bench-api`: POST /api/predict under load, and the native model against PyTorch.

One run, on real MNIST test digits, measures and prints:

* the API (server/app.py started in this process on a free loopback port, request logging
  off): requests per second, median and p95 latency in ms, for JSON ``{"pixels": [...]}``
  bodies and for PNG files (112x112, dark ink on white) sent as multipart/form-data, first
  from one client (sequential), then from ``concurrency`` clients at once. Every answer must
  be 200; the share whose label is the digit's true label is shown as a check.
* the model alone, per image: ``mnist_infer.predict`` (native Rust, what the API uses) and the
  committed model in PyTorch (eval, no_grad, torch's default thread count; same contract:
  numpy float32 in, probabilities out), on single images (median over ``min(requests, 1000)``)
  and on one batch of 1,000 (best of 5, divided by 1,000), with the PyTorch/native ratio.

Client and server share this process and its GIL, so the API figures are those of a local
client on the same cores, not of the server alone. Without ``mnist_infer`` the API runs on
PyTorch and the native column is left out (build it with ``./dev serve`` / ``invoke setup``).
Writes the figures to reports/api_bench.json too.
"""

from __future__ import annotations

import http.client
import io
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageOps

from mnist_common.paths import REPORTS_DIR, ROOT
from server.api import PREDICT_PATH
from server.app import make_server
from trainer import data
from trainer.export import torch_predictor

BOUNDARY = "----api-bench-boundary"
BATCH = 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def json_request(image: np.ndarray) -> tuple[bytes, str]:
    return json.dumps({"pixels": image.reshape(784).tolist()}).encode(), "application/json"


def png_request(image: np.ndarray) -> tuple[bytes, str]:
    """The digit upscaled to 112x112, dark on white, as a PNG in a multipart/form-data body."""
    picture = ImageOps.invert(Image.fromarray(image, "L").resize((112, 112), Image.BILINEAR))
    png = io.BytesIO()
    picture.save(png, "PNG")
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="digit.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def post(port: int, body: bytes, content_type: str) -> tuple[float, int, int]:
    """One request on a new connection: (seconds, status, predicted label or -1)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", PREDICT_PATH, body, {"Content-Type": content_type})
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    label = json.loads(answer)["predictions"]["prediction"]["label"] if response.status == 200 else -1
    return seconds, response.status, label


def load(port: int, requests: list[tuple[bytes, str]], labels: list[int], clients: int) -> dict:
    """Send every request, from ``clients`` threads; throughput, latency, status and labels."""
    start = time.perf_counter()
    if clients == 1:
        results = [post(port, body, kind) for body, kind in requests]
    else:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda r: post(port, *r), requests))
    wall = time.perf_counter() - start
    latencies = [r[0] * 1000 for r in results]
    failed = sum(r[1] != 200 for r in results)
    if failed:
        raise RuntimeError(f"{failed} of {len(results)} requests were not answered 200")
    return {
        "clients": clients,
        "requests": len(results),
        "requests_per_s": len(results) / wall,
        "median_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 0.95),
        "accuracy": float(np.mean([r[2] == label for r, label in zip(results, labels)])),
    }


def time_predict(predict, images: np.ndarray, singles: int) -> dict:
    """ms per image: median of single-image calls, and a batch of BATCH (best of 5) / BATCH."""
    pixels = images.reshape(len(images), 784).astype(np.float32)
    for row in pixels[:20]:  # warm-up
        predict(row)
    single = []
    for row in pixels[:singles]:
        start = time.perf_counter()
        predict(row)
        single.append((time.perf_counter() - start) * 1000)
    batch = pixels[:BATCH]
    best = min(timed(predict, batch) for _ in range(5))
    return {
        "single_median_ms": statistics.median(single),
        "single_p95_ms": percentile(single, 0.95),
        "batch_ms_per_image": best * 1000 / len(batch),
    }


def timed(predict, batch: np.ndarray) -> float:
    start = time.perf_counter()
    predict(batch)
    return time.perf_counter() - start


def native_predict():
    try:
        import mnist_infer
    except ImportError:
        return None
    return mnist_infer.predict


def native_flex_predict():
    """burn's own flex kernels natively, for comparison with the default (our kernels)."""
    import mnist_infer

    return mnist_infer.Classifier(backend="flex").predict


def main(requests: int = 1000, concurrency: int = 8) -> dict:
    """Run the benchmark (see the module docstring); returns the figures it prints."""
    test = data.load_split(train=False)
    images = test.images.numpy()
    labels = test.labels.tolist()
    picks = [i % len(images) for i in range(requests)]
    native = native_predict()
    torch_predict = torch_predictor()
    classifier = "mnist_infer (native)" if native else "PyTorch (mnist_infer is not built)"

    server = make_server("127.0.0.1", 0, "flex", ["flex"], classify_pixels=native or torch_predict, log_requests=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = []
    try:
        for name, make in (("JSON pixels", json_request), ("PNG multipart", png_request)):
            bodies = [make(images[i]) for i in picks]
            load(server.server_port, bodies[:20], [labels[i] for i in picks[:20]], 1)  # warm-up
            for clients in (1, concurrency):
                api.append({"input": name, **load(server.server_port, bodies, [labels[i] for i in picks], clients)})
    finally:
        server.shutdown()
        server.server_close()

    singles = min(requests, 1000)
    model = {"pytorch": time_predict(torch_predict, images, singles)}
    if native:
        import mnist_infer

        native_name = f"native {mnist_infer.BACKEND}"
        model[native_name] = time_predict(native, images, singles)
        model["native flex"] = time_predict(native_flex_predict(), images, singles)

    print(f"\nPOST {PREDICT_PATH}, {requests} MNIST test digits per row, classifier: {classifier}")
    header = f"{'input':<15}{'clients':>8}{'req/s':>9}{'median ms':>11}{'p95 ms':>9}{'top-1':>8}"
    print(header)
    print("-" * len(header))
    for r in api:
        print(
            f"{r['input']:<15}{r['clients']:>8}{r['requests_per_s']:>9.0f}{r['median_ms']:>11.2f}"
            f"{r['p95_ms']:>9.2f}{r['accuracy']:>8.1%}"
        )

    print(
        f"\npredict, ms per image (PyTorch {torch.__version__}, {torch.get_num_threads()} threads; "
        "native: one thread for our kernels, rayon threads for flex)"
    )
    columns = [name for name in model if name != "pytorch"]
    header = f"{'':<24}" + "".join(f"{name:>18}" for name in columns) + f"{'PyTorch':>10}"
    print(header)
    print("-" * len(header))
    rows = (
        ("single image, median", "single_median_ms"),
        ("single image, p95", "single_p95_ms"),
        (f"batch of {BATCH}", "batch_ms_per_image"),
    )
    for title, key in rows:
        theirs = model["pytorch"][key]
        cells = "".join(f" {model[name][key]:>9.3f} ({theirs / model[name][key]:>4.2f}x)" for name in columns)
        print(f"{title:<24}{cells}{theirs:>10.3f}")
    if native:
        print("(Nx): PyTorch's time / this one's; above 1 the native module is faster than PyTorch")

    results = {
        "classifier": classifier,
        "requests": requests,
        "concurrency": concurrency,
        "api": api,
        "predict_ms_per_image": model,
        "torch_threads": torch.get_num_threads(),
    }
    out = REPORTS_DIR / "api_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return results


if __name__ == "__main__":
    main()
