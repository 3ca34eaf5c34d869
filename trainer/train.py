"""Train the MNIST model and write ``model.safetensors`` + ``metrics.json``.

Read top to bottom: augmentation, evaluation, checkpoints, the run. ``invoke train`` calls
``train()``; ``python -m trainer.train --help`` works too.

Recipe (the defaults, chosen by the measurements in docs/training.md): 16 epochs of AdamW
(weight decay 0.05) with a one-cycle learning-rate schedule and cross-entropy. Each training
image gets the "draw" augmentation (a random affine transform with a wide slant, strokes made
thinner or thicker by erosion/dilation at twice the resolution, and a smooth elastic distortion
after Simard et al., 2003), except in the last 3 epochs, which see the images as they are. An
exponential moving average (EMA) of the weights, decay 0.9995 per step, is what is evaluated
and exported. The training images: MNIST's first 55,000 (the last 5,000 are held out for
calibration), 15,000 digits in styles MNIST lacks (``--styles``: hooked-tail 9s, flagged 1s,
...), and 64 non-digits per step for outlier exposure (``--outliers``). Label smoothing is
available and off (it did not help here). The model is kept channels_last (NHWC) for faster CPU
convolutions. ``--device cuda`` trains on a GPU.

The capsule network (``--arch capsnet``, Sabour et al., 2017) trains with the same recipe and
options, but with its own loss instead of the cross-entropy: the margin loss (m+ = 0.9,
m- = 0.1, lambda = 0.5) of its capsule lengths, plus 0.0005 x the summed squared error of its
decoder's reconstruction (from the true class's capsule) against the (augmented) input image in
[0, 1]. Its non-digits in outlier exposure get the margin loss with no class present (every
capsule pushed below m-) and no reconstruction loss. Its files go to ``models/`` as the others'.

Reliability: a checkpoint is written after every epoch (``checkpoint.pt`` beside the outputs,
atomically); ``--resume`` continues a killed run from it and, on the same machine with the same
thread count, ends with exactly the weights and metrics of an uninterrupted run (all random
state is in the checkpoint, and ``torch.use_deterministic_algorithms(True)`` is on).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from mnist_common.paths import MODELS_DIR
from mnist_common.plan import DigitCaps

from . import data
from .augment import AUGMENT_PRESETS, augment
from .export import metrics_path, save_safetensors, write_atomically, write_metrics
from .model import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    Net,
    build,
    count_parameters,
    margin_loss,
    normalize,
    reconstruction_loss,
)
from .uncertainty import HELD_OUT_KEY, VALIDATION, calibrate

DEFAULT_OUT_DIR = MODELS_DIR
#: Seed of the first synthetic writer of the training set (``Config.writers``): far from the test
#: writers' (``trainer.synthetic.writers.WRITER_SEED`` = 20,150 and the next few hundred) and the tuning
#: writers' (``trainer.evaluation.personalize.TUNE_FIRST_SEED`` = 120,150 and up).
TRAIN_WRITER_SEED = 10_000_000


@torch.no_grad()
def evaluate(model: Net, split: data.Split, batch_size: int = 1000) -> tuple[float, float]:
    """Return (mean cross-entropy loss, top-1 accuracy in [0, 1]) of ``model`` on ``split``
    (computed on the device the model is on)."""
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    for start in range(0, len(split.labels), batch_size):
        x = normalize(split.images[start : start + batch_size].unsqueeze(1).to(device))
        y = split.labels[start : start + batch_size].to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(split.labels), correct / len(split.labels)


@dataclass
class Config:
    """Training settings; the defaults are ``invoke train``'s.

    Raises:
        ValueError: from ``validate()``, for a value out of range or an unknown preset.
    """

    arch: str = DEFAULT_ARCHITECTURE  # a key of trainer.model.ARCHITECTURES
    epochs: int = 16
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-2
    label_smoothing: float = 0.0  # e.g. 0.1 (measured: no gain here, see docs/training.md); not for capsnet
    ema_decay: float = 0.9995  # per optimizer step; 0 turns the EMA off
    augment: str = "draw"  # a key of AUGMENT_PRESETS
    clean_epochs: int = 3  # the last N epochs (at most epochs - 1) train on unaugmented images
    seed: int = 0
    threads: int = 0  # 0: torch's default (all cores)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ... or "auto" (CUDA when there is one)
    limit: int = 0  # 0: all 60,000 training images; >0: the first `limit` (for quick runs)
    # 0: every epoch is scored on all 10,000 test images; >0: on the first `test_limit` (quick
    # runs: 10,000 take 11 s on one core, as long as a short epoch). metrics.json: test_images.
    test_limit: int = 0
    # A sample database (mnist_common/samples.py) whose drawings join the training images, all but
    # the writers held out for testing (trainer.data.is_held_out); "" for none.
    extra_samples: str = ""
    extra_repeat: int = 10  # each collected drawing appears this many times per epoch
    # Synthetic writers (trainer/synthetic/writers.py) written from MNIST's TRAINING digits, seeds from
    # TRAIN_WRITER_SEED (the test writers' never come near), added to the training images.
    writers: int = 0
    writers_per_class: int = 5
    # Digits in styles MNIST lacks (trainer/synthetic/styles.py: hooked-tail 9s, one-stroke open
    # 4s, flagged 1s, curved-top 7s, ...), written by synthetic writers of its training seeds,
    # added to the training images (a quick run's --limit caps them too). 0: none. 15,000 (the
    # committed cnn, docs/training.md run D): the styles test set 95.8 -> 99.5 %, adverse pen
    # +0.45, redrawn MNIST -0.04 to -0.16 points, clean MNIST -0.05.
    styles: int = 15_000
    # MNIST training digits (the first N of the training split) redrawn with the page's kind of pen
    # (trainer/synthetic/redraw.py: skeleton, round pens of 8-28 canvas px, the page's
    # preprocessing), added to the training images. 0: none.
    redrawn: int = 0
    # Outlier exposure (Hendrycks et al., ICLR 2019): this many non-digits of
    # trainer/synthetic/nondigits.py's training split join every step (outlier_batch of them,
    # augmented like the digits), with a loss pulling the softmax toward uniform, weighted by
    # outlier_weight (the paper's 0.5). 0 turns it off.
    outliers: int = 20_000
    outlier_weight: float = 0.5
    outlier_batch: int = 64
    # The last `holdout` MNIST training images (55,000-59,999 with the default) are not trained
    # on: trainer.uncertainty.calibrate chooses the "not sure" and "not a digit" thresholds on them.
    holdout: int = 5_000
    # Fine-tuning: start from this weights file (same architecture) instead of a random
    # initialisation, e.g. to add outlier exposure to a model that took long to train. Its
    # thresholds are calibrated on the held-out split only if that file held it out too.
    init: str = ""
    # Data-parallel processes (torchrun + DistributedDataParallel; see ``launch``): 1 trains in
    # this process. A run resumes only with the nproc it was started with.
    nproc: int = 1

    @classmethod
    def from_options(cls, **options: str | None) -> Config:
        """A Config from command-line strings (as ``invoke train`` passes them): each value is
        converted to the type of its field's default; None keeps the default.

        Raises:
            ValueError: a value that does not convert, e.g. "--epochs takes an integer, got 'abc'".
        """
        defaults, settings = cls(), {}
        for name, value in options.items():
            kind = type(getattr(defaults, name))
            try:
                settings[name] = kind(value) if value is not None else getattr(defaults, name)
            except ValueError:
                noun = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
                raise ValueError(f"--{name.replace('_', '-')} takes {noun}, got {value!r}") from None
        return cls(**settings)

    def argv(self, skip: tuple[str, ...] = ()) -> list[str]:
        """These settings (but the fields named in ``skip``) as ``python -m trainer.train``
        options, e.g. ["--arch", "cnn", "--epochs", "16", ...]: what ``launch`` passes on."""
        chosen = [f.name for f in fields(self) if f.name not in skip]
        return [arg for name in chosen for arg in ("--" + name.replace("_", "-"), str(getattr(self, name)))]

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.arch in ARCHITECTURES, f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}"),
            (
                self.label_smoothing == 0 or self.arch not in ARCHITECTURES or not is_capsule_network(self.arch),
                f"label_smoothing is for the cross-entropy; {self.arch} trains with the margin loss: leave it 0",
            ),
            (
                self.augment in AUGMENT_PRESETS,
                f"unknown augment {self.augment!r}: choose one of {', '.join(AUGMENT_PRESETS)}",
            ),
            (
                min(self.threads, self.limit, self.test_limit) >= 0,
                f"threads, limit and test_limit must be >= 0, got {self.threads}, {self.limit}, {self.test_limit}",
            ),
            (self.clean_epochs >= 0, f"clean_epochs must be >= 0, got {self.clean_epochs}"),
            (self.nproc >= 1, f"nproc must be at least 1, got {self.nproc}"),
            (
                self.batch_size >= self.nproc and self.outlier_batch >= self.nproc,
                f"batch_size and outlier_batch ({self.batch_size}, {self.outlier_batch}) are split over the "
                f"{self.nproc} processes: each must be at least nproc",
            ),
            (self.extra_repeat >= 1, f"extra_repeat must be at least 1, got {self.extra_repeat}"),
            (
                self.writers >= 0 and self.writers_per_class >= 1,
                f"writers must be >= 0 and writers_per_class >= 1, got {self.writers} and {self.writers_per_class}",
            ),
            (
                min(self.outliers, self.styles, self.redrawn) >= 0
                and self.outlier_weight >= 0
                and self.outlier_batch >= 1,
                "styles, redrawn, outliers and outlier_weight must be >= 0 and outlier_batch >= 1, got "
                f"{self.styles}, {self.redrawn}, {self.outliers}, {self.outlier_weight} and {self.outlier_batch}",
            ),
            (
                self.holdout in (0, VALIDATION.stop - VALIDATION.start),
                f"holdout must be 0 or {VALIDATION.stop - VALIDATION.start:,} (MNIST training images "
                f"{VALIDATION.start:,}-{VALIDATION.stop - 1:,}, the calibration split), got {self.holdout}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def is_capsule_network(arch: str) -> bool:
    """Whether the architecture ``arch`` has digit capsules (and trains with the margin loss)."""
    return any(isinstance(spec, DigitCaps) for spec in ARCHITECTURES[arch].layers)


def default_out_dir(arch: str) -> Path:
    """Where a run of ``arch`` writes when not told: ``models/``, which the server lists and the
    tests load into the Rust crate (every architecture; ``arch`` is kept for callers)."""
    return DEFAULT_OUT_DIR


def collected_for_training(path: str | Path, repeat: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The drawings of a sample database that may join training: every writer's but those held
    out for testing (``trainer.data.split_collected``), each repeated ``repeat`` times.

    Returns:
        images (M * repeat, 28, 28) uint8 (ink = 255), labels (M * repeat,) int64, and a summary
        {"database", "train", "held_out", "train_writers", "held_out_writers", "repeat"} (counts of
        drawings and of writers; a drawing without a writer counts as a writer of its own).

    Raises:
        ValueError: no database at ``path``, an unreadable or newer one, or no drawing of it
            left for training.
    """
    from mnist_common.samples import StoreError, open_store

    db = Path(path)
    if not db.is_file():
        raise ValueError(f"--extra-samples: no sample database at {db}")
    try:
        images, labels, writers = open_store(db, create=False).arrays()
    except StoreError as e:
        raise ValueError(f"--extra-samples: {e}") from e
    (train_images, train_labels, train_writers), (_, held_labels, held_writers) = data.split_collected(
        images, labels, writers
    )
    if len(train_labels) == 0:
        raise ValueError(
            f"--extra-samples: none of the {len(labels)} drawings in {db} is for training "
            "(their writers are all held out for testing)"
        )

    def writer_count(names: list) -> int:
        return len({name if name is not None else ("no writer", i) for i, name in enumerate(names)})

    summary = {
        "database": str(db),
        "train": len(train_labels),
        "held_out": len(held_labels),
        "train_writers": writer_count(train_writers),
        "held_out_writers": writer_count(held_writers),
        "repeat": repeat,
    }
    return (torch.from_numpy(train_images).repeat(repeat, 1, 1), torch.from_numpy(train_labels).repeat(repeat), summary)


def training_split(full: data.Split, config: Config) -> data.Split:
    """The MNIST training images a run trains on: all 60,000 but the last ``config.holdout``
    (``trainer.uncertainty.VALIDATION``, on which the thresholds are calibrated), then the
    first ``config.limit`` of those (0: all)."""
    return full.first(len(full.labels) - config.holdout).first(config.limit)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``Config.device``.

    Raises:
        ValueError: an unknown device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch sees no CUDA device: use cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported: use cpu, cuda, cuda:N or auto")
    return device


def ema_update(decay: float):
    """``AveragedModel``'s ``multi_avg_fn`` for an EMA with warm-up: the decay used at update
    n is min(decay, (1 + n) / (10 + n)) (as TensorFlow's ExponentialMovingAverage with
    num_updates), so short runs are not dominated by the random initial weights. One fused
    ``lerp`` per group of float tensors (and one read of n per group, not one per tensor);
    integer buffers (BatchNorm's num_batches_tracked) are copied."""

    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return average


CHECKPOINT = "checkpoint.pt"


def output_names(arch: str) -> tuple[str, str, str]:
    """File names (weights, metrics, checkpoint) of a run of ``arch`` in the output folder: the
    default architecture's are ``model.safetensors``, ``metrics.json`` and ``checkpoint.pt``
    (what ``invoke serve`` and the wasm builds use); another's carry its name, e.g.
    ``mlp.safetensors``, ``mlp.metrics.json`` and ``mlp.checkpoint.pt``, so several
    architectures live side by side in ``models/``."""
    weights = "model.safetensors" if arch == DEFAULT_ARCHITECTURE else f"{arch}.safetensors"
    checkpoint = CHECKPOINT if arch == DEFAULT_ARCHITECTURE else f"{arch}.{CHECKPOINT}"
    return weights, metrics_path(Path(weights)).name, checkpoint


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint atomically (a temporary file, then a rename)."""
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, config: Config) -> dict:
    """The checkpoint at ``path``, checked to belong to a run with the same ``config``.

    Raises:
        FileNotFoundError: there is no checkpoint to resume from.
        ValueError: the checkpoint is unreadable, or was written with other settings (named).
    """
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}: start without --resume")
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # torch raises several types for a damaged file
        raise ValueError(f"{path}: unreadable checkpoint ({e})") from e
    saved = {"nproc": 1, **state.get("config", {})}  # checkpoints from before --nproc: one process
    differences = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in asdict(config).items() if saved.get(k) != v]
    if differences:
        raise ValueError(f"{path} belongs to a run with other settings: {', '.join(differences)}")
    return state


class TrainingLoss(torch.nn.Module):
    """The training objective of one step as a module, so that DistributedDataParallel (which
    synchronises the gradients of what runs through its ``forward``) can wrap all of it.

    ``forward(x, y)``: ``x`` (B + K, 1, 28, 28) float32 in 0..255, the B digits labelled by ``y``
    (B,) int64 first, then K non-digits (outlier exposure; K may be 0). Returns (the scalar loss,
    the digits' logits (B, 10)). A plain network: cross-entropy (with ``label_smoothing``) plus
    ``outlier_weight`` x the non-digits' cross-entropy to the uniform distribution (Hendrycks et
    al., 2019). A capsule network: the margin loss, 0.0005 x the reconstruction's summed squared
    error for the digits when it has a decoder (Sabour et al., 2017), and ``outlier_weight`` x the
    margin loss with no class present for the non-digits.
    """

    def __init__(self, model: Net, config: Config):
        super().__init__()
        self.model = model
        self.label_smoothing, self.outlier_weight = config.label_smoothing, config.outlier_weight
        self.capsules = is_capsule_network(config.arch)
        self.decoded = self.capsules and any(spec.kind == "decoder" for spec in model.layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        digits = len(y)
        if self.capsules:
            caps = self.model.capsules(normalize(x))
            logits = self.model.logits_of_capsules(caps)
            lengths = torch.linalg.vector_norm(caps, dim=-1)
            loss = margin_loss(lengths[:digits], y).mean()
            if self.decoded:
                loss = loss + reconstruction_loss(self.model.decode(caps[:digits], y), x[:digits]).mean()
            if len(x) > digits:
                loss = loss + self.outlier_weight * margin_loss(lengths[digits:], None).mean()
        else:
            # Digits and non-digits in one forward pass (one set of BatchNorm statistics, as in
            # the paper); the non-digits' loss is -mean_k log softmax_k.
            logits = self.model(normalize(x))
            loss = F.cross_entropy(logits[:digits], y, label_smoothing=self.label_smoothing)
            if len(x) > digits:
                loss = loss + self.outlier_weight * -torch.log_softmax(logits[digits:], dim=1).mean()
        return loss, logits[:digits]


@dataclass(frozen=True)
class Processes:
    """Where this process stands in a data-parallel run (torchrun sets RANK, WORLD_SIZE and
    LOCAL_RANK; without them: rank 0 of 1). ``backend``: "gloo" on the CPU, "nccl" on GPUs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Processes:
        return cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, prints and writes the files."""
        return self.rank == 0

    def gather(self, value: object) -> list:
        """``value`` of every rank, in rank order (a collective: every rank must call it)."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def total(self, *values: float) -> list[float]:
        """The sums over the ranks of ``values`` (a collective)."""
        return [sum(column) for column in zip(*self.gather(values))]


def launch(
    config: Config, data_dir: Path = data.DEFAULT_DATA_DIR, out_dir: Path | None = None, resume: bool = False
) -> int:
    """Train with ``config`` in ``config.nproc`` processes started by PyTorch's launcher
    (``python -m torch.distributed.run``, i.e. torchrun, standalone on this machine), each
    running ``python -m trainer.train`` (``train`` above); return the launcher's exit status
    (0: trained). Each process gets an equal share of the cores (OMP_NUM_THREADS) unless set.

    Raises:
        ValueError, FileNotFoundError: as ``train``, for bad settings and a missing or foreign
        checkpoint (checked here once, before any process starts).
    """
    import subprocess

    config.validate()
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config.arch)
    if resume:
        load_checkpoint(out_dir / output_names(config.arch)[2], config)
    # --nproc stays out of the processes' options (torchrun's parser would take it for an
    # abbreviation of its own --nproc-per-node): they read it from WORLD_SIZE.
    options = config.argv(skip=("nproc",))
    options += ["--data-dir", str(data_dir), "--out-dir", str(out_dir)] + (["--resume"] if resume else [])
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={config.nproc}"]
    return subprocess.call([*command, "-m", "trainer.train", *options], env=env)


def parameters_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's trainable parameters (their bytes, in state_dict order): equal
    across the ranks of a data-parallel run whose gradients were synchronised."""
    import hashlib

    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(
    config: Config, data_dir: Path = data.DEFAULT_DATA_DIR, out_dir: Path | None = None, resume: bool = False
) -> dict:
    """Train and write the weights and metrics to ``out_dir`` (None: ``default_out_dir``; names:
    ``output_names``; for the default ``cnn``, ``model.safetensors`` and ``metrics.json``).

    After every epoch the full training state goes to ``out_dir/checkpoint.pt``; with
    ``resume=True`` training continues from there (deleted once the run has finished).
    The model and metrics files change only when training has finished: an interrupted run
    (Ctrl-C, a kill) leaves the previous model in place.

    With ``config.nproc`` > 1 this is one of the processes torchrun started (``launch``): each
    rank trains on its share (rank::nproc) of every batch of one shared, seeded data order, with
    augmentation and non-digits drawn from a generator seeded per rank, and
    DistributedDataParallel averages the gradients (gloo on the CPU, NCCL on GPUs). BatchNorm
    statistics are each rank's own, broadcast from rank 0 at every step (DDP's default). Rank 0
    evaluates, checkpoints (with every rank's random state) and writes the files; the run fails
    if the ranks' parameters differ at the end.

    Returns:
        the metrics dict written to metrics.json ({} on the ranks other than 0).

    Raises:
        ValueError: bad settings, or a checkpoint of another run; FileNotFoundError: resume
        without a checkpoint; data.DataError: missing or corrupt MNIST files; RuntimeError: the
        ranks of a data-parallel run ended with different parameters.
    """
    config.validate()
    processes = Processes.from_environment()
    if processes.world != config.nproc:
        raise ValueError(
            f"nproc is {config.nproc}, but this process is one of {processes.world}: "
            f"start the run with `invoke train --nproc {config.nproc}` (or `python -m trainer.train --nproc ...`)"
        )
    device = resolve_device(config.device)
    if processes.world == 1:
        return run(config, processes, device, data_dir, out_dir, resume)
    if device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return run(config, processes, device, data_dir, out_dir, resume)
    finally:
        torch.distributed.destroy_process_group()


def run(
    config: Config, processes: Processes, device: torch.device, data_dir: Path, out_dir: Path | None, resume: bool
) -> dict:
    """The body of ``train`` in one process of ``processes`` (see there)."""
    say = print if processes.main else lambda *args, **kwargs: None
    if processes.world > 1:
        say(
            f"training in {processes.world} processes ({torch.distributed.get_backend()}), {torch.get_num_threads()} threads each"
        )
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config.arch)
    weights_name, metrics_name, checkpoint_name = output_names(config.arch)
    checkpoint_path = out_dir / checkpoint_name
    torch.manual_seed(config.seed)
    # cuBLAS is deterministic only with a fixed workspace (set before its first use).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    # The data order: one stream, the same on every rank. Augmentation and the non-digits drawn
    # per step: this rank's own stream (the same one as the order's in a single process).
    generator = torch.Generator().manual_seed(config.seed)
    rank_seed = (config.seed + 1) * 1_000_003 + processes.rank  # for ranks > 0 (and their dropout)
    local = generator if processes.world == 1 else torch.Generator().manual_seed(rank_seed)
    aug = AUGMENT_PRESETS[config.augment]

    if not processes.main:
        torch.distributed.barrier()  # rank 0 fetches MNIST and draws the cached data sets first
    full = data.load_split(train=True, data_dir=data_dir)
    test_split = data.load_split(train=False, data_dir=data_dir).first(config.test_limit)
    mnist_split = train_split = training_split(full, config)
    if config.writers:
        from .synthetic.writers import writers_set

        # The writers' glyphs come from every training digit, whatever the limit.
        written = writers_set(
            full.images.numpy(),
            full.labels.numpy(),
            writers=config.writers,
            per_class=config.writers_per_class,
            first_seed=TRAIN_WRITER_SEED,
            cache_dir=Path(data_dir) / "writers",
        )
        train_split = train_split.joined(written.images, written.labels)
        say(f"--writers: {len(written.labels):,} digits of {config.writers} synthetic writers join training")
    if config.styles:
        from .synthetic.styles import training_styles

        # A quick run (--limit) takes as many style digits as MNIST digits, at most.
        count = min(config.styles, config.limit) if config.limit else config.styles
        style_images, style_labels = training_styles(count, cache_dir=Path(data_dir) / "styles")
        train_split = train_split.joined(style_images, style_labels)
        say(f"--styles: {len(style_labels):,} digits in styles MNIST lacks join training")
    if config.redrawn:
        from .synthetic.redraw import training_redrawn

        source = mnist_split.first(config.redrawn)
        redrawn_images, redrawn_labels = training_redrawn(
            source.images.numpy(), source.labels.numpy(), cache_dir=Path(data_dir) / "redrawn"
        )
        train_split = train_split.joined(redrawn_images, redrawn_labels)
        say(f"--redrawn: {len(redrawn_labels):,} training digits redrawn with the page's kind of pen join training")
    extra = None
    if config.extra_samples:
        extra_images, extra_labels, extra = collected_for_training(config.extra_samples, config.extra_repeat)
        train_split = train_split.joined(extra_images, extra_labels)
        say(
            f"--extra-samples: {extra['train']} drawings of {extra['train_writers']} writers join training "
            f"(x{extra['repeat']}); {extra['held_out']} of {extra['held_out_writers']} writers held out for testing"
        )
    images = (train_split.images.unsqueeze(1).float() / 255.0).to(device)  # (N, 1, 28, 28) in [0, 1]
    labels = train_split.labels.to(device)
    outliers = None
    if config.outliers:
        from .synthetic.nondigits import nondigit_set

        # A quick run (--limit) takes as many non-digits as digits, at most.
        count = min(config.outliers, config.limit) if config.limit else config.outliers
        pool = nondigit_set(count, "train", cache_dir=Path(data_dir) / "nondigits")
        outliers = (torch.from_numpy(pool.images).unsqueeze(1).float() / 255.0).to(device)
        say(f"--outliers: {count:,} non-digits, {config.outlier_batch} per step, weight {config.outlier_weight}")
    if processes.main and processes.world > 1:
        torch.distributed.barrier()  # the others may read the caches now

    # channels_last (NHWC) weights: about a third faster convolutions on the CPU than NCHW
    # (measured: 71 vs 106 ms per training step of 128 images on 2 cores); same model.
    model = build(config.arch)
    init_held_out = True
    if config.init:
        from .export import WeightsError, load_model, read_metadata

        try:
            start = load_model(Path(config.init))
        except WeightsError as e:
            raise ValueError(f"--init: {e}") from e
        if start.architecture != model.architecture:
            raise ValueError(f"--init: {config.init} is a {start.architecture}, not a {model.architecture}")
        model.load_state_dict(start.state_dict())
        init_held_out = (
            read_metadata(Path(config.init)).get(HELD_OUT_KEY) == f"{VALIDATION.start}-{VALIDATION.stop - 1}"
        )
    model = model.to(device, memory_format=torch.channels_last)
    if processes.rank:
        torch.manual_seed(rank_seed)  # its own dropout masks
    ema = None
    if config.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=ema_update(config.ema_decay), use_buffers=True)
    if processes.world == 1:
        steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    else:  # every rank needs images in every step: the last, partial batch is left out
        steps_per_epoch = len(labels) // config.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"{len(labels)} training images are fewer than one batch of {config.batch_size}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )

    history, first_epoch, elapsed_before = [], 1, 0.0
    if resume:
        state = load_checkpoint(checkpoint_path, config)
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        own = state["ranks"][processes.rank] if processes.world > 1 else state
        local.set_state(own["generator"])
        torch.set_rng_state(own["torch_rng"])
        history, first_epoch, elapsed_before = state["history"], state["epoch"] + 1, state["elapsed_s"]
        say(f"resuming after epoch {state['epoch']}/{config.epochs} from {checkpoint_path}")
    evaluated = ema.module if ema is not None else model
    step_loss = TrainingLoss(model, config)
    if processes.world > 1:  # a collective: rank 0's parameters and buffers go to every rank
        from torch.nn.parallel import DistributedDataParallel

        step_loss = DistributedDataParallel(step_loss, device_ids=[device.index] if device.type == "cuda" else None)
    outliers_per_step = config.outlier_batch // processes.world

    started = time.perf_counter() - elapsed_before
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        order = torch.randperm(len(labels), generator=generator).to(device)
        clean = epoch > config.epochs - min(config.clean_epochs, config.epochs - 1)
        epoch_aug = AUGMENT_PRESETS["none"] if clean else aug
        running_loss, seen, correct = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            leave=False,
            disable=not processes.main,
        )
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size][processes.rank :: processes.world]
            x = augment(images[idx], epoch_aug, local) * 255.0
            y = labels[idx]
            if outliers is not None:
                picked = torch.randint(len(outliers), (outliers_per_step,), generator=local).to(device)
                x = torch.cat([x, augment(outliers[picked], epoch_aug, local) * 255.0])
            loss, logits = step_loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            running_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{running_loss / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        running_loss, correct, seen = processes.total(running_loss, correct, seen)
        # Every rank's random state, for rank 0's checkpoint (evaluating draws no random numbers).
        ranks = processes.gather({"generator": local.get_state(), "torch_rng": torch.get_rng_state()})
        if not processes.main:
            continue
        test_loss, test_acc = evaluate(evaluated, test_split)
        record = {
            "epoch": epoch,
            "train_loss": running_loss / seen,
            "train_accuracy": correct / seen,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        history.append(record)
        print(
            f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.4f}, "
            f"test loss {test_loss:.4f}, test accuracy {test_acc:.2%} ({record['elapsed_s']} s)",
            flush=True,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            checkpoint_path,
            {
                "config": asdict(config),
                **({"ranks": ranks} if processes.world > 1 else {}),
                "epoch": epoch,
                "history": history,
                "elapsed_s": record["elapsed_s"],
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
        )

    digests = processes.gather(parameters_digest(evaluated))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the {processes.world} processes ended with different parameters: {digests}")
    if not processes.main:
        return {}
    trainable, running = count_parameters(evaluated)
    final = history[-1]
    metrics = {
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "architecture": config.arch,
        "test_images": len(test_split.labels),
        "train_images": len(labels),
        "train_time_s": final["elapsed_s"],
        "threads": torch.get_num_threads(),
        "device": str(device),
        "parameters": {"trainable": trainable, "running_stats": running, "total": trainable + running},
        "loss": "margin + 0.0005 reconstruction" if is_capsule_network(config.arch) else "cross-entropy",
        "config": asdict(config),
        "augment": asdict(aug),
        "history": history,
    }
    if processes.world > 1:
        metrics["distributed"] = {
            "processes": processes.world,
            "backend": torch.distributed.get_backend(),
            "parameters_sha256": digests,  # each rank's, in rank order
        }
    written = {"test_accuracy": f"{final['test_accuracy']:.4f}", "train_images": str(len(labels))}
    if config.init:
        written["fine_tuned_from"] = Path(config.init).name
    if config.holdout and init_held_out:
        written[HELD_OUT_KEY] = f"{VALIDATION.start}-{VALIDATION.stop - 1}"
    if config.outliers:
        written["outlier_exposure"] = json.dumps(
            {"nondigits": config.outliers, "weight": config.outlier_weight, "per_step": config.outlier_batch}
        )
    if extra is not None:
        # `invoke evaluate --samples` reads it to score this model on the held-out writers only.
        metrics["extra_samples"] = extra
        written["extra_samples"] = json.dumps(extra)
    save_safetensors(evaluated.cpu().eval(), out_dir / weights_name, written)
    # The "not sure" and "not a digit" thresholds, chosen on the held-out split, into the metadata.
    calibration = calibrate(
        out_dir / weights_name,
        data_dir,
        limit=min(config.limit, 5000),
        allow_seen=not (config.holdout and init_held_out),
    )
    metrics["unsure_mutual_information"] = calibration["threshold"]
    metrics["not_a_digit_max_probability"] = calibration["not_a_digit_max_probability"]
    write_metrics(out_dir / metrics_name, metrics)
    checkpoint_path.unlink(missing_ok=True)
    print(f"wrote {out_dir / weights_name} (test accuracy {final['test_accuracy']:.2%})")
    return metrics


def main(argv: list[str] | None = None) -> None:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "augment":
            parser.add_argument(flag, choices=list(AUGMENT_PRESETS), default=defaults.augment)
        elif f.name == "arch":
            parser.add_argument(flag, choices=list(ARCHITECTURES), default=defaults.arch)
        elif f.name == "nproc":  # under torchrun: its number of processes
            parser.add_argument(flag, type=int, default=int(os.environ.get("WORLD_SIZE", defaults.nproc)))
        else:
            parser.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    parser.add_argument("--data-dir", type=Path, default=data.DEFAULT_DATA_DIR)
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="default: models/",
    )
    args = parser.parse_args(argv)
    config = Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
    try:
        if config.nproc > 1 and "WORLD_SIZE" not in os.environ:  # not started by torchrun yet
            parser.exit(launch(config, data_dir=args.data_dir, out_dir=args.out_dir, resume=args.resume))
        train(config, data_dir=args.data_dir, out_dir=args.out_dir, resume=args.resume)
    except (ValueError, FileNotFoundError, data.DataError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
