"""Compare every model in a folder: accuracy, calibration, out-of-distribution detection, speed.

``invoke evaluate --all`` calls ``compare()``; ``python -m trainer.evaluation.compare --help`` works too.
Every ``*.safetensors`` file in the models folder (``models/`` by default) is one model, named
by its file stem, except ``model.safetensors`` (the default model), which is named by its
architecture's short name (``cnn``). The comparison goes to ``reports/models/``:

- ``comparison.json``: every number below, per model, with the settings;
- ``comparison.md``: one row per model;
- ``comparison.png``: accuracy per test set per model (grouped bars), the reliability diagrams,
  the out-of-distribution AUROCs and the wasm predict times;
- ``nondigits.png``: the first non-digits of each kind, as the models see them.

Per model:

- **accuracy** on the test sets of ``trainer.evaluation.evaluate`` (clean, augmented, redrawn with pens of
  8, 14, 20 and 28 px, the adverse pen). ``trainer.evaluation.evaluate.evaluate`` is run once per model,
  and writes that model's own report folder, ``reports/<name>/`` (beside the comparison folder).
- **calibration**: expected calibration error (ECE; Guo et al., "On Calibration of Modern
  Neural Networks", 2017) on the clean test digits, with ``ECE_BINS`` = 15 equal-width bins of
  the confidence (the top class's probability): ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``
  with bin m = ((m - 1) / M, m / M]. Once with the eval-mode softmax (no dropout), once with
  MC dropout (the mean of ``MC_SAMPLES`` = 20 passes, ``trainer.uncertainty``, seed 0). The
  reliability diagram's data (per bin: mean confidence, accuracy, count) is kept for both.
- **telling non-digits from digits**: how well each score of ``ood_scores`` (1 - the top
  eval-mode probability, the energy, the Mahalanobis distance of the penultimate features, the
  MC-dropout entropy and mutual information) ranks non-digits above MNIST test digits, as the
  AUROC (area under the ROC curve): positives are the *non-digits*, a higher score means "more
  likely not a digit", so AUROC = P(score of a random non-digit > score of a random test
  digit), ties counted half: 1.0 separates perfectly, 0.5 is chance. The shares of non-digits
  and of test digits that the page flags are reported too: "not a digit" (top probability below
  the file's ``not_a_digit_max_probability``), and "not sure" (that, or the MC-dropout mutual
  information above ``unsure_mutual_information``), overall and per kind of non-digit.

  The non-digits are ``trainer.synthetic.nondigits``' test split (``DEFAULT_NONDIGITS``):
  letters, words and symbols written in fonts and with characters the training never used,
  scribbles, zigzags, hatching, polygons, coils, random pixels and dots, and kinds only the
  test has (spirals, figures, ink blobs), each drawn with a round pen on the 280x280 canvas and
  preprocessed as the page does. No dataset of non-digits can be downloaded on this project's
  machines (EMNIST letters, Fashion-MNIST, ... are out of reach).
- **wasm predict time**: the median milliseconds per ``predict`` of the ``fast-simd128`` build
  (``web/pkg/fast-simd128/``) in Node, each model loaded with ``Classifier.fromBytes``, all
  models measured in one Node run with their predicts interleaved (rounds of ``WASM_BLOCK``
  predicts per model), and the ratio to the cnn's time. Skipped, with a note, when Node or the
  build is missing. The build's own probabilities are compared with PyTorch's on the first
  test digit and the first 3 non-digits (``wasm_max_abs_diff``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mnist_common.paths import MODELS_DIR, PKG_DIR

from .. import data
from ..export import WeightsError, load_model, read_metadata, write_metrics
from ..model import ARCHITECTURES, DEFAULT_ARCHITECTURE, DigitCaps, Dropout, Linear, logits_of, normalize
from ..synthetic.nondigits import KINDS, TEST_ONLY_KINDS, NonDigits, nondigit_set
from ..synthetic.redraw import PAGE_PEN_WIDTH, PEN_WIDTHS
from ..uncertainty import DEFAULT_SAMPLES, mc_probabilities, summarize
from .evaluate import (
    ADVERSE_KEY,
    DEFAULT_REPORTS_DIR,
    SAMPLES_KEY,
    STYLES_KEY,
    WRITERS_KEY,
    new_figure,
    redrawn_key,
    set_label,
    shown_path,
)
from .evaluate import evaluate as evaluate_model

DEFAULT_MODELS_DIR = MODELS_DIR
DEFAULT_OUT_DIR = DEFAULT_REPORTS_DIR / "models"
#: The default model's file; it is named by its architecture's short name in the comparison.
DEFAULT_MODEL_FILE = "model.safetensors"
#: Confidence bins of the ECE and the reliability diagrams (equal width over [0, 1]).
ECE_BINS = 15
#: Bins of the reliability diagrams drawn in comparison.png need this many predictions (the
#: JSON keeps every bin): a bin of 3 digits has an accuracy of 0, 1/3, 2/3 or 1, which is noise.
RELIABILITY_MIN_COUNT = 10
#: MC-dropout passes per image (the page's default) and the mask seed.
MC_SAMPLES = DEFAULT_SAMPLES
MC_SEED = 0
#: Images per ``mc_probabilities`` call (each is repeated MC_SAMPLES times inside).
MC_CHUNK = 500
#: Non-digits (``trainer.synthetic.nondigits``' test split) without ``limit``; with a limit,
#: ``limit`` of them.
DEFAULT_NONDIGITS = 2_000
#: MNIST training images whose penultimate features fit the Mahalanobis score's class means and
#: shared covariance (the first ones; Lee et al., "A Simple Unified Framework for Detecting
#: Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018, without input noise).
MAHALANOBIS_FIT = 5_000
#: wasm timing: build folder, warm-up predicts per model, rounds, predicts per model per round.
WASM_BUILD = PKG_DIR / "fast-simd128"
WASM_WARMUP = 30
WASM_ROUNDS = 15
WASM_BLOCK = 20
#: Non-digits whose wasm probabilities are checked against PyTorch's, beside the first test digit.
WASM_CHECK_NONDIGITS = 3
#: Seconds the Node timing run may take.
NODE_TIMEOUT_S = 300
#: The model whose wasm time is the baseline of the ratios.
BASELINE = DEFAULT_ARCHITECTURE

__all__ = [
    "compare",
    "main",
    "expected_calibration_error",
    "auroc",
    "ood_scores",
    "discover",
    "CompareError",
]


class CompareError(ValueError):
    """No models to compare: a missing or empty folder, or no readable model in it."""


# --- the numbers -----------------------------------------------------------------------------


def expected_calibration_error(confidences, correct, bins: int = ECE_BINS) -> dict:
    """Expected calibration error and the reliability diagram's data (Guo et al. 2017).

    Bin m (1..M) holds the predictions with confidence in ((m - 1) / M, m / M]; a confidence
    of exactly 0 goes to the first bin. ``ECE = sum_m |B_m| / n * |accuracy(B_m) - confidence(B_m)|``.

    Args:
        confidences: (N,) the predicted class's probability, each in [0, 1].
        correct: (N,) bool (or 0/1): whether that prediction is right.
        bins: M >= 1, the number of equal-width bins.

    Returns:
        ``{"ece": in [0, 1], "n": N, "bins": [M dicts {"lower", "upper", "confidence",
        "accuracy", "count"}]}``; ``confidence`` (mean) and ``accuracy`` are None for an empty bin.

    Raises:
        ValueError: no predictions, mismatched lengths, confidences outside [0, 1] or NaN, bins < 1.
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct).reshape(-1).astype(bool)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if conf.size == 0 or conf.size != hit.size:
        raise ValueError(f"need as many confidences as correctness flags, at least one (got {conf.size}, {hit.size})")
    if not (np.all(conf >= 0) and np.all(conf <= 1)):  # False for NaN too
        raise ValueError("confidences must lie in [0, 1]")
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sums = np.bincount(index, weights=conf, minlength=bins)
    hit_sums = np.bincount(index, weights=hit.astype(np.float64), minlength=bins)
    ece = float(np.abs(hit_sums - conf_sums).sum() / conf.size)  # = sum |B|/n * |acc - conf|
    return {
        "ece": min(max(ece, 0.0), 1.0),
        "n": int(conf.size),
        "bins": [
            {
                "lower": m / bins,
                "upper": (m + 1) / bins,
                "confidence": float(conf_sums[m] / counts[m]) if counts[m] else None,
                "accuracy": float(hit_sums[m] / counts[m]) if counts[m] else None,
                "count": int(counts[m]),
            }
            for m in range(bins)
        ],
    }


def auroc(positive_scores, negative_scores) -> float:
    """Area under the ROC curve of a score meant to be higher for the positives.

    The Mann-Whitney form: the probability that a random positive scores higher than a random
    negative, ties counted half. 1.0: every positive above every negative; 0.5: no better than
    chance (or all scores equal); 0.0: every positive below every negative.

    Args:
        positive_scores: (P,) finite real numbers, P >= 1. negative_scores: (Q,), Q >= 1.

    Returns:
        a float in [0, 1].

    Raises:
        ValueError: an empty side or a non-finite score.
    """
    pos = np.asarray(positive_scores, dtype=np.float64).reshape(-1)
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64).reshape(-1))
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"AUROC needs at least one positive and one negative (got {pos.size}, {neg.size})")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("AUROC scores must be finite")
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    tied = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (pos.size * neg.size))


# --- the models ------------------------------------------------------------------------------


def short_architecture(architecture_id: str) -> str:
    """The short name (``cnn``, ``mlp``, ...) of an ``architecture`` metadata id; the id itself
    when no known architecture has it."""
    for arch in ARCHITECTURES.values():
        if arch.id == architecture_id:
            return arch.name
    return architecture_id


def discover(models_dir: Path) -> list[Path]:
    """The ``*.safetensors`` files directly in ``models_dir``, sorted by name.

    Raises:
        CompareError: the folder is missing, not a folder, or holds no ``*.safetensors`` file.
    """
    models_dir = Path(models_dir)
    if not models_dir.exists():
        raise CompareError(f"models folder {models_dir} does not exist")
    if not models_dir.is_dir():
        raise CompareError(f"{models_dir} is not a folder")
    files = sorted(p for p in models_dir.glob("*.safetensors") if p.is_file())
    if not files:
        raise CompareError(f"no *.safetensors model in {models_dir} (train one: `invoke train`)")
    return files


def tensor_elements(path: Path) -> int:
    """Total number of tensor elements stored in a safetensors file (weights, biases and
    BatchNorm running statistics)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return int(sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys()))


def load_models(files: list[Path]) -> tuple[list[dict], list[str]]:
    """Load every file; name each model. Unreadable files are left out with a note.

    Returns:
        (models, notes): models as ``{"name", "path", "model" (Net, eval mode), "metadata",
        "architecture" (short name)}``, the default model's architecture first (``BASELINE``),
        then by name; notes: one line per file left out or renamed.

    Raises:
        CompareError: no file holds a readable model.
    """
    loaded, notes = [], []
    for path in files:
        try:
            model = load_model(path)
            metadata = read_metadata(path)
        except WeightsError as e:
            notes.append(f"left out {path.name}: {e}")
            continue
        architecture = short_architecture(model.architecture)
        loaded.append({"path": path, "model": model, "metadata": metadata, "architecture": architecture})
    if not loaded:
        raise CompareError("no readable model among " + ", ".join(p.name for p in files) + ": " + "; ".join(notes))
    stems = {entry["path"].stem for entry in loaded}
    for entry in loaded:
        name = entry["path"].stem
        if entry["path"].name == DEFAULT_MODEL_FILE:
            if entry["architecture"] not in stems:
                name = entry["architecture"]
            else:
                notes.append(f"{DEFAULT_MODEL_FILE} is named `model`: {entry['architecture']}.safetensors exists too")
        entry["name"] = name
    loaded.sort(key=lambda e: (e["name"] != BASELINE, e["name"]))
    return loaded, notes


@torch.inference_mode()
def mc_summary(model, images: torch.Tensor, desc: str) -> dict[str, torch.Tensor]:
    """``summarize(mc_probabilities(model, images, MC_SAMPLES, MC_SEED))`` in chunks of
    ``MC_CHUNK`` images with a progress bar (every image gets the same masks, so chunking
    changes nothing). images: (N, 28, 28) 0..255. Returns (N, 10) probabilities, (N,) entropy
    and mutual information (nats)."""
    parts = []
    for start in tqdm(range(0, len(images), MC_CHUNK), desc=desc, unit="chunk", leave=False):
        s = summarize(mc_probabilities(model, images[start : start + MC_CHUNK], MC_SAMPLES, MC_SEED))
        parts.append({k: s[k] for k in ("probabilities", "entropy", "mutual_information")})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _median(values: torch.Tensor) -> float:
    return float(np.median(values.numpy()))


@torch.inference_mode()
def penultimate(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The input of the model's last linear layer (its penultimate features) for (N, 28, 28)
    images 0..255, eval mode: (N, F) float32. A capsule network's: its digit capsules, flattened
    (N, 10 * 16), as the Rust crate's features pass."""
    model.eval()
    if any(isinstance(spec, DigitCaps) for spec in model.layers):  # inference mode already
        return torch.cat(
            [
                model.capsules(normalize(images[start : start + batch_size].unsqueeze(1))).flatten(1)
                for start in range(0, len(images), batch_size)
            ]
        )
    last = [spec.name for spec in model.layers if isinstance(spec, Linear)][-1]
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(last).register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        for start in range(0, len(images), batch_size):
            model(normalize(images[start : start + batch_size].unsqueeze(1)))
    finally:
        hook.remove()
    return torch.cat(seen)


def mahalanobis_score(features: torch.Tensor, fit: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lee et al.'s (NeurIPS 2018) Mahalanobis score without input noise: the smallest squared
    Mahalanobis distance of each of ``features`` (N, F) to the class means of ``fit`` (M, F)
    with ``labels`` (M,), under their shared (tied) covariance. (N,) float64; higher = farther
    from every class."""
    fit = fit.double()
    means = torch.stack([fit[labels == c].mean(dim=0) for c in range(10)])
    centred = fit - means[labels]
    covariance = centred.T @ centred / len(fit) + 1e-6 * torch.eye(fit.shape[1], dtype=torch.float64)
    precision = torch.linalg.inv(covariance)
    diff = features.double()[:, None, :] - means[None]  # (N, 10, F)
    return torch.einsum("ncf,fg,ncg->nc", diff, precision, diff).min(dim=1).values


def ood_scores(model, images: torch.Tensor, mc: dict[str, torch.Tensor], fit: tuple | None) -> dict[str, torch.Tensor]:
    """Every "how unlike a digit" score of ``images`` (N, 28, 28) 0..255, higher = less like a
    digit, each (N,):

    - ``max_probability``: 1 - the top eval-mode softmax probability (Hendrycks & Gimpel 2017);
      the page's "not a digit" rule thresholds this one (``not_a_digit_max_probability``);
    - ``energy``: -logsumexp of the logits (Liu et al., "Energy-based Out-of-distribution
      Detection", NeurIPS 2020);
    - ``entropy`` and ``mutual_information``: MC dropout's (``mc``: ``summarize``'s output);
    - ``mahalanobis``: ``mahalanobis_score`` of the penultimate features, when ``fit`` =
      (features (M, F), labels (M,)) of training digits is given.
    """
    logits = logits_of(model, images).double()
    scores = {
        "max_probability": 1 - torch.softmax(logits, dim=1).max(dim=1).values,
        "energy": -torch.logsumexp(logits, dim=1),
        "entropy": mc["entropy"].double(),
        "mutual_information": mc["mutual_information"].double(),
    }
    if fit is not None:
        scores["mahalanobis"] = mahalanobis_score(penultimate(model, images), *fit)
    return scores


#: The scores ``ood_scores`` gives, in the order of the tables and plots.
SCORES = ("max_probability", "energy", "mahalanobis", "entropy", "mutual_information")


def uncertainty_numbers(
    model,
    metadata: dict,
    digits: torch.Tensor,
    labels: torch.Tensor,
    nondigits: NonDigits,
    name: str,
    fit: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Calibration and OOD numbers of one model.

    Args:
        digits: (N, 28, 28) clean test digits 0..255; labels: (N,) int64.
        nondigits: ``trainer.synthetic.nondigits``' test split.
        fit: (images (M, 28, 28), labels (M,)) of training digits for the Mahalanobis score;
            None leaves that score out.

    Returns:
        ``{"calibration": {"eval": ECE dict, "mc_dropout": ECE dict}, "clean_accuracy_mc",
        "ood": {...}}`` (see ``expected_calibration_error``; ``ood`` holds one AUROC per score
        of ``ood_scores`` (``auroc_<score>``), the medians of entropy and mutual information
        per side, both thresholds, and the shares flagged by each rule and by either
        (``unsure_*``: the page's "not sure", None without any threshold) on the digits, the
        non-digits and per kind of non-digit).
    """
    probabilities = torch.softmax(logits_of(model, digits), dim=1)
    confidence, predicted = probabilities.max(dim=1)
    calibration = {"eval": expected_calibration_error(confidence.numpy(), (predicted == labels).numpy())}
    images = torch.from_numpy(nondigits.images).float()
    on_digits = mc_summary(model, digits, f"{name}: MC dropout on test digits")
    on_nondigits = mc_summary(model, images, f"{name}: MC dropout on non-digits")
    mc_confidence, mc_predicted = on_digits["probabilities"].max(dim=1)
    calibration["mc_dropout"] = expected_calibration_error(
        mc_confidence.clamp(0, 1).numpy(), (mc_predicted == labels).numpy()
    )
    features = None if fit is None else (penultimate(model, fit[0]), fit[1])
    digit_scores = ood_scores(model, digits, on_digits, features)
    nondigit_scores = ood_scores(model, images, on_nondigits, features)

    def threshold(key: str) -> float | None:
        return float(metadata[key]) if metadata.get(key) is not None else None

    unsure_mi, top_probability = threshold("unsure_mutual_information"), threshold("not_a_digit_max_probability")

    def flags(scores: dict, mc: dict) -> dict[str, torch.Tensor | None]:
        mi = None if unsure_mi is None else mc["mutual_information"] > unsure_mi
        # not a digit: top probability < tau, i.e. max_probability score > 1 - tau
        nad = None if top_probability is None else (1 - scores["max_probability"]) < top_probability
        either = None if mi is None and nad is None else (mi if nad is None else nad if mi is None else mi | nad)
        return {"mi": mi, "not_a_digit": nad, "unsure": either}

    def share(mask: torch.Tensor | None) -> float | None:
        return None if mask is None else float(mask.double().mean()) if len(mask) else None

    on_d, on_n = flags(digit_scores, on_digits), flags(nondigit_scores, on_nondigits)
    names = np.array(nondigits.kind_names())
    per_kind = {}
    for kind in KINDS:
        chosen = torch.from_numpy(names == kind)
        if chosen.any():
            per_kind[kind] = {
                "n": int(chosen.sum()),
                "test_only": kind in TEST_ONLY_KINDS,
                "not_a_digit": share(None if on_n["not_a_digit"] is None else on_n["not_a_digit"][chosen]),
                "unsure": share(None if on_n["unsure"] is None else on_n["unsure"][chosen]),
                **{
                    f"auroc_{key}": auroc(nondigit_scores[key][chosen].numpy(), digit_scores[key].numpy())
                    for key in ("max_probability", "energy")
                },
            }
    ood = {
        "positives": "non-digits (trainer.synthetic.nondigits, test split)",
        "negatives": "MNIST test digits",
        "n_digits": len(digits),
        "n_nondigits": len(images),
        **{f"auroc_{key}": auroc(nondigit_scores[key].numpy(), digit_scores[key].numpy()) for key in nondigit_scores},
        "median_entropy_digits": _median(on_digits["entropy"]),
        "median_entropy_nondigits": _median(on_nondigits["entropy"]),
        "median_mutual_information_digits": _median(on_digits["mutual_information"]),
        "median_mutual_information_nondigits": _median(on_nondigits["mutual_information"]),
        "unsure_threshold": unsure_mi,
        "not_a_digit_threshold": top_probability,
        "mi_unsure_digits": share(on_d["mi"]),
        "mi_unsure_nondigits": share(on_n["mi"]),
        "not_a_digit_digits": share(on_d["not_a_digit"]),
        "not_a_digit_nondigits": share(on_n["not_a_digit"]),
        "unsure_digits": share(on_d["unsure"]),
        "unsure_nondigits": share(on_n["unsure"]),
        "per_kind": per_kind,
    }
    return {
        "calibration": calibration,
        "clean_accuracy_mc": float((mc_predicted == labels).float().mean()),
        "ood": ood,
    }


# --- wasm in Node ----------------------------------------------------------------------------

#: argv: glue (mnist_wasm.js), wasm; stdin: {"models": [{"name", "path"}], "pixels": [784],
#: "checks": [[784], ...], "warmup", "rounds", "block"}. stdout: {"node", "models": {name:
#: {"median_ms", "p10_ms", "p90_ms", "predicts", "probabilities": [[10] per check image]} or
#: {"error"}}}.
NODE_TIMING = r"""
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [gluePath, wasmPath] = process.argv.slice(-2);
const spec = JSON.parse(readFileSync(0, "utf8"));
const glue = await import(pathToFileURL(gluePath).href);
await glue.default({ module_or_path: readFileSync(wasmPath) });
const pixels = Float32Array.from(spec.pixels);
const out = {};
const live = [];
for (const m of spec.models) {
  try {
    const classifier = glue.Classifier.fromBytes(new Uint8Array(readFileSync(m.path)));
    const probabilities = spec.checks.map((c) => Array.from(classifier.predict(Float32Array.from(c))));
    live.push({ name: m.name, classifier, probabilities, times: [] });
  } catch (e) {
    out[m.name] = { error: String(e && e.message ? e.message : e) };
  }
}
for (const m of live) for (let i = 0; i < spec.warmup; i++) m.classifier.predict(pixels);
for (let r = 0; r < spec.rounds; r++) {
  for (const m of live) {
    for (let i = 0; i < spec.block; i++) {
      const t0 = performance.now();
      m.classifier.predict(pixels);
      m.times.push(performance.now() - t0);
    }
  }
}
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
for (const m of live) {
  const t = m.times.slice().sort((a, b) => a - b);
  const mid = t.length >> 1;
  const median = t.length % 2 ? t[mid] : (t[mid - 1] + t[mid]) / 2;
  out[m.name] = { median_ms: median, p10_ms: quantile(t, 0.1), p90_ms: quantile(t, 0.9),
                  predicts: t.length, probabilities: m.probabilities };
}
console.log(JSON.stringify({ node: process.version, models: out }));
"""


def wasm_timing(
    models: list[dict],
    pixels: np.ndarray,
    checks: np.ndarray,
    reference: dict[str, np.ndarray],
    build: Path = WASM_BUILD,
    rounds: int = WASM_ROUNDS,
    block: int = WASM_BLOCK,
    warmup: int = WASM_WARMUP,
) -> dict:
    """Median ms per ``predict`` of the wasm build in Node for every model, in one Node run.

    Args:
        models: ``{"name", "path"}`` per model.
        pixels: (784,) float32 0..255: the image every timed predict classifies.
        checks: (K, 784) float32 0..255: images whose wasm probabilities are compared with
            ``reference``, PyTorch's (K, 10) eval-mode probabilities of them per model name.
        rounds, block, warmup: ``rounds`` rounds of ``block`` timed predicts per model,
            interleaved, after ``warmup`` untimed predicts per model.

    Returns:
        ``{"build", "node", "rounds", "block", "models": {name: {"median_ms", "p10_ms",
        "p90_ms", "predicts", "vs_baseline", "wasm_max_abs_diff"} or {"error"}}, "note"}``;
        ``models`` is empty and ``note`` says why when Node, the build or the run fails.
        ``vs_baseline``: the model's median / the ``BASELINE`` model's (None without it).
    """
    result = {
        "build": shown_path(build),
        "node": None,
        "rounds": rounds,
        "block": block,
        "warmup": warmup,
        "baseline": BASELINE,
        "models": {},
        "note": None,
    }
    node = shutil.which("node")
    glue, wasm = build / "mnist_wasm.js", build / "mnist_wasm_bg.wasm"
    if node is None:
        result["note"] = "wasm timing skipped: node is not on PATH"
        return result
    if not (glue.is_file() and wasm.is_file()):
        result["note"] = (
            f"wasm timing skipped: no build in {shown_path(build)} (`invoke build-wasm --backend fast-simd128`)"
        )
        return result
    spec = {
        "models": [{"name": m["name"], "path": str(Path(m["path"]).resolve())} for m in models],
        "pixels": np.asarray(pixels, dtype=np.float32).reshape(-1).tolist(),
        "checks": np.asarray(checks, dtype=np.float32).reshape(len(checks), -1).tolist(),
        "warmup": warmup,
        "rounds": rounds,
        "block": block,
    }
    try:
        run = subprocess.run(
            [node, "--input-type=module", "-e", NODE_TIMING, str(glue.resolve()), str(wasm.resolve())],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        result["note"] = f"wasm timing failed: Node took over {NODE_TIMEOUT_S} s"
        return result
    if run.returncode != 0:
        result["note"] = f"wasm timing failed: node exited with {run.returncode}: {run.stderr.strip()[-500:]}"
        return result
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    result["node"] = answer["node"]
    timed = answer["models"]
    base = timed.get(BASELINE, {}).get("median_ms")
    for m in models:
        entry = timed.get(m["name"], {"error": "not run"})
        if "error" not in entry:
            probabilities = np.asarray(entry.pop("probabilities"), dtype=np.float64)
            entry["wasm_max_abs_diff"] = float(np.abs(probabilities - reference[m["name"]]).max())
            entry["vs_baseline"] = entry["median_ms"] / base if base else None
        result["models"][m["name"]] = entry
    errors = [f"{name}: {e['error']}" for name, e in result["models"].items() if "error" in e]
    if errors:
        result["note"] = "wasm could not load " + "; ".join(errors)
    elif base is None:
        result["note"] = f"no {BASELINE} model: no ratios"
    return result


# --- the report ------------------------------------------------------------------------------


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.0f} kB"


TABLE_COLUMNS = (
    "model",
    "architecture",
    "parameters",
    "file",
    "clean",
    "augmented",
    f"pen {PAGE_PEN_WIDTH} (page)",
    "pens mean",
    "adverse pen",
    "synthetic writers",
    "styles MNIST lacks",
    "ECE",
    "ECE (MC)",
    "AUROC top prob.",
    "AUROC energy",
    "AUROC Mahalanobis",
    "AUROC MI",
    "not a digit: non-digits",
    "not sure: non-digits",
    "not sure: digits",
    "wasm ms/predict",
    f"vs {BASELINE}",
)


def table_row(row: dict) -> list[str]:
    """The cells of one model's row (``TABLE_COLUMNS``)."""
    acc, ood, wasm = row["accuracy"], row["ood"], row.get("wasm") or {}
    return [
        row["name"],
        row["architecture"],
        f"{row['parameters']:,}",
        _size(row["file_bytes"]),
        _pct(acc["clean"]),
        _pct(acc["augmented"]),
        _pct(acc["page_pen"]),
        _pct(acc["redrawn_mean"]),
        _pct(acc["adverse"]),
        _pct(acc.get("writers")),
        _pct(acc.get("styles")),
        _num(row["calibration"]["eval"]["ece"], 4),
        _num(row["calibration"]["mc_dropout"]["ece"], 4),
        _num(ood["auroc_max_probability"]),
        _num(ood["auroc_energy"]),
        _num(ood.get("auroc_mahalanobis")),
        _num(ood["auroc_mutual_information"]),
        _pct(ood["not_a_digit_nondigits"]),
        _pct(ood["unsure_nondigits"]),
        _pct(ood["unsure_digits"]),
        _num(wasm.get("median_ms")),
        "–" if wasm.get("vs_baseline") is None else f"{wasm['vs_baseline']:.2f}×",
    ]


def comparison_table(rows: list[dict]) -> str:
    """The markdown table: one row per model (plus a column for the collected drawings when
    they were given: ``compare(samples=...)``)."""
    collected = any(row["accuracy"].get("samples") is not None for row in rows)
    columns = [*TABLE_COLUMNS, "collected drawings"] if collected else list(TABLE_COLUMNS)
    align = ["---", "---", *["---:"] * (len(columns) - 2)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        cells = table_row(row) + ([_pct(row["accuracy"].get("samples"))] if collected else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_style_table(rows: list[dict]) -> str:
    """Markdown: accuracy per style of ``trainer.synthetic.styles`` (one column per model)."""
    styles = list(rows[0]["per_style"]) if rows else []
    lines = ["| style | " + " | ".join(r["name"] for r in rows) + " |", "|---|" + "---:|" * len(rows)]
    for style in styles:
        lines.append(f"| {style} | " + " | ".join(_pct(r["per_style"].get(style)) for r in rows) + " |")
    return "\n".join(lines)


def per_kind_table(rows: list[dict]) -> str:
    """Markdown: per kind of non-digit, the share each model calls "not sure" (either rule) and
    the AUROC of its top-probability score; test-only kinds marked."""
    kinds = list(rows[0]["ood"]["per_kind"]) if rows else []
    header = ["kind", "n", *[f"{r['name']}: not sure / AUROC" for r in rows]]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(rows)]
    for kind in kinds:
        first = rows[0]["ood"]["per_kind"][kind]
        label = kind + (" (test only)" if first["test_only"] else "")
        cells = [
            f"{_pct(r['ood']['per_kind'][kind]['unsure'])} / {_num(r['ood']['per_kind'][kind]['auroc_max_probability'])}"
            for r in rows
        ]
        lines.append("| " + " | ".join([label, str(first["n"]), *cells]) + " |")
    return "\n".join(lines)


def write_markdown(path: Path, report: dict) -> None:
    """comparison.md: the table, what each column means, the notes."""
    s = report["settings"]
    wasm = report["wasm"]
    lines = [
        f"# Model comparison ({len(report['models'])} models, {s['n']:,} MNIST test digits, "
        f"{s['nondigits']:,} non-digits)",
        "",
        comparison_table(report["models"]),
        "",
        "![comparison](comparison.png)",
        "",
        "- **parameters**: tensor elements in the file (weights, biases, BatchNorm running statistics); "
        "**file**: the safetensors file's size.",
        f"- **clean / augmented / pen {PAGE_PEN_WIDTH} (page) / adverse pen / synthetic writers / styles MNIST lacks**: "
        "accuracy on `trainer.evaluation.evaluate`'s test sets (the writers: `trainer/synthetic/writers.py`, the "
        "styles: `trainer/synthetic/styles.py`, both writer-separated; per style below); **pens mean**: the mean "
        f"over the redrawn sets with pens {', '.join(f'{w:g}' for w in s['pen_widths'])} px. "
        "Each model's own report: " + ", ".join(f"[{r['name']}]({r['report']})" for r in report["models"]) + ".",
        f"- **ECE**: expected calibration error on the clean test digits, {s['ece_bins']} equal-width confidence "
        f"bins (Guo et al. 2017), eval-mode softmax; **ECE (MC)**: the same with the mean of {s['mc_samples']} "
        "MC-dropout passes.",
        f"- **AUROC**: how well a score ranks the {s['nondigits']:,} non-digits (positives) above the test "
        "digits (negatives); 1 = perfect, 0.5 = chance. Scores: **top prob.** 1 - the top eval-mode softmax "
        'probability (the page\'s "not a digit" rule thresholds it), **energy** -logsumexp(logits) (Liu et al. '
        "2020), **Mahalanobis** the smallest tied-covariance Mahalanobis distance of the penultimate features to "
        f"a class mean fitted on {s['mahalanobis_fit']:,} training digits (Lee et al. 2018), **MI** the MC-dropout "
        f"mutual information ({s['mc_samples']} passes). The non-digits are `trainer/synthetic/nondigits.py`'s "
        "test split (letters, symbols, scribbles, zigzags, noise, ... in fonts, seeds and kinds the training "
        "never saw; see nondigits.png), drawn with a round pen and preprocessed as the page does.",
        "- **not a digit**: the fraction flagged by the file's `not_a_digit_max_probability` (top probability "
        "below it); **not sure**: flagged by either rule (that one, or MC-dropout mutual information above "
        "`unsure_mutual_information`), as the page and the API decide.",
        f"- **wasm ms/predict**: median per `predict` of `{wasm['build']}` in Node {wasm['node'] or ''} "
        f"(`Classifier.fromBytes`; {wasm['rounds']} interleaved rounds of {wasm['block']} predicts per model), "
        f"and the ratio to the {BASELINE}.",
        "",
    ]
    lines += ["## Non-digits per kind", "", per_kind_table(report["models"]), ""]
    if any(row["per_style"] for row in report["models"]):
        lines += ["## Styles MNIST lacks, per style", "", per_style_table(report["models"]), ""]
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    path.write_text("\n".join(lines))


def plot_comparison(report: dict, path: Path) -> None:
    """comparison.png: accuracy per test set per model (grouped bars, top), reliability
    diagrams (eval mode solid, MC dropout dashed), OOD AUROCs and wasm ms per predict (bottom)."""
    rows = report["models"]
    colours = [f"C{i % 10}" for i in range(len(rows))]
    figure = new_figure(15, 10)
    grid = figure.add_gridspec(2, 3, height_ratios=(1, 1.1), width_ratios=(1.3, 1, 1))
    bars = figure.add_subplot(grid[0, :])
    keys = rows[0]["set_keys"]
    width = 0.8 / len(rows)
    lowest = min(r["sets"][k] for r in rows for k in keys)
    for i, (row, colour) in enumerate(zip(rows, colours)):
        values = [row["sets"][k] for k in keys]
        x = np.arange(len(keys)) - 0.4 + width * (i + 0.5)
        drawn = bars.bar(x, values, width, color=colour, label=row["name"])
        bars.bar_label(drawn, labels=[f"{v:.1%}" for v in values], fontsize=7, rotation=90, padding=2)
    bottom = max(0.0, math.floor((lowest - 0.02) * 20) / 20)  # a multiple of 5 % below the lowest bar
    bars.set_ylim(bottom, 1.0 + (1.0 - bottom) * 0.12)  # room for the labels above 100 %
    step = 0.05 if 1.0 - bottom > 0.1 else 0.01
    bars.set_yticks(np.arange(math.ceil(bottom / step - 1e-9), round(1 / step) + 1) * step)
    bars.set_xticks(range(len(keys)), [textwrap.fill(set_label(k), 16) for k in keys])
    bars.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    bars.set_ylabel("accuracy")
    bars.grid(axis="y", alpha=0.3)
    bars.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, title="model")
    bars.set_title(f"Accuracy per test set ({report['settings']['n']:,} MNIST test digits each)")

    reliability = figure.add_subplot(grid[1, 0])
    reliability.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for row, colour in zip(rows, colours):
        for mode, style in (("eval", "-"), ("mc_dropout", "--")):
            ece = row["calibration"][mode]
            used = [b for b in ece["bins"] if b["count"] >= RELIABILITY_MIN_COUNT]
            reliability.plot(
                [b["confidence"] for b in used],
                [b["accuracy"] for b in used],
                style,
                color=colour,
                label=f"{row['name']} {'MC' if mode == 'mc_dropout' else 'eval'} (ECE {ece['ece']:.4f})",
            )
            reliability.scatter(
                [b["confidence"] for b in used],
                [b["accuracy"] for b in used],
                color=colour,
                s=[8 + 60 * math.sqrt(b["count"] / ece["n"]) for b in used],
                zorder=3,
            )
    shown = [
        b
        for row in rows
        for mode in ("eval", "mc_dropout")
        for b in row["calibration"][mode]["bins"]
        if b["count"] >= RELIABILITY_MIN_COUNT
    ]
    low = math.floor(min([b["lower"] for b in shown] + [b["accuracy"] for b in shown], default=0.0) * 10) / 10
    reliability.set_xlim(low, 1.01)
    reliability.set_ylim(low, 1.01)
    reliability.set_xlabel("mean confidence in bin")
    reliability.set_ylabel("accuracy in bin")
    reliability.set_title(
        f"Reliability, clean test digits ({report['settings']['ece_bins']} bins)\n"
        f"bins of < {RELIABILITY_MIN_COUNT} digits not drawn; dot area ~ count",
        fontsize=9,
    )
    reliability.legend(fontsize=7, loc="upper left")
    reliability.grid(alpha=0.3)

    ood = figure.add_subplot(grid[1, 1])
    y = np.arange(len(rows))
    shown_scores = [
        (key, label)
        for key, label in (
            ("auroc_max_probability", "top probability"),
            ("auroc_energy", "energy"),
            ("auroc_mahalanobis", "Mahalanobis"),
            ("auroc_mutual_information", "MC mutual information"),
        )
        if all(row["ood"].get(key) is not None for row in rows)
    ]
    height = 0.8 / len(shown_scores)
    for j, (key, label) in enumerate(shown_scores):
        values = [row["ood"][key] for row in rows]
        drawn = ood.barh(y - 0.4 + height * (j + 0.5), values, height * 0.9, label=label, color=f"C{j}")
        ood.bar_label(drawn, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=2)
    ood.set_yticks(
        y,
        [
            f"{r['name']}\nnot sure: {_pct(r['ood']['unsure_nondigits'])} non-digits,\n"
            f"{_pct(r['ood']['unsure_digits'])} digits"
            for r in rows
        ],
        fontsize=8,
    )
    ood.invert_yaxis()
    ood.axvline(0.5, color="grey", ls=":")
    ood.set_xlim(0.0, 1.2)
    ood.set_xlabel("AUROC (non-digits vs test digits; 0.5 = chance)")
    ood.set_title("Telling non-digits from digits", fontsize=10, pad=30)
    ood.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)

    speed = figure.add_subplot(grid[1, 2])
    timed = [(row["name"], row.get("wasm") or {}) for row in rows]
    if any("median_ms" in w for _, w in timed):
        values = [w.get("median_ms", 0.0) for _, w in timed]
        drawn = speed.barh(y, values, 0.6, color=colours)
        labels = [
            f"{w['median_ms']:.3f} ms" + (f" ({w['vs_baseline']:.2f}×)" if w.get("vs_baseline") else "")
            if "median_ms" in w
            else "not run"
            for _, w in timed
        ]
        speed.bar_label(drawn, labels=labels, fontsize=8, padding=2)
        speed.set_yticks(y, [name for name, _ in timed])
        speed.invert_yaxis()
        speed.set_xlim(0, max(values) * 1.6)
        speed.set_xlabel("ms per predict (median)")
    else:
        speed.text(
            0.5,
            0.5,
            (report["wasm"]["note"] or "no timing").replace(": ", ":\n", 1),
            ha="center",
            va="center",
            wrap=True,
            fontsize=9,
        )
        speed.set_axis_off()
    speed.set_title("wasm fast-simd128 in Node", fontsize=10)
    figure.savefig(path)


def plot_nondigits(nondigits: NonDigits, path: Path, per_kind: int = 8) -> None:
    """A grid of the non-digits as the models see them (ink white): one row per kind, its first
    ``per_kind``."""
    names = nondigits.kind_names()
    kinds = [k for k in KINDS if k in names]
    figure = new_figure(per_kind * 1.0 + 1.6, len(kinds) * 1.0 + 0.5)
    figure.suptitle("Non-digits (test split) as the models see them")
    axes = figure.subplots(len(kinds), per_kind, squeeze=False)
    for row, kind in zip(axes, kinds):
        chosen = [i for i, k in enumerate(names) if k == kind][:per_kind]
        row[0].set_title(kind + (" (test only)" if kind in TEST_ONLY_KINDS else ""), fontsize=8, loc="left")
        for ax, i in zip(row, chosen + [None] * per_kind):
            ax.axis("off")
            if i is not None:
                ax.imshow(nondigits.images[i], cmap="gray", vmin=0, vmax=255)
    figure.savefig(path)


# --- the whole comparison --------------------------------------------------------------------


def compare(
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: int = 0,
    *,
    reports_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    nondigit_count: int | None = None,
    wasm_build: str | Path = WASM_BUILD,
    wasm_rounds: int = WASM_ROUNDS,
    samples: tuple | None = None,
) -> dict:
    """Compare every ``*.safetensors`` model in ``models_dir``; write comparison.json/.md/.png.

    Args:
        models_dir: folder of the models (``models/``).
        samples: drawings collected by the page, ``(images, labels, writers)`` as
            ``trainer.evaluation.evaluate.evaluate`` takes them: every model is scored on them too (a
            ``collected drawings`` column; per writer in each model's report).
        out_dir: the comparison folder (created); None: ``reports/models``.
        data_dir: MNIST folder; None: ``data/``.
        limit: the first ``limit`` MNIST test digits only, and ``limit`` non-digits (0: all
            10,000 digits, ``DEFAULT_NONDIGITS`` non-digits); for quick runs and tests.
        reports_dir: where each model's own report folder goes (``<reports_dir>/<name>/``);
            None: the parent of ``out_dir`` (``reports/``).
        cache_dir: cache of the redrawn test sets (``trainer.evaluation.evaluate``); None: its default.
        nondigit_count: number of non-digits, overriding the one ``limit`` implies.
        wasm_build: the wasm build folder timed in Node; wasm_rounds: its timing rounds.

    Returns:
        the report written to comparison.json: ``settings``, ``models`` (one dict per model, in
        table order: the ``BASELINE`` first; accuracies in [0, 1], ``calibration``, ``ood``,
        ``wasm``), ``wasm`` (the whole timing run), ``notes``, ``timings_s``.

    Raises:
        CompareError: a missing or empty models folder, or no readable model in it.
        data.DataError: no MNIST. ValueError: a negative limit.
    """
    if int(limit) < 0:
        raise ValueError(f"limit must be >= 0 (0: all test digits), got {limit}")
    loaded, notes = load_models(discover(Path(models_dir)))
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT_DIR
    reports = Path(reports_dir) if reports_dir is not None else out.parent
    data_path = Path(data_dir) if data_dir is not None else data.DEFAULT_DATA_DIR
    timings = {}

    split = data.load_split(train=False, data_dir=data_path)
    n = min(int(limit), len(split.labels)) if limit else len(split.labels)
    digits, labels = split.images[:n].float(), split.labels[:n]
    count = nondigit_count if nondigit_count is not None else (int(limit) if limit else DEFAULT_NONDIGITS)
    started = time.perf_counter()
    nondigits = nondigit_set(count, "test", cache_dir=data_path / "nondigits")
    timings["nondigits"] = time.perf_counter() - started
    train_split = data.load_split(train=True, data_dir=data_path).first(min(MAHALANOBIS_FIT, max(n, 1000)))
    fit = (train_split.images.float(), train_split.labels)

    rows = []
    for entry in loaded:
        name, path = entry["name"], entry["path"]
        print(f"\n== {name} ({path.name}, {entry['architecture']}) ==")
        started = time.perf_counter()
        evaluation = evaluate_model(
            path,
            reports / name,
            data_path if data_dir is not None else None,
            limit=int(limit),
            cache_dir=cache_dir,
            samples=samples,
        )
        timings[f"{name}_evaluate"] = time.perf_counter() - started
        sets = {key: result["accuracy"] for key, result in evaluation["sets"].items()}
        redrawn = [sets[redrawn_key(w)] for w in evaluation["pen_widths"] if redrawn_key(w) in sets]
        started = time.perf_counter()
        numbers = uncertainty_numbers(entry["model"], entry["metadata"], digits, labels, nondigits, name, fit)
        timings[f"{name}_uncertainty"] = time.perf_counter() - started
        has_dropout = any(isinstance(spec, Dropout) for spec in entry["model"].layers)
        if numbers["ood"]["unsure_threshold"] is None and has_dropout:
            notes.append(
                f'{name}: no `unsure_mutual_information` in its metadata: no "not sure" fractions '
                "(`python -m trainer.uncertainty --weights ...` calibrates it)"
            )
        rows.append(
            {
                "name": name,
                "file": shown_path(path),
                "architecture": entry["architecture"],
                "architecture_id": entry["model"].architecture,
                "parameters": tensor_elements(path),
                "file_bytes": path.stat().st_size,
                "metadata_test_accuracy": entry["metadata"].get("test_accuracy"),
                "report": _relative_link(reports / name / "summary.md", out),
                "set_keys": list(sets),
                "sets": sets,
                "accuracy": {
                    "clean": sets["clean"],
                    "augmented": sets["augmented"],
                    "page_pen": sets.get(redrawn_key(PAGE_PEN_WIDTH)),
                    "redrawn_mean": float(np.mean(redrawn)) if redrawn else None,
                    "adverse": sets.get(ADVERSE_KEY),
                    "samples": sets.get(SAMPLES_KEY),
                    "writers": sets.get(WRITERS_KEY),
                    "styles": sets.get(STYLES_KEY),
                },
                "per_style": {
                    name: r["accuracy"]
                    for name, r in evaluation["sets"].get(STYLES_KEY, {}).get("per_style", {}).items()
                },
                **numbers,
            }
        )

    started = time.perf_counter()
    # a sure digit and some non-digits
    checks = torch.cat([digits[:1], torch.from_numpy(nondigits.images[:WASM_CHECK_NONDIGITS]).float()])
    reference = {e["name"]: torch.softmax(logits_of(e["model"], checks), dim=1).double().numpy() for e in loaded}
    wasm = wasm_timing(
        [{"name": e["name"], "path": e["path"]} for e in loaded],
        digits[0].numpy(),
        checks.reshape(len(checks), -1).numpy(),
        reference,
        build=Path(wasm_build),
        rounds=wasm_rounds,
    )
    timings["wasm"] = time.perf_counter() - started
    for row in rows:
        row["wasm"] = wasm["models"].get(row["name"])
    if wasm["note"]:
        notes.append(wasm["note"])

    report = {
        "settings": {
            "models_dir": shown_path(Path(models_dir)),
            "n": n,
            "limit": int(limit),
            "nondigits": count,
            "mahalanobis_fit": len(fit[1]),
            "mc_samples": MC_SAMPLES,
            "mc_seed": MC_SEED,
            "ece_bins": ECE_BINS,
            "pen_widths": list(evaluation["pen_widths"]) if rows else list(PEN_WIDTHS),
            "ood_positives": "non-digits (trainer.synthetic.nondigits, test split); "
            "AUROC = P(score(non-digit) > score(test digit)), ties half",
        },
        "models": rows,
        "wasm": wasm,
        "notes": notes,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out / "comparison.json", report)
    write_markdown(out / "comparison.md", report)
    plot_comparison(report, out / "comparison.png")
    plot_nondigits(nondigits, out / "nondigits.png")
    print(
        f"\n{len(rows)} models on {n:,} MNIST test digits and {count:,} non-digits "
        f"(report: {shown_path(out)}/comparison.md)\n"
    )
    print(comparison_table(rows))
    for note in notes:
        print(f"note: {note}")
    return report


def _relative_link(target: Path, start: Path) -> str:
    """``target`` relative to the folder ``start`` (for a markdown link), absolute when the two
    share no root."""
    import os

    try:
        return os.path.relpath(Path(target).resolve(), Path(start).resolve())
    except ValueError:
        return str(Path(target).resolve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="default: models/")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: reports/models")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: data/")
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help=f"first N test digits and N non-digits only (0: all, {DEFAULT_NONDIGITS:,} non-digits)",
    )
    args = parser.parse_args(argv)
    try:
        compare(args.models_dir, args.out_dir, args.data_dir, limit=args.limit)
    except (CompareError, WeightsError, data.DataError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
