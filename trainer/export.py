"""Write and read the hand-off file between PyTorch and Rust: ``model.safetensors``.

The file holds the model's state_dict (float32, PyTorch names, ``num_batches_tracked``
dropped) and string metadata:

- ``architecture``: the architecture's id (``mnist_common.plan.Architecture.id``), for people and
  tools; files written before layer plans existed hold only ``mnist-conv-bn-gelu-v1`` (the
  ``cnn``), and readers take that plan for them;
- ``layers``: the layer plan as JSON (``mnist_common.plan.layers_to_json``): what the Python and
  Rust readers build the network from;
- ``mnist_mean`` / ``mnist_std``: the input normalisation, read by the Rust crate;
- ``input``: the input layout in words;
- ``test_accuracy`` and library versions, for people.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from mnist_common.constants import IMAGE_SIZE, MNIST_MEAN, MNIST_STD, NUM_PIXELS
from mnist_common.paths import DEFAULT_WEIGHTS
from mnist_common.plan import layers_from_json, layers_to_json
from mnist_common.weights import (
    WEIGHTS_DTYPES,
    WeightsError,
    convert_weights,
    dequantize,
    read_metadata,
    read_model_metadata,
    write_atomically,
)

from .model import Net, normalize

# The weights file's readers and the dtype conversion live in mnist_common.weights (numpy, no
# torch: serving needs them); offered here too, beside the writers, for the training side.
__all__ = [
    "WEIGHTS_DTYPES",
    "WeightsError",
    "convert_weights",
    "export_onnx",
    "load_model",
    "read_metadata",
    "read_model_metadata",
    "save_safetensors",
    "state_dict_for_export",
    "torch_predictor",
    "update_metadata",
    "write_atomically",
    "write_metrics",
]

INPUT_LAYOUT = "NCHW (N,1,28,28) float32; raw pixels 0-255, ink=255, normalised inside the model runtime"


def state_dict_for_export(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The float32 tensors of ``model.state_dict()``, contiguous, without the int counters."""
    return {
        name: tensor.detach().to(torch.float32).contiguous().cpu()
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }


def save_safetensors(model: Net, path: Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file, then a rename).

    An interrupted export never leaves a half-written file where a good one was.
    """
    import safetensors
    import torchvision

    metadata = {
        "architecture": model.architecture,
        "layers": layers_to_json(model.layers),
        "mnist_mean": repr(MNIST_MEAN),
        "mnist_std": repr(MNIST_STD),
        "input": INPUT_LAYOUT,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "safetensors_version": safetensors.__version__,
    }
    metadata.update(extra_metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: save_file(state_dict_for_export(model), str(tmp), metadata=metadata))
    return path


def update_metadata(path: Path, changes: dict[str, str | None]) -> Path:
    """Rewrite the weights file ``path`` with ``changes`` merged into its metadata (atomically;
    the tensors, their names and dtypes are kept byte for byte); a key changed to None is
    removed. A file from before layer plans gets its ``layers`` written too.

    Raises:
        WeightsError: ``path`` is unreadable or does not describe a model.
    """
    from safetensors.torch import load_file

    merged = {**read_model_metadata(path), **changes}
    metadata = {key: value for key, value in merged.items() if value is not None}
    tensors = load_file(str(path))
    write_atomically(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return Path(path)


def load_model(path: Path) -> Net:
    """Load a ``Net`` in eval mode from a file written by ``save_safetensors`` (or a copy by
    ``convert_weights``: f16 and int8 tensors widened to float32 as the Rust reader does): its
    layer plan from the metadata, its tensors by name.

    Raises:
        WeightsError: unreadable file, no valid plan, or tensors that do not match (the message
            names the missing, unexpected or mis-shaped tensors).
    """
    from safetensors.numpy import load_file

    metadata = read_model_metadata(path)
    model = Net(layers_from_json(metadata["layers"]), metadata["architecture"])
    expected = state_dict_for_export(model)
    tensors = {name: torch.from_numpy(t) for name, t in dequantize(load_file(str(path))).items()}
    problems = [f"missing tensor {name}" for name in expected if name not in tensors]
    problems += [f"unexpected tensor {name}" for name in tensors if name not in expected]
    problems += [
        f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(t.shape)}"
        for name, t in expected.items()
        if name in tensors and tensors[name].shape != t.shape
    ]
    if problems:
        raise WeightsError(f"{path}: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=False)
    return model.eval()


def export_onnx(model: Net, path: Path) -> Path:
    """Export ``model`` to ONNX (input ``pixels``: (N, 1, 28, 28) normalised float32 -> ``logits``).

    Used by the benchmark to run the same weights in ONNX Runtime Web.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        # The tracer warns about Net.forward's input-shape check; the traced graph is the model's.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model.eval(),
            (dummy,),
            str(path),
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def metrics_path(weights: Path) -> Path:
    """The metrics file of the weights file ``weights`` (training history, test accuracy; what
    ``trainer.train`` and ``trainer.soup`` write and ``trainer.evaluation.evaluate`` reads):
    ``metrics.json`` beside a ``model.safetensors`` (the default model's), else
    ``<stem>.metrics.json``, e.g. ``mlp.metrics.json`` beside ``mlp.safetensors``."""
    weights = Path(weights)
    return weights.with_name("metrics.json" if weights.name == "model.safetensors" else f"{weights.stem}.metrics.json")


def write_metrics(path: Path, metrics: dict) -> None:
    """Write ``metrics`` as indented JSON, atomically."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2) + "\n"))


def torch_predictor(weights_path: str | os.PathLike = DEFAULT_WEIGHTS) -> Callable:
    """A ``predict`` function running the PyTorch model of ``weights_path`` (same contract as
    ``mnist_infer.predict``: (784,) -> (10,), (N, 784) -> (N, 10), float32; ValueError on a
    wrong shape or non-finite values)."""
    import numpy as np

    model = load_model(Path(weights_path))

    def predict(pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.shape[-1:] != (NUM_PIXELS,) or pixels.ndim not in (1, 2):
            raise ValueError(f"expected pixels of shape ({NUM_PIXELS},) or (N, {NUM_PIXELS}), got {pixels.shape}")
        if not np.isfinite(pixels).all():
            raise ValueError("pixels have NaN or infinite values")
        batch = torch.from_numpy(pixels.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE))
        with torch.no_grad():
            probabilities = torch.softmax(model(normalize(batch)), dim=1).numpy()
        return probabilities[0] if pixels.ndim == 1 else probabilities

    return predict
