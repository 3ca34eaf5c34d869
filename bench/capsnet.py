"""The committed-size capsule network (``mnist_common.plan.CAPSNET``: conv 1->128 9x9, 8 primary
capsule types of 8 values (9x9, stride 2), 10 x 16-D digit capsules with 3 routing iterations,
decoder 160-512-1024-784) natively: median single-image ``predict`` and ``reconstruct`` per
backend of the native module (our kernels on each instruction set, burn's flex and ndarray), and
each backend's largest difference from PyTorch on the same digits (logits, reconstruction / 255).

The weights are PyTorch's initialisation (seeded), written with ``trainer.export``: what a
forward pass costs does not depend on their values (no branch on them but the decoder's mask).

With ``--wasm``, also the page's builds of our kernels that are built (``web/pkg/fast-relaxed``,
``web/pkg/fast-simd128``: ``invoke build-wasm``), each loading the same file with
``Classifier.fromBytes`` in Node (``bench/capsnet_wasm.mjs``; V8, as Chromium, without the page).

    .venv/bin/python -m bench.capsnet [--images 200] [--backends fast-avx2,flex] [--wasm]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer import data
from trainer.export import save_safetensors
from trainer.model import build, normalize

#: Calls before timing (first-touch of the weights, allocator warm-up).
WARM_UP = 10
ROOT = Path(__file__).resolve().parent.parent
#: The page's builds of our kernels, timed in Node with --wasm where built.
WASM_BUILDS = ("fast-relaxed", "fast-simd128")


def capsnet(directory: Path):
    """The committed-size capsnet, freshly initialised (seed 0), in eval mode, and its
    safetensors file in ``directory``."""
    torch.manual_seed(0)
    model = build("capsnet").eval()
    return model, save_safetensors(model, directory / "capsnet.safetensors")


def median_ms(call, images: np.ndarray) -> float:
    """Median ms of ``call`` on each image (784 values) of ``images`` alone, after a warm-up."""
    for image in images[:WARM_UP]:
        call(image)
    times = []
    for image in images:
        start = time.perf_counter()
        call(image)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    import mnist_infer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="MNIST test digits timed per backend")
    parser.add_argument("--backends", default=",".join(mnist_infer.BACKENDS), help="comma-separated")
    parser.add_argument("--wasm", action="store_true", help="also the built web/pkg/fast-* in Node")
    args = parser.parse_args(argv)
    images = data.load_split(train=False).images[: args.images].reshape(-1, 784).float().numpy()
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        model, path = capsnet(Path(directory))
        with torch.no_grad():
            x = normalize(torch.from_numpy(images).reshape(-1, 1, 28, 28))
            logits, reconstruction = model(x).numpy(), model.reconstruct(x).numpy()
        for backend in args.backends.split(","):
            classifier = mnist_infer.Classifier(path, backend=backend)
            results[backend] = {
                "predict_ms": median_ms(classifier.predict, images),
                "reconstruct_ms": median_ms(classifier.reconstruct, images),
                "logit_diff": float(np.abs(classifier.logits(images) - logits).max()),
                "reconstruction_diff": float(np.abs(classifier.reconstruct(images)[1] / 255 - reconstruction).max()),
            }
            r = results[backend]
            print(
                f"{backend:12s} median predict {r['predict_ms']:6.2f} ms, reconstruct {r['reconstruct_ms']:6.2f} ms "
                f"({args.images} single MNIST test digits); vs PyTorch max |logit diff| {r['logit_diff']:.1e}, "
                f"reconstruction {r['reconstruction_diff']:.1e}",
                flush=True,
            )
        if args.wasm:
            digits = Path(directory) / "digits.f32"
            images.astype(np.float32).tofile(digits)
            results.update(wasm_times(path, digits))
    return results


def wasm_times(model: Path, digits: Path) -> dict[str, dict[str, float]]:
    """Each built page build of our kernels on ``model`` in Node (``bench/capsnet_wasm.mjs``)."""
    from .node import node_wasm_flags

    if shutil.which("node") is None:
        print("no Node.js: the wasm builds are not timed")
        return {}
    results = {}
    for name in WASM_BUILDS:
        pkg = ROOT / "web" / "pkg" / name
        if not (pkg / "mnist_wasm.js").exists():
            print(f"{name}: not built (invoke build-wasm --backend {name})")
            continue
        script = ROOT / "bench" / "capsnet_wasm.mjs"
        out = subprocess.run(
            ["node", *node_wasm_flags(), script, pkg, model, digits], capture_output=True, text=True, check=True
        ).stdout
        r = json.loads(out.splitlines()[-1])
        stages = ", ".join(f"{s['stage'].split(':')[0].split(' + ')[0]} {s['ms']:.2f}" for s in r["profile"])
        print(
            f"{name:12s} median predict {r['predict_ms']:6.2f} ms, reconstruct {r['reconstruct_ms']:6.2f} ms "
            f"({r['digits']} single MNIST test digits, wasm in Node); per stage (mean ms): {stages}",
            flush=True,
        )
        results[f"wasm {name}"] = {k: r[k] for k in ("predict_ms", "reconstruct_ms")}
    return results


if __name__ == "__main__":
    main()
