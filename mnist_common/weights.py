"""The weights file without PyTorch: read its metadata (safetensors' header only) and store its
tensors in another dtype (numpy), for serving and the builds, which need no torch.

The metadata keys are described in ``trainer.export``, which writes the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from .plan import CNN, layers_from_json, layers_to_json


class WeightsError(ValueError):
    """A weights file is unreadable or does not hold this architecture."""


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file.

    Raises:
        WeightsError: the file is missing or not a safetensors file.
    """
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e


def read_model_metadata(path: Path) -> dict[str, str]:
    """``read_metadata``, checked to describe a model: ``architecture`` is set and ``layers``
    is a valid plan. A file from before layer plans (no ``layers``) gets the ``cnn`` plan when
    its architecture is the ``cnn``'s id.

    Raises:
        WeightsError: unreadable file, no architecture, or a missing or invalid plan (named).
    """
    metadata = read_metadata(path)
    found = metadata.get("architecture")
    if not found:
        raise WeightsError(f"{path}: no `architecture` in the metadata (was it written by trainer/export.py?)")
    if "layers" not in metadata:
        if found != CNN.id:
            raise WeightsError(f"{path}: architecture {found!r} without a `layers` plan in the metadata")
        metadata["layers"] = layers_to_json(CNN.layers)
    try:
        layers_from_json(metadata["layers"])
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None
    return metadata


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``:
    readers see the old file or the new one, never a half-written one. The temporary name holds
    the process id, so processes writing the same file at once do not mix their bytes."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


#: Storage dtypes for the weights (``invoke build-wasm --weights-dtype``). f16 halves the file
#: and the wasm that embeds it; int8 quarters it. The Rust reader widens both to f32 at load:
#: the models always compute in f32.
WEIGHTS_DTYPES = ("f32", "f16", "int8")

#: Suffix of the tensor holding an int8 weight's scales: ``fc1.weight`` (int8, any shape
#: ``(out, ...)``) is ``fc1.weight_scale`` (float32, ``(out,)``) times the int8 values.
SCALE_SUFFIX = "_scale"


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantization of a weight of shape ``(out, ...)``.

    ``scale[o] = max |weight[o]| / 127`` and ``q = round(weight / scale)`` in [-127, 127], so
    ``q * scale`` is within ``scale / 2`` of each weight (a channel of zeros gets scale 1). This
    is the weight-only scheme of e.g. PyTorch's ``per_channel_symmetric`` observers; the
    activations stay f32.

    Returns:
        ``(q, scale)``: int8 of ``weight``'s shape, float32 of shape ``(out,)``.
    """
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    peak = np.abs(flat).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    q = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(weight.shape), scale.astype(np.float32)


def dequantize(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 tensors of a weights file in any of ``WEIGHTS_DTYPES``: f16 widened, each
    int8 tensor multiplied by its ``<name>_scale`` per output channel (dim 0), the scales
    dropped. The reverse of ``convert_weights``, up to its rounding; what the Rust reader does.

    Raises:
        WeightsError: an int8 tensor without its scales, or scales of the wrong shape.
    """
    out = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX) and name.removesuffix(SCALE_SUFFIX) in tensors:
            continue
        if t.dtype == np.int8:
            scale = tensors.get(name + SCALE_SUFFIX)
            if scale is None or scale.shape != (t.shape[0],):
                found = "missing" if scale is None else f"of shape {scale.shape}"
                raise WeightsError(f"int8 tensor {name} needs {name}{SCALE_SUFFIX} of shape ({t.shape[0]},): {found}")
            t = t.astype(np.float32) * scale.astype(np.float32).reshape((-1,) + (1,) * (t.ndim - 1))
        out[name] = np.ascontiguousarray(t.astype(np.float32))
    return out


def convert_weights(src: Path, dst: Path, dtype: str) -> Path:
    """Copy the weights file ``src`` to ``dst`` with its tensors stored as ``dtype``.

    The metadata is kept, with ``weights_dtype`` added.

    * ``f16``: every tensor rounded to IEEE 754 binary16 (round to nearest even, as torch's
      ``.half()``): each weight changes by at most 2**-11 of its value (these models' weights
      are far inside f16's range).
    * ``int8``: each weight of 2 or more dimensions (convolution kernels, linear weights: the
      bulk of the file) stored by ``quantize_int8`` with its ``<name>_scale``; biases and
      BatchNorm vectors stay float32.

    Args:
        src: a file written by ``trainer.export.save_safetensors``. dst: where to write
            (atomically; its folder is created).
        dtype: one of ``WEIGHTS_DTYPES``.

    Returns:
        ``dst``.

    Raises:
        ValueError: an unknown ``dtype``.
        WeightsError: ``src`` is unreadable or does not describe a model.
    """
    if dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"unknown weights dtype {dtype!r}: choose one of {', '.join(WEIGHTS_DTYPES)}")
    metadata = {**read_model_metadata(src), "weights_dtype": dtype}
    tensors = {}
    for name, t in dequantize(load_file(str(src))).items():
        if dtype == "int8" and t.ndim >= 2:
            tensors[name], tensors[name + SCALE_SUFFIX] = quantize_int8(t)
        else:
            tensors[name] = np.ascontiguousarray(t.astype(np.float16 if dtype == "f16" else np.float32))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(dst, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return dst
