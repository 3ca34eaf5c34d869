"""Teaching the model a hand, measured: ``invoke personalize`` (issues 15 and 23).

The page's "Teach it" adapts the model to a few of the user's labelled drawings: a local
correction of the trained model's logits near them and their virtual examples
(wasm-infer/mnist-model/src/adapt.rs). This script measures that very code, through the native
module ``mnist_infer`` (the same Rust crate as the wasm), on one of two sets of writers
(``--writer-set``):

* ``styles`` (the default): ``trainer.synthetic.styles`` writers, each a consistent hand in the
  digit styles MNIST lacks (hooked-tail 9s, one-stroke open 4s, flagged 1s without a base, ...),
  written from stroke templates with the test set's widened ("held out") parameter ranges and
  every style of a digit shared out equally among the writers (``styles_set``'s defaults). The
  trained model reads these at about the rate it reads real outside writers (96 %);
* ``synthetic``: ``trainer.synthetic.writers``, consistent personal styles drawn from MNIST's
  *test* digits with the page's pen and preprocessing (read at about 98.8 %: easier).

For each writer:

1. the untaught model's accuracy on that writer's digits;
2. the model taught ``shots`` (default 3) digits per class of that writer (``teach_split``:
   its first instances), scored on the rest of that writer's digits;
3. what teaching costs elsewhere: accuracy on MNIST's 10,000 test digits with each writer's
   teaching in place (issue 15 allows at most 0.3 points lost);
4. the time one teach of 10 * shots examples takes here, natively.

The summary is over all writers and over the *weak* ones, those the untaught model reads below
``WEAK_BELOW`` %: teaching is for them.

The writers reported are not the ones the fit's settings were chosen on: ``--tune`` tries
``PULLS`` x ``WIDTHS`` (with and without virtual examples) on writers from ``TUNE_FIRST_SEED``
(synthetic) or ``STYLES_TUNE_SEED`` (styles; both seed ranges disjoint from the reported ones,
the styles ones inside ``styles.TEST_SEEDS``) and MNIST's first ``TUNE_MNIST`` test digits (all
of them), prints the grid and the best ``acceptable`` setting (the most accuracy on the weak
writers for at most ``MAX_MNIST_LOSS`` points of MNIST lost for 95 % of the writers); the chosen
settings are ``mnist_model::adapt::{PULL, WIDTH, STEPS}`` (``mnist_infer.TEACH_PULL`` /
``TEACH_WIDTH`` / ``TEACH_STEPS``).

Writes ``reports/teach/<weights name>[-synthetic].json`` and ``.png`` (accuracy before and
after, per writer) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from mnist_common.paths import REPORTS_DIR

from .. import data
from ..synthetic import styles
from ..synthetic.writers import WRITER_SEED, teach_split, writers_set
from .evaluate import DEFAULT_WEIGHTS

#: Writers of the report and of the tuning: disjoint seed ranges (synthetic writers).
TUNE_FIRST_SEED = WRITER_SEED + 100_000
#: First seed of the reported styles writers, and of the styles tuning writers: both inside
#: ``styles.TEST_SEEDS`` (never trained on), apart from each other and from the 60 writers from
#: ``styles.TEST_SEED`` that ``invoke evaluate`` scores.
STYLES_SEED = styles.TEST_SEED + 100_000
STYLES_TUNE_SEED = styles.TEST_SEED + 500_000
#: Writers and digits per class (3 taught, 10 tested) of each set by default.
DEFAULT_WRITERS = {"styles": 60, "synthetic": 50}
DEFAULT_PER_CLASS = {"styles": 13, "synthetic": 10}
WRITER_SETS = tuple(DEFAULT_WRITERS)
#: A writer the untaught model reads below this (%) is weak: the summary's second half.
WEAK_BELOW = 99.0
#: The grid ``--tune`` tries: the pull toward the trained model, and the kernels' width ``β``.
PULLS = (1e-4, 3e-4, 1e-3)
WIDTHS = (4.0, 5.0, 6.0)
#: MNIST test digits scored per setting while tuning: all 10,000, as in the report (the largest loss
#: over the writers, which decides, moves by 0.05 points per digit of 2,000).
TUNE_MNIST = 10_000
#: The most MNIST accuracy teaching may cost (issue 15), in points, for ``MNIST_LOSS_SHARE`` of the
#: writers; and for any writer (``acceptable`` says why two bounds).
MAX_MNIST_LOSS = 0.3
MNIST_LOSS_SHARE = 0.95
MAX_MNIST_LOSS_ANY = 2 * MAX_MNIST_LOSS
DEFAULT_REPORT_DIR = REPORTS_DIR / "teach"


class Writers(NamedTuple):
    """Digits of several writers, either set's, as ``measure`` takes them.

    images: (N, 28, 28) uint8, ink = 255, writer by writer and within a writer class by class.
    labels: (N,) int64 0..9. writers: (N,) int64 writer index 0..W-1. seeds: the W writers'
    seeds. describe: one line per writer (its style).
    """

    images: np.ndarray
    labels: np.ndarray
    writers: np.ndarray
    seeds: list[int]
    describe: list[str]


def synthetic_writers(count: int, per_class: int, first_seed: int, progress: bool = True) -> Writers:
    """``trainer.synthetic.writers`` writers from MNIST's test digits, as ``Writers``."""
    split = data.load_split(train=False)
    found = writers_set(split.images.numpy(), split.labels.numpy(), count, per_class, first_seed, progress=progress)
    return Writers(
        found.images,
        found.labels,
        found.writers,
        [s.seed for s in found.styles],
        [s.describe() for s in found.styles],
    )


def styles_writers(count: int, per_class: int, first_seed: int, progress: bool = True) -> Writers:
    """``trainer.synthetic.styles`` writers (``styles_set``: held-out ranges, balanced styles),
    as ``Writers``; a writer's line names its styles other than each digit's school form."""
    found = styles.styles_set(count, per_class, first_seed, progress=progress)
    seeds = list(dict.fromkeys(found.writers.tolist()))
    index = {seed: i for i, seed in enumerate(seeds)}
    names = styles.style_names()
    plain = {styles.STYLES[d][0] for d in range(styles.NUM_CLASSES)}
    describe = []
    for seed in seeds:
        mine = np.unique(found.styles[found.writers == seed])
        describe.append(", ".join(names[i] for i in mine if names[i] not in plain) or "school forms")
    return Writers(found.images, found.labels, np.array([index[w] for w in found.writers.tolist()]), seeds, describe)


def styles_hand(count: int, first_seed: int, writer: int) -> styles.Hand:
    """The hand of writer ``writer`` (0..count-1) of ``styles_writers(count, ..., first_seed)``:
    its seed, its share of the balanced styles and the widened ranges, to write more of its digits
    (``styles.write``)."""
    if not 0 <= writer < count:
        raise ValueError(f"writer must be 0..{count - 1}, got {writer}")
    assigned = styles.balanced_styles(count, first_seed)[writer]
    return styles.hand(first_seed + writer, held_out=True, styles=assigned)


def load_writers(writer_set: str, count: int, per_class: int, tune: bool, progress: bool = True) -> Writers:
    """The reported (or, with ``tune``, the tuning) writers of ``writer_set``."""
    if writer_set == "styles":
        return styles_writers(count, per_class, STYLES_TUNE_SEED if tune else STYLES_SEED, progress)
    if writer_set == "synthetic":
        return synthetic_writers(count, per_class, TUNE_FIRST_SEED if tune else WRITER_SEED, progress)
    raise ValueError(f"writer set must be one of {', '.join(WRITER_SETS)}, got {writer_set!r}")


@dataclass
class WriterResult:
    """One writer: accuracies in %, before and after teaching it ``shots`` digits per class."""

    writer: int
    seed: int
    style: str
    before: float
    after: float
    mnist_before: float
    mnist_after: float
    teach_ms: float


def _accuracy(classifier, pixels: np.ndarray, labels: np.ndarray) -> float:
    return float((classifier.predict(pixels).argmax(axis=1) == labels).mean() * 100)


def measure(
    classifier,
    dataset: Writers,
    mnist_pixels: np.ndarray,
    mnist_labels: np.ndarray,
    *,
    shots: int = 3,
    settings: dict | None = None,
    progress: bool = True,
) -> list[WriterResult]:
    """Teach ``classifier`` each writer in turn (forgetting in between) and score it.

    Args:
        classifier: an ``mnist_infer.Classifier`` (left untaught on return).
        dataset: the writers (``load_writers``).
        mnist_pixels: (M, 784) float32 0..255 MNIST test digits; mnist_labels: (M,) int.
        shots: digits per class taught, 1 .. per_class - 1.
        settings: keyword arguments of ``Classifier.teach`` (``pull``, ``width``, ``steps``,
            ``augment``); None: the crate's defaults.

    Returns:
        one ``WriterResult`` per writer.
    """
    settings = settings or {}
    pixels = dataset.images.reshape(len(dataset.images), -1).astype(np.float32)
    classifier.forget()
    mnist_before = _accuracy(classifier, mnist_pixels, mnist_labels)
    results = []
    for writer, seed in enumerate(tqdm(dataset.seeds, desc="teaching writers", disable=not progress)):
        teach, test = teach_split(dataset, writer, shots)
        before = _accuracy(classifier, pixels[test], dataset.labels[test])
        started = time.perf_counter()
        classifier.teach(pixels[teach], dataset.labels[teach], **settings)
        teach_ms = (time.perf_counter() - started) * 1e3
        results.append(
            WriterResult(
                writer=writer,
                seed=seed,
                style=dataset.describe[writer],
                before=before,
                after=_accuracy(classifier, pixels[test], dataset.labels[test]),
                mnist_before=mnist_before,
                mnist_after=_accuracy(classifier, mnist_pixels, mnist_labels),
                teach_ms=teach_ms,
            )
        )
        classifier.forget()
    return results


def summarize(results: list[WriterResult]) -> dict:
    """Means over writers, the worst writer before and after, the largest MNIST loss (points),
    over all writers; and ``weak``: the same over the writers read below ``WEAK_BELOW`` %
    untaught (None when there is none)."""

    def over(chosen: list[WriterResult]) -> dict:
        before = np.array([r.before for r in chosen])
        after = np.array([r.after for r in chosen])
        loss = np.array([r.mnist_before - r.mnist_after for r in chosen])
        return {
            "writers": len(chosen),
            "before": float(before.mean()),
            "after": float(after.mean()),
            "worst_before": float(before.min()),
            "worst_after": float(after.min()),
            "writers_improved": int((after > before).sum()),
            "writers_worse": int((after < before).sum()),
            "writers_below_99_5_after": int((after < 99.5).sum()),
            "mnist_loss_mean": float(loss.mean()),
            "mnist_loss_share": float(np.quantile(loss, MNIST_LOSS_SHARE)),
            "mnist_loss_max": float(loss.max()),
        }

    weak = [r for r in results if r.before < WEAK_BELOW]
    return {
        **over(results),
        "mnist_before": results[0].mnist_before,
        "teach_ms_median": float(np.median([r.teach_ms for r in results])),
        "weak": over(weak) if weak else None,
    }


def plot(results: list[WriterResult], path: Path, title: str, what: str) -> None:
    """Accuracy before and after teaching, as paired bars, for the writers that were not
    read perfectly before or after (sorted by accuracy before); the rest are counted in the
    caption. ``what``: the writers' kind, for the axis label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted((r for r in results if min(r.before, r.after) < 100), key=lambda r: r.before)
    perfect = len(results) - len(shown)
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * len(shown) + 3.5), 3.6))  # room for the legend
    ax.bar(x - 0.2, [r.before for r in shown], 0.4, label="untaught", color="#9aa5b8")
    ax.bar(x + 0.2, [r.after for r in shown], 0.4, label="taught", color="#1f9d55")
    ax.axhline(WEAK_BELOW, color="#c0392b", lw=0.8, ls=":", label=f"weak: below {WEAK_BELOW:g} % untaught")
    low = min([r.before for r in shown] + [r.after for r in shown], default=95.0)
    ax.set_ylim(max(0.0, math.floor(low) - 3), 100.5)
    ax.set_xticks(x, [str(r.writer) for r in shown], fontsize=7)
    ax.set_xlabel(f"{what} writer (the other {perfect} were read 100 % before and after)")
    ax.set_ylabel("accuracy on the writer's\nother digits (%)")
    fig.suptitle(title, fontsize=10)  # centred on the figure, legend included
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def acceptable(summary: dict) -> bool:
    """Whether teaching costs MNIST little enough: at most ``MAX_MNIST_LOSS`` points for
    ``MNIST_LOSS_SHARE`` of the writers, and at most ``MAX_MNIST_LOSS_ANY`` for every writer.

    A hand whose taught digits are the shape of another class in MNIST (a flagged 1 without a
    base is how MNIST writes many 7s) cannot be read without reading some MNIST digits as that
    hand: on the 60 tuning style writers, one such writer costs 0.4-0.9 points under almost every
    setting that reads it, while the others cost 0.1 or less; the strict bound on every writer
    would choose by that one writer alone (docs/evaluation.md, "Teach it your hand")."""
    return summary["mnist_loss_share"] <= MAX_MNIST_LOSS and summary["mnist_loss_max"] <= MAX_MNIST_LOSS_ANY


def tune(classifier, dataset: Writers, mnist_pixels: np.ndarray, mnist_labels: np.ndarray, shots: int) -> list[dict]:
    """Every (pull, width) of the grid, with and without virtual examples, on the tuning
    writers: accuracy after teaching (all and weak writers) and the MNIST loss; best first (the
    weak writers' mean, then all writers') among the ``acceptable`` ones."""
    rows = []
    grid = [{"pull": p, "width": w, "augment": a} for a in (True, False) for p in PULLS for w in WIDTHS]
    for settings in grid:
        s = summarize(
            measure(classifier, dataset, mnist_pixels, mnist_labels, shots=shots, settings=settings, progress=False)
        )
        weak = s["weak"] or s
        rows.append({**settings, **s})
        print(
            f"pull {settings['pull']:<7g} width {settings['width']:<5g} virtual {'yes' if settings['augment'] else 'no ':3}  "
            f"all {s['before']:6.2f} -> {s['after']:6.2f} %  weak ({weak['writers']}) {weak['before']:6.2f} -> "
            f"{weak['after']:6.2f} %, worst {s['worst_before']:5.1f} -> {s['worst_after']:5.1f} %  "
            f"MNIST loss mean {s['mnist_loss_mean']:+.2f}, {MNIST_LOSS_SHARE:.0%} {s['mnist_loss_share']:+.2f}, "
            f"max {s['mnist_loss_max']:+.2f}  ({s['teach_ms_median']:.1f} ms)",
            flush=True,
        )
    return sorted(rows, key=lambda r: (not acceptable(r), -(r["weak"] or r)["after"], -r["after"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="the model (default %(default)s)")
    parser.add_argument(
        "--writer-set", choices=WRITER_SETS, default="styles", help="whose hands (default %(default)s; see above)"
    )
    parser.add_argument(
        "--writers",
        type=int,
        default=None,
        help=f"writers (default {DEFAULT_WRITERS['styles']} styles, {DEFAULT_WRITERS['synthetic']} synthetic)",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        help=f"digits per class and writer (default "
        f"{DEFAULT_PER_CLASS['styles']} styles, {DEFAULT_PER_CLASS['synthetic']} synthetic)",
    )
    parser.add_argument("--shots", type=int, default=3, help="digits per class taught (default %(default)s)")
    parser.add_argument("--tune", action="store_true", help="try the grid of settings on tuning writers")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_REPORT_DIR, help="report folder (default %(default)s)")
    args = parser.parse_args(argv)
    count = args.writers or DEFAULT_WRITERS[args.writer_set]
    per_class = args.per_class or DEFAULT_PER_CLASS[args.writer_set]

    import mnist_infer

    try:
        classifier = mnist_infer.Classifier(args.weights)
        split = data.load_split(train=False)
        dataset = load_writers(args.writer_set, count, per_class, args.tune)
    except (OSError, ValueError, TypeError, data.DataError) as e:
        parser.exit(2, f"error: {e}\n")
    mnist_pixels = split.images.numpy().reshape(-1, 784).astype(np.float32)
    mnist_labels = split.labels.numpy()
    if args.tune:
        n = TUNE_MNIST
        best = tune(classifier, dataset, mnist_pixels[:n], mnist_labels[:n], args.shots)[0]
        print(
            f"best with MNIST lost within {MAX_MNIST_LOSS} points for {MNIST_LOSS_SHARE:.0%} of the writers and "
            f"{MAX_MNIST_LOSS_ANY:g} for all: pull {best['pull']:g}, width {best['width']:g}, "
            f"virtual examples {'on' if best['augment'] else 'off'} (now: pull {mnist_infer.TEACH_PULL:g}, "
            f"width {mnist_infer.TEACH_WIDTH:g}, steps {mnist_infer.TEACH_STEPS})"
        )
        return
    try:
        results = measure(classifier, dataset, mnist_pixels, mnist_labels, shots=args.shots)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    summary = summarize(results)
    print(f"{'writer':>6} {'untaught':>9} {'taught':>8} {'MNIST':>7}   style")
    for r in results:
        print(f"{r.writer:>6} {r.before:8.1f}% {r.after:7.1f}% {r.mnist_after - r.mnist_before:+6.2f}   {r.style}")
    for name, part in (("all", summary), (f"weak (below {WEAK_BELOW:g} % untaught)", summary["weak"])):
        if part is None:
            print(f"{name}: none")
            continue
        print(
            f"{name}: {part['writers']} writers, {part['before']:.2f} % untaught -> {part['after']:.2f} % taught "
            f"({args.shots} per class; worst {part['worst_before']:.1f} -> {part['worst_after']:.1f} %; "
            f"{part['writers_improved']} better, {part['writers_worse']} worse, {part['writers_below_99_5_after']} "
            f"below 99.5 % taught); MNIST loss mean {part['mnist_loss_mean']:.2f}, largest {part['mnist_loss_max']:.2f} points"
        )
    print(f"MNIST {summary['mnist_before']:.2f} % untaught; one teach {summary['teach_ms_median']:.1f} ms")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / (args.weights.stem + ("" if args.writer_set == "styles" else f"-{args.writer_set}"))
    report = {
        "weights": str(args.weights),
        "writer_set": args.writer_set,
        "shots": args.shots,
        "per_class": per_class,
        "pull": mnist_infer.TEACH_PULL,
        "width": mnist_infer.TEACH_WIDTH,
        "steps": mnist_infer.TEACH_STEPS,
        "augment_budget": mnist_infer.TEACH_AUGMENT_BUDGET,
        "summary": summary,
        "writers": [asdict(r) for r in results],
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    weak = summary["weak"]
    plot(
        results,
        stem.with_suffix(".png"),
        f"{args.weights.name}, {args.writer_set} writers: {args.shots} per class taught, "
        + (f"weak {weak['before']:.2f} % -> {weak['after']:.2f} %, " if weak else "")
        + f"all {summary['before']:.2f} % -> {summary['after']:.2f} %",
        {"styles": "style"}.get(args.writer_set, args.writer_set),
    )
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")


if __name__ == "__main__":
    main()
