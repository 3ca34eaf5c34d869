"""Read a weights file's metadata without loading a tensor (safetensors' header only; no PyTorch).

The metadata keys are described in ``trainer.export``, which writes them.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

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
