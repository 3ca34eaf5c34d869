"""The training benchmark: ``invoke train``'s defaults with several seeds, honestly reported.

Trains one model per seed, one after the other, each with every default of ``Config`` but the
seed, into ``<out_dir>/seed<N>/``, then prints and writes (``<out_dir>/summary.json``) the test
accuracy and wall time per seed and their mean ± standard deviation (sample std, n - 1).
A benchmark, not a test: it asserts nothing, it measures. ``invoke bench-train`` runs it.

The wall time is ``train()``'s own clock (data already on disk, test evaluation after every
epoch included); the CPU time is the process's user + system time over the same run, which
says how much of the wall time went to training when something else shares the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mnist_common.paths import RUNS_DIR
from trainer import data
from trainer.export import write_metrics
from trainer.train import Config, train

DEFAULT_OUT_DIR = RUNS_DIR / "bench-train"
DEFAULT_SEEDS = (0, 1, 2)


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the deviation is 0 for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(
    seeds=DEFAULT_SEEDS, out_dir: Path = DEFAULT_OUT_DIR, data_dir: Path = data.DEFAULT_DATA_DIR, **overrides
) -> dict:
    """Train once per seed with ``Config``'s defaults (plus ``overrides``); return the summary.

    Raises:
        ValueError: no seeds, or a bad setting in ``overrides`` (from ``Config.validate``).
    """
    if not seeds:
        raise ValueError("give at least one seed")
    out_dir = Path(out_dir)
    rows = []
    for seed in seeds:
        config = Config(seed=seed, **overrides)
        cpu_before = time.process_time()
        metrics = train(config, data_dir=data_dir, out_dir=out_dir / f"seed{seed}")
        rows.append(
            {
                "seed": seed,
                "test_accuracy": metrics["test_accuracy"],
                "wall_s": metrics["train_time_s"],
                "cpu_s": round(time.process_time() - cpu_before, 1),
                "weights": str(out_dir / f"seed{seed}" / "model.safetensors"),
            }
        )
    accuracy = mean_std([r["test_accuracy"] for r in rows])
    wall = mean_std([r["wall_s"] for r in rows])
    summary = {
        "config": {k: v for k, v in asdict(Config(**overrides)).items() if k != "seed"},
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "processor": platform.processor(),
            "torch": torch.__version__,
        },
        "runs": rows,
        "test_accuracy": {"mean": accuracy[0], "std": accuracy[1]},
        "wall_s": {"mean": wall[0], "std": wall[1]},
        "best": max(rows, key=lambda r: r["test_accuracy"]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir / "summary.json", summary)
    print(report(summary))
    return summary


def report(summary: dict) -> str:
    """The summary as a markdown table, then the mean ± std lines."""
    lines = ["| seed | test accuracy | wall time | CPU time |", "|---:|---:|---:|---:|"]
    lines += [
        f"| {r['seed']} | {r['test_accuracy']:.2%} | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s |"
        for r in summary["runs"]
    ]
    acc, wall = summary["test_accuracy"], summary["wall_s"]
    lines += [
        "",
        f"test accuracy: {acc['mean']:.2%} ± {acc['std']:.2%} (mean ± std over {len(summary['runs'])} seeds)",
        f"wall time:     {wall['mean']:.0f} s ± {wall['std']:.0f} s per run "
        f"({summary['machine']['cpus']} CPUs, {summary['machine']['threads']} torch threads)",
        f"best:          seed {summary['best']['seed']}, {summary['best']['test_accuracy']:.2%}: "
        f"{summary['best']['weights']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated (default 0,1,2)")
    parser.add_argument("--epochs", type=int, help="override the default epochs (quick checks)")
    parser.add_argument("--limit", type=int, help="first N training images only (quick checks)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--data-dir", type=Path, default=data.DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("limit", args.limit)) if v is not None}
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        run(seeds, out_dir=args.out_dir, data_dir=args.data_dir, **overrides)
    except (ValueError, data.DataError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
