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


#: Storage dtypes for the weights (``invoke build-wasm --weights-dtype``): the name -> numpy dtype.
#: f16 halves the file and the wasm that embeds it; the Rust reader widens it to f32 at load.
WEIGHTS_DTYPES = {"f32": np.float32, "f16": np.float16}


def convert_weights(src: Path, dst: Path, dtype: str) -> Path:
    """Copy the weights file ``src`` to ``dst`` with every tensor stored as ``dtype``.

    The metadata is kept, with ``weights_dtype`` added. Rounding to f16 (IEEE 754 binary16,
    round to nearest even, as torch's ``.half()``) changes each weight by at most 2**-11 of its
    value (all of these models' weights are far inside f16's range); the model still computes
    in f32.

    Args:
        src: a file written by ``trainer.export.save_safetensors``. dst: where to write
            (atomically; its folder is created).
        dtype: a key of ``WEIGHTS_DTYPES`` (``"f32"`` or ``"f16"``).

    Returns:
        ``dst``.

    Raises:
        ValueError: an unknown ``dtype``.
        WeightsError: ``src`` is unreadable or does not describe a model.
    """
    if dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"unknown weights dtype {dtype!r}: choose one of {', '.join(WEIGHTS_DTYPES)}")
    metadata = {**read_model_metadata(src), "weights_dtype": dtype}
    tensors = {name: np.ascontiguousarray(t.astype(WEIGHTS_DTYPES[dtype])) for name, t in load_file(str(src)).items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(dst, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return dst
