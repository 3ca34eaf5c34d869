"""Write the Rust parity fixture: real MNIST test digits with PyTorch's logits for them.

``wasm-infer/mnist-model/tests/parity.rs`` loads the same ``models/model.safetensors`` in burn and
must reproduce these logits (max abs difference <= 1e-4, identical top-1). Regenerate after
changing the default model: ``invoke fixtures`` (``invoke train`` does it for you).

File layout (safetensors): ``images`` uint8 (N, 784), ink = 255; ``labels`` int64 (N,);
``logits`` float32 (N, 10) from ``Net`` in eval mode.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from mnist_common.paths import ROOT

from . import data
from .export import load_model
from .model import normalize
from .train import DEFAULT_OUT_DIR

FIXTURE_PATH = ROOT / "wasm-infer" / "mnist-model" / "tests" / "fixtures" / "mnist_parity.safetensors"
DEFAULT_COUNT = 200


@torch.no_grad()
def write_fixture(
    weights: Path = DEFAULT_OUT_DIR / "model.safetensors",
    out: Path = FIXTURE_PATH,
    count: int = DEFAULT_COUNT,
    data_dir: Path = data.DEFAULT_DATA_DIR,
) -> Path:
    """Write the first ``count`` MNIST test digits with their PyTorch logits to ``out``."""
    model = load_model(weights)
    test = data.load_split(train=False, data_dir=data_dir)
    images = test.images[:count].contiguous()
    logits = model(normalize(images.unsqueeze(1)))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "images": images.reshape(count, -1).to(torch.uint8),
            "labels": test.labels[:count].to(torch.int64).contiguous(),
            "logits": logits.to(torch.float32).contiguous(),
        },
        str(out),
        metadata={"weights": weights.name, "source": "MNIST t10k, first images"},
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=DEFAULT_OUT_DIR / "model.safetensors")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    args = parser.parse_args(argv)
    print(f"wrote {write_fixture(args.weights, count=args.count)}")


if __name__ == "__main__":
    main()
