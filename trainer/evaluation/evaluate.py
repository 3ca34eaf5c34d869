"""Evaluate a weights file on MNIST and on what a canvas gives it; write a report folder.

``invoke evaluate`` calls ``evaluate()``; ``python -m trainer.evaluation.evaluate --help`` works too.
Test sets, all built from the 10,000 MNIST test digits (or the first ``limit``):

- ``clean``: the digits as they are;
- ``augmented``: every digit under one random affine transform (``trainer.train.random_warp``
  with ``trainer.augment.Augment()``'s ranges), drawn from a generator seeded with
  ``AUGMENT_SEED``, so the set is the same in every run;
- ``redrawn pen W``: the digits reduced to their strokes and redrawn with a round pen W canvas
  pixels wide, then preprocessed as the page does (``trainer.synthetic.redraw``), one set per pen width;
- ``redrawn, adverse pen`` (key ``redrawn_adverse``): the same strokes drawn with the page's
  "challenge" pen (web/pen.js; ``trainer.synthetic.redraw.adverse_set``): width 8-32 px and colour
  changing along the stroke, light colours giving faint ink; digit i with pen seed
  ``ADVERSE_SEED + i``;
- ``synthetic writers`` (key ``writers``): ``trainer.synthetic.writers``' writers (seeds from
  ``WRITER_SEED``), each writing 10 digits per class in its own consistent style (slant,
  pen width, elastic field, crossed 7s, flagged 1s, ...) from glyphs of MNIST's test digits,
  with the page's pen and preprocessing: a writer-separated test, scored per writer too
  (``per_writer``); 20 writers, or one per 100 digits of ``limit``;
- ``styles MNIST lacks`` (key ``styles``): ``trainer.synthetic.styles``' writer-separated test
  set (60 writers x 5 digits per class, test seeds, parameter ranges wider than training's),
  digits in styles MNIST's writers rarely used (hooked-tail 9s, one-stroke open 4s, flagged
  1s without a base, curved-top 7s, ...) next to common ones, scored per style too
  (``per_style``); 60 writers, or one per 50 digits of ``limit``.

The report folder gets ``evaluation.json`` (every number), ``summary.md`` (the table to compare
models by, the model's metadata, links to the plots) and PNG plots: ``confusion_matrix.png``
(clean), ``confusion_matrix_pen<W>.png`` (the page's pen), ``per_class_accuracy.png``,
``training_curves.png`` (from the ``metrics.json`` beside the weights, when it belongs to them),
``worst_errors.png`` (clean), ``worst_errors_pen<W>.png`` (the page's pen) and
``worst_errors_adverse.png`` (the adverse pen).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from numbers import Real
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnist_common.paths import DEFAULT_WEIGHTS, REPORTS_DIR, ROOT

from .. import data
from ..augment import AUGMENT_SEED, Augment, augmented_images
from ..export import WEIGHTS_DTYPES, WeightsError, load_model, metrics_path, read_metadata, write_metrics
from ..model import NUM_CLASSES, logits_of
from ..synthetic.redraw import (
    ADVERSE_MAX_WIDTH,
    ADVERSE_MIN_WIDTH,
    ADVERSE_SEED,
    DEFAULT_CACHE_DIR,
    PAGE_PEN_WIDTH,
    PEN_WIDTHS,
    adverse_set,
    blank_count,
    redrawn_sets,
)
from ..synthetic.styles import DEFAULT_CACHE_DIR as STYLES_CACHE_DIR
from ..synthetic.styles import style_names, styles_set
from ..synthetic.writers import DEFAULT_CACHE_DIR as WRITERS_CACHE_DIR
from ..synthetic.writers import writers_set

DEFAULT_REPORTS_DIR = REPORTS_DIR
#: Misclassified examples kept per test set in evaluation.json (and shown in the grids: 5 x 5).
WORST_ERRORS = 25
#: Key of the adverse-pen set in evaluation.json (its row: "redrawn, adverse pen").
ADVERSE_KEY = "redrawn_adverse"
#: Key of the synthetic writers' set (``trainer.synthetic.writers``), and how many writers by default.
WRITERS_KEY = "writers"
WRITERS = 20
#: Key of the styles set (``trainer.synthetic.styles``), and how many of its writers by default.
STYLES_KEY = "styles"
STYLE_WRITERS = 60

__all__ = ["evaluate", "main", "accuracy_by_dtype", "score", "WeightsError"]


def score(
    logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None = None, worst: int = WORST_ERRORS
) -> dict:
    """Every number the report shows for one test set.

    Args:
        logits: (N, 10) float32. labels: (N,) int64 in 0..9.
        images: (N, 28, 28) inputs, only to count the blank ones (all zeros); optional.
        worst: how many misclassified examples to list.

    Returns:
        a JSON-ready dict: ``n``; ``accuracy`` in [0, 1]; ``errors``; ``mean_loss`` (mean
        cross-entropy, nats); ``confusion_matrix`` (10 x 10 counts, rows = true class, columns =
        predicted); ``per_class_n``; ``per_class_accuracy`` (10 values in [0, 1], None for a
        class with no example); ``blank`` (all-zero inputs); ``worst_errors``: up to ``worst``
        misclassified examples, most confident first, each ``{index, true, predicted,
        probability, true_probability}`` (index into the test split, probabilities in [0, 1]).
    """
    n = len(labels)
    probabilities = torch.softmax(logits, dim=1)
    predicted = logits.argmax(dim=1)
    confusion = torch.bincount(labels * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2)
    confusion = confusion.view(NUM_CLASSES, NUM_CLASSES)
    per_class_n = confusion.sum(dim=1)
    correct = int(confusion.trace())
    wrong = torch.nonzero(predicted != labels).flatten()
    confidence = probabilities[wrong, predicted[wrong]]
    order = wrong[torch.argsort(confidence, descending=True, stable=True)][:worst]
    return {
        "n": n,
        "accuracy": correct / n if n else math.nan,
        "errors": n - correct,
        "mean_loss": F.cross_entropy(logits, labels).item() if n else math.nan,
        "per_class_n": per_class_n.tolist(),
        "per_class_accuracy": [
            int(confusion[c, c]) / int(per_class_n[c]) if per_class_n[c] else None for c in range(NUM_CLASSES)
        ],
        "confusion_matrix": confusion.tolist(),
        "blank": int(blank_count(images.numpy())) if images is not None and n else 0,
        "worst_errors": [
            {
                "index": int(i),
                "true": int(labels[i]),
                "predicted": int(predicted[i]),
                "probability": float(probabilities[i, predicted[i]]),
                "true_probability": float(probabilities[i, labels[i]]),
            }
            for i in order
        ],
    }


def accuracy_by_dtype(
    weights: Path, dtypes: tuple[str, ...] = WEIGHTS_DTYPES, data_dir: Path = data.DEFAULT_DATA_DIR
) -> dict[str, dict]:
    """The same weights stored in each of ``dtypes`` (``export.convert_weights``), scored on
    the 10,000 MNIST test digits: ``{dtype: {"accuracy": in [0, 1], "errors": int,
    "changed": predictions that differ from the first dtype's}}``.

    Raises:
        WeightsError: ``weights`` is unreadable or not this architecture.
    """
    import tempfile

    from ..export import convert_weights

    test = data.load_split(train=False, data_dir=data_dir)
    results, first = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            converted = convert_weights(weights, Path(tmp) / f"model-{dtype}.safetensors", dtype)
            predicted = logits_of(load_model(converted), test.images.float()).argmax(dim=1)
            first = predicted if first is None else first
            errors = int((predicted != test.labels).sum())
            results[dtype] = {
                "accuracy": 1 - errors / len(test.labels),
                "errors": errors,
                "changed": int((predicted != first).sum()),
            }
    return results


def redrawn_key(pen_width: float) -> str:
    """Key of a redrawn set in evaluation.json, e.g. ``redrawn_pen20``."""
    return f"redrawn_pen{pen_width:g}"


#: Key of the collected drawings (``invoke evaluate --samples``) in evaluation.json.
SAMPLES_KEY = "samples"


def set_label(key: str) -> str:
    """Row label of a test set in the summary table, e.g. ``redrawn pen 20 (page)``,
    ``redrawn, adverse pen``."""
    if key == ADVERSE_KEY:
        return "redrawn, adverse pen"
    if key == SAMPLES_KEY:
        return "collected drawings (--samples)"
    if key == WRITERS_KEY:
        return "synthetic writers"
    if key == STYLES_KEY:
        return "styles MNIST lacks"
    if not key.startswith("redrawn_pen"):
        return key
    width = float(key.removeprefix("redrawn_pen"))
    return f"redrawn pen {width:g}" + (" (page)" if width == PAGE_PEN_WIDTH else "")


def metrics_beside(weights: Path, metadata: dict[str, str]) -> tuple[list[dict] | None, str | None]:
    """The training history in the metrics file of ``weights`` (``trainer.export.metrics_path``),
    when it is theirs.

    Returns:
        (history, None), or (None, a note saying why there are no training curves): no file, a
        soup of fine-tunes (``trainer.soup``: no training run of its own), no ``history`` list,
        or a ``test_accuracy`` that differs from the weights' metadata (the file then belongs to
        another training run).
    """
    path = metrics_path(weights)
    if not path.exists():
        return None, f"no training curves: there is no {path.name} beside the weights"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"no training curves: {path} is unreadable ({e})"
    history = metrics.get("history") if isinstance(metrics, dict) else None
    if isinstance(metrics, dict) and "soup" in metrics:
        count = len(metrics["soup"].get("inputs", []))
        return None, f"no training curves: the weights average {count} fine-tunes (trainer.soup; {path.name}: `soup`)"
    if not isinstance(history, list) or not history:
        return None, f"no training curves: {path} has no `history`"
    ours, theirs = metadata.get("test_accuracy"), metrics.get("test_accuracy")
    if ours is not None and theirs is not None and f"{float(theirs):.4f}" != f"{float(ours):.4f}":
        return None, (
            f"no training curves: {path} is from another run (test_accuracy {theirs}, the weights say {ours})"
        )
    return history, None


def summary_table(sets: dict[str, dict]) -> str:
    """The markdown table of the test sets: label, accuracy (%), errors, n."""
    rows = ["| test set | accuracy | errors | n |", "|---|---:|---:|---:|"]
    for key, result in sets.items():
        rows.append(f"| {set_label(key)} | {result['accuracy']:.2%} | {result['errors']:,} | {result['n']:,} |")
    return "\n".join(rows)


def _cell(value) -> str:
    """``value`` as text for a markdown table cell (a ``|`` in it escaped)."""
    return str(value).replace("|", "\\|")


def _weakest(groups: dict[str, dict], count: int) -> str:
    """The ``count`` groups (writers, styles) with the lowest accuracy, e.g. ``a 92%, b 95%``."""
    worst = sorted(groups.items(), key=lambda item: item[1]["accuracy"])[:count]
    return ", ".join(f"{name} {r['accuracy']:.0%}" for name, r in worst)


def _writers_line(result: dict) -> str:
    """The summary's line on the synthetic writers: what they are, the worst ones."""
    per_writer = result["per_writer"]
    return (
        f"- **synthetic writers**: {len(per_writer)} writers of `trainer/synthetic/writers.py`, each writing 10 digits "
        "per class in one consistent style (slant, size, pen width, elastic field, crossed 7s, flagged 1s, "
        f"hooked 9s) from glyphs of MNIST test digits, with the page's pen and preprocessing; weakest: "
        f"{_weakest(per_writer, 3)}."
    )


def _styles_line(result: dict) -> str:
    """The summary's line on the styles set: what it is, the weakest styles."""
    per_style = result["per_style"]
    return (
        f"- **styles MNIST lacks**: `trainer/synthetic/styles.py`'s writer-separated test set, {len(per_style)} "
        "styles written from parametric strokes by writers and parameter ranges the training never saw, "
        f"with the page's pen and preprocessing; weakest: {_weakest(per_style, 5)}."
    )


def write_summary(path: Path, report: dict, plots: dict[str, str], notes: list[str]) -> None:
    """Write summary.md: the table, what the sets are, the model's metadata, plots, notes."""
    metadata = report["metadata"]
    lines = [
        f"# Evaluation of `{report['weights']}`",
        "",
        summary_table(report["sets"]),
        "",
        f"- **clean**: MNIST test digits ({report['n']:,}"
        + (f", the first {report['n']:,} only" if report["limit"] else "")
        + ").",
        f"- **augmented**: each digit under one random affine transform (rotation ±{report['augment']['rotation_deg']:g}°, "
        f"translation ±{report['augment']['translate_px']:g} px, scale ±{report['augment']['scale']:.0%}, "
        f"shear ±{report['augment']['shear_deg']:g}°), generator seed {report['augment_seed']}.",
        "- **redrawn pen W**: each digit reduced to its strokes and redrawn on the 280×280 canvas "
        f"with a round pen W px wide, then preprocessed as the page does; the page's pen is {PAGE_PEN_WIDTH} px.",
        *(
            [
                f"- **redrawn, adverse pen**: the same strokes drawn with the page's challenge pen (web/pen.js): "
                f"width {ADVERSE_MIN_WIDTH}-{ADVERSE_MAX_WIDTH} px and colour changing along the stroke, ink = "
                f"255 − BT.601 luma of the colour on white (light blue and cyan give faint strokes); "
                f"pen seeds {report['adverse_seed']} + digit index."
            ]
            if report.get("adverse_seed") is not None
            else []
        ),
        *([_writers_line(report["sets"][WRITERS_KEY])] if WRITERS_KEY in report["sets"] else []),
        *([_styles_line(report["sets"][STYLES_KEY])] if STYLES_KEY in report["sets"] else []),
        "",
        "## Model",
        "",
        "| metadata | value |",
        "|---|---|",
        *[f"| {key} | {_cell(metadata[key])} |" for key in sorted(metadata)],
        "",
        "## Plots",
        "",
        *[f"- [{title}]({name})" for name, title in plots.items()],
        "",
    ]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    path.write_text("\n".join(lines))


def _check_limit(limit: int, total: int) -> int:
    """How many test digits to use: ``limit`` (0 = all), or ValueError for a negative one."""
    limit = int(limit)
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0: all {total:,} test digits), got {limit}")
    return min(limit, total) if limit else total


# Plots: matplotlib's object API on the Agg canvas (no pyplot, no display, no global state).


def new_figure(width_in: float, height_in: float):
    """A matplotlib Figure drawn by the Agg backend (PNG output, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_confusion(matrix: list[list[int]], title: str, path: Path) -> None:
    """Confusion matrix as a heat map (log colour scale, zeros blank), every non-zero cell
    annotated with its count. Rows: true class, columns: predicted class."""
    from matplotlib.colors import LogNorm

    counts = np.asarray(matrix)
    figure = new_figure(7, 6.2)
    ax = figure.add_subplot()
    shown = np.ma.masked_equal(counts, 0)
    norm = LogNorm(vmin=1, vmax=max(2, counts.max()))
    image = ax.imshow(shown, cmap="Blues", norm=norm)
    ax.set_facecolor("white")
    figure.colorbar(image, ax=ax, label="digits (log scale)")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            dark = norm(count) > 0.6
            ax.text(
                col,
                row,
                f"{count:,}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
                fontweight="bold" if row != col else "normal",
            )
    ax.set_xticks(range(NUM_CLASSES))
    ax.set_yticks(range(NUM_CLASSES))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    figure.savefig(path)


def plot_per_class(sets: dict[str, dict], path: Path) -> None:
    """Per-class accuracy: one group of bars per digit, one bar per test set."""
    figure = new_figure(11, 4.8)
    ax = figure.add_subplot()
    width = 0.8 / len(sets)
    lowest = 1.0
    for i, (key, result) in enumerate(sets.items()):
        values = [np.nan if a is None else a for a in result["per_class_accuracy"]]
        lowest = min(lowest, np.nanmin(values))
        x = np.arange(NUM_CLASSES) - 0.4 + width * (i + 0.5)
        ax.bar(x, values, width, label=f"{set_label(key)} ({result['accuracy']:.2%})")
    bottom = max(0.0, math.floor((lowest - 0.01) * 20) / 20)  # a multiple of 5 % below the lowest bar
    ax.set_ylim(bottom, 1.0)
    ax.set_xticks(range(NUM_CLASSES))
    ax.set_xlabel("true digit")
    ax.set_ylabel(f"accuracy (axis from {bottom:.0%})")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="test set (overall)")
    ax.set_title("Per-class accuracy")
    figure.savefig(path)


def plot_training_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and test, from metrics.json's ``history``."""
    epochs = [record["epoch"] for record in history]
    figure = new_figure(10, 4)
    loss, accuracy = figure.subplots(1, 2)
    for ax, metric, unit in ((loss, "loss", "cross-entropy"), (accuracy, "accuracy", "accuracy")):
        for split in ("train", "test"):
            ax.plot(epochs, [record[f"{split}_{metric}"] for record in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend()
    loss.set_title("Loss per epoch (train: augmented, with label smoothing)")
    accuracy.set_title("Accuracy per epoch")
    accuracy.yaxis.set_major_formatter(lambda v, _: f"{v:.1%}")
    figure.savefig(path)


def plot_worst_errors(images: torch.Tensor, errors: list[dict], title: str, path: Path, side: int = 5) -> None:
    """A ``side`` x ``side`` grid of the most confident mistakes, each titled
    "true T → pred P (probability)"; the input as the model sees it, ink white."""
    figure = new_figure(side * 1.5, side * 1.6 + 0.3)
    figure.suptitle(title)
    axes = figure.subplots(side, side).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, error in zip(axes, errors):
        ax.imshow(images[error["index"]].numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true {error['true']} → pred {error['predicted']} ({error['probability']:.2f})", fontsize=8)
    if not errors:
        axes[len(axes) // 2].text(0.5, 0.5, "no misclassified digits", ha="center", va="center")
    figure.savefig(path)


def write_plots(
    out_dir: Path, sets: dict[str, torch.Tensor], results: dict[str, dict], history: list[dict] | None
) -> dict[str, str]:
    """Write every PNG into ``out_dir``; returns {file name: title} of what was written."""
    written = {}
    page_key = redrawn_key(PAGE_PEN_WIDTH)
    plot_confusion(
        results["clean"]["confusion_matrix"], "Confusion matrix: clean MNIST test", out_dir / "confusion_matrix.png"
    )
    written["confusion_matrix.png"] = "confusion matrix, clean MNIST test"
    if page_key in results:
        name = f"confusion_matrix_pen{PAGE_PEN_WIDTH}.png"
        plot_confusion(
            results[page_key]["confusion_matrix"], f"Confusion matrix: {set_label(page_key)}", out_dir / name
        )
        written[name] = f"confusion matrix, {set_label(page_key)}"
    plot_per_class(results, out_dir / "per_class_accuracy.png")
    written["per_class_accuracy.png"] = "per-class accuracy, every test set"
    if history is not None:
        plot_training_curves(history, out_dir / "training_curves.png")
        written["training_curves.png"] = "training curves (loss and accuracy per epoch)"
    plot_worst_errors(
        sets["clean"],
        results["clean"]["worst_errors"],
        "Most confident mistakes: clean MNIST test",
        out_dir / "worst_errors.png",
    )
    written["worst_errors.png"] = "most confident mistakes, clean MNIST test"
    if page_key in results:
        name = f"worst_errors_pen{PAGE_PEN_WIDTH}.png"
        plot_worst_errors(
            sets[page_key],
            results[page_key]["worst_errors"],
            f"Most confident mistakes: {set_label(page_key)}",
            out_dir / name,
        )
        written[name] = f"most confident mistakes, {set_label(page_key)}"
    if ADVERSE_KEY in results:
        name = "worst_errors_adverse.png"
        plot_worst_errors(
            sets[ADVERSE_KEY],
            results[ADVERSE_KEY]["worst_errors"],
            f"Most confident mistakes: {set_label(ADVERSE_KEY)}",
            out_dir / name,
        )
        written[name] = f"most confident mistakes, {set_label(ADVERSE_KEY)}"
    return written


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(ROOT))
    except ValueError:
        return str(resolved)


def evaluate(
    weights: str | Path = DEFAULT_WEIGHTS,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: int = 0,
    pen_widths=PEN_WIDTHS,
    cache_dir: str | Path | None = None,
    adverse_pen: bool = True,
    samples: tuple[np.ndarray, np.ndarray, list] | None = None,
    writers: int = WRITERS,
    style_writers: int = STYLE_WRITERS,
) -> dict:
    """Evaluate ``weights`` on every test set and write the report folder.

    Args:
        weights: a safetensors file written by ``trainer.export.save_safetensors``.
        out_dir: the report folder (created with its parents); None: ``reports/<weights stem>``.
        data_dir: MNIST folder; None: ``data/`` (fetched and md5-checked when missing).
        limit: use the first ``limit`` test digits only (0: all 10,000); for quick runs and tests.
        pen_widths: pen widths of the redrawn sets, in canvas pixels (the page's is 20).
        cache_dir: cache of the redrawn sets; None: ``<data_dir>/redrawn``.
        adverse_pen: add the adverse-pen set (``redrawn_adverse``).
        samples: drawings collected by the page (``mnist_common.samples``), as ``(images, labels,
            writers)``: (N, 28, 28) uint8 (ink = 255, already preprocessed), (N,) labels 0..9 and
            N writer names (or None); added as the set ``samples``, not limited by ``limit``,
            with accuracy per writer (``per_writer``).
        writers: synthetic writers in the set ``writers`` (0: none); with a ``limit``, at most
            one per 100 digits of it. Their cache: ``<cache_dir>/writers``, or ``data/writers``.
        style_writers: writers of the styles set ``styles`` (0: none); with a ``limit``, at
            most one per 50 digits of it. Its cache: ``<cache_dir>/styles``, or ``data/styles``.

    Returns:
        the report written to ``evaluation.json``: ``sets`` maps each test set's key
        (``clean``, ``augmented``, ``redrawn_pen<W>``, ``redrawn_adverse``) to ``score``'s
        numbers; ``adverse_seed`` is the pen seed of the adverse set's first digit (None
        without that set).

    Raises:
        WeightsError: the weights file is missing, unreadable, or of another architecture
            (raised before anything is computed or written).
        data.DataError: the MNIST files are missing and cannot be fetched, or are corrupt.
        ValueError: a negative ``limit`` or a pen width that is not a positive number.
    """
    weights = Path(weights)
    model = load_model(weights)
    metadata = read_metadata(weights)
    pen_widths = tuple(pen_widths)
    if not pen_widths or not all(isinstance(w, Real) and not isinstance(w, bool) and w > 0 for w in pen_widths):
        raise ValueError(f"pen widths must be positive numbers of canvas pixels, got {pen_widths!r}")
    data_path = Path(data_dir) if data_dir is not None else data.DEFAULT_DATA_DIR
    cache = (
        Path(cache_dir)
        if cache_dir is not None
        else (data_path / "redrawn" if data_dir is not None else DEFAULT_CACHE_DIR)
    )
    out = Path(out_dir) if out_dir is not None else DEFAULT_REPORTS_DIR / weights.stem
    timings = {}

    started = time.perf_counter()
    split = data.load_split(train=False, data_dir=data_path)
    n = _check_limit(limit, len(split.labels))
    augmented = augmented_images(split.images)[:n]  # transforms drawn for the full split: see its doc
    split = split.first(n)
    sets = {"clean": split.images.float(), "augmented": augmented}
    for width, array in redrawn_sets(split.images.numpy(), pen_widths, cache_dir=cache).items():
        sets[redrawn_key(width)] = torch.from_numpy(array)
    if adverse_pen:
        sets[ADVERSE_KEY] = torch.from_numpy(adverse_set(split.images.numpy(), ADVERSE_SEED, cache_dir=cache))
    labels_of = {key: split.labels for key in sets}
    writers_of = {}  # key -> a writer name per digit, for the sets scored per writer
    if limit:
        writers = min(writers, math.ceil(n / 100))
    if writers:
        full = data.load_split(train=False, data_dir=data_path)
        written = writers_set(
            full.images.numpy(),
            full.labels.numpy(),
            writers=writers,
            cache_dir=cache / "writers" if cache_dir is not None else WRITERS_CACHE_DIR,
        )
        sets[WRITERS_KEY] = torch.from_numpy(written.images).float()
        labels_of[WRITERS_KEY] = torch.from_numpy(written.labels)
        writers_of[WRITERS_KEY] = [f"writer {w:02d}" for w in written.writers]
    styles_of = {}  # key -> a style name per digit, for the sets scored per style
    if limit:
        style_writers = min(style_writers, math.ceil(n / 50))
    if style_writers:
        styled = styles_set(style_writers, cache_dir=cache / "styles" if cache_dir is not None else STYLES_CACHE_DIR)
        sets[STYLES_KEY] = torch.from_numpy(styled.images).float()
        labels_of[STYLES_KEY] = torch.from_numpy(styled.labels)
        styles_of[STYLES_KEY] = [style_names()[i] for i in styled.styles]
    notes = []
    if samples is not None:
        images, labels, names = samples
        if len(images) == 0:
            raise ValueError("no collected drawings to evaluate (the sample database is empty)")
        if "extra_samples" in metadata:
            # Trained on the other writers' drawings (`invoke train --extra-samples`): only the
            # held-out writers are a test.
            _, (images, labels, names) = data.split_collected(np.asarray(images), np.asarray(labels), list(names))
            scored = (
                f"scored on the {len(labels)} of the writers held out from training only"
                if len(labels)
                else "none of these drawings is by a writer held out from training: the set is left out"
            )
            notes.append(
                f"collected drawings: this model trained on drawings of the sample database "
                f"{json.loads(metadata['extra_samples'])['database']}; {scored} (trainer.data.is_held_out)"
            )
        if len(labels):
            writers_of[SAMPLES_KEY] = ["(no writer)" if w is None else str(w) for w in names]
            sets[SAMPLES_KEY] = torch.as_tensor(np.asarray(images, dtype=np.float32))
            labels_of[SAMPLES_KEY] = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    timings["test_sets"] = time.perf_counter() - started

    started = time.perf_counter()
    results = {}
    for key, images in sets.items():
        logits = logits_of(model, images, desc=f"{set_label(key)} ({len(images):,} digits)")
        results[key] = score(logits, labels_of[key], images)
        correct = (logits.argmax(1) == labels_of[key]).numpy()
        for field, groups in (("per_writer", writers_of), ("per_style", styles_of)):
            if key in groups:
                names = np.asarray(groups[key])
                results[key][field] = {
                    name: {"n": int((names == name).sum()), "accuracy": float(correct[names == name].mean())}
                    for name in sorted(set(groups[key]))
                }
    timings["inference"] = time.perf_counter() - started

    history, curves_note = metrics_beside(weights, metadata)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plots = write_plots(out, sets, results, history)
    timings["plots"] = time.perf_counter() - started

    notes = ([curves_note] if curves_note else []) + notes
    blanks = {key: r["blank"] for key, r in results.items() if r["blank"]}
    if blanks:
        notes.append(
            "blank inputs (the page would show no prediction; scored as the model's guess on "
            "an empty image): " + ", ".join(f"{set_label(k)}: {v}" for k, v in blanks.items())
        )
    report = {
        "weights": shown_path(weights),
        "metadata": metadata,
        "n": n,
        "limit": int(limit),
        "augment": asdict(Augment()),
        "augment_seed": AUGMENT_SEED,
        "pen_widths": list(pen_widths),
        "page_pen_width": PAGE_PEN_WIDTH,
        "adverse_seed": ADVERSE_SEED if adverse_pen else None,
        "sets": results,
        "plots": list(plots),
        "notes": notes,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    write_metrics(out / "evaluation.json", report)
    write_summary(out / "summary.md", report, plots, notes)
    print(f"\n{shown_path(weights)} on {n:,} MNIST test digits (report: {shown_path(out)}/summary.md)\n")
    print(summary_table(results))
    for note in notes:
        print(f"note: {note}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: reports/<weights stem>")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: data/")
    parser.add_argument("--limit", type=int, default=0, help="first N test digits only (0: all)")
    parser.add_argument(
        "--pen-widths",
        default=",".join(map(str, PEN_WIDTHS)),
        help="comma-separated pen widths of the redrawn sets, canvas px",
    )
    parser.add_argument("--no-adverse-pen", action="store_true", help="leave out the adverse-pen set")
    parser.add_argument("--writers", type=int, default=WRITERS, help="synthetic writers (0: none; default %(default)s)")
    parser.add_argument(
        "--style-writers",
        type=int,
        default=STYLE_WRITERS,
        help="writers of the styles set (0: none; default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        widths = tuple(float(w) for w in args.pen_widths.split(","))
        evaluate(
            args.weights,
            args.out_dir,
            args.data_dir,
            limit=args.limit,
            pen_widths=widths,
            adverse_pen=not args.no_adverse_pen,
            writers=args.writers,
            style_writers=args.style_writers,
        )
    except (WeightsError, data.DataError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
