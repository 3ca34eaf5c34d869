"""A short real training run, and an interrupted one that must leave no trace."""

import json

import pytest
import torch

from trainer import train as train_module
from trainer.augment import Augment, random_warp
from trainer.export import load_model
from trainer.train import Config, train


@pytest.mark.slow
def test_short_run_learns_and_writes_weights_and_metrics(tmp_path):
    # The default recipe, with 500 of the synthetic non-digits and style digits (not 3,000: in a
    # fresh clone this run draws them, and 3,000 non-digits took a minute of CI's two cores).
    config = Config(epochs=1, limit=3000, test_limit=2000, batch_size=64, outliers=500, styles=500)
    metrics = train(config, out_dir=tmp_path)
    assert (tmp_path / "model.safetensors").exists() and metrics["test_images"] == 2000
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test_accuracy"] == metrics["test_accuracy"]
    assert metrics["test_accuracy"] > 0.80  # one epoch on 3,000 images, far above chance (10%)
    assert len(written["history"]) == 1 and written["parameters"]["total"] == 260_810
    load_model(tmp_path / "model.safetensors")


def test_interrupted_run_leaves_the_output_folder_unchanged(tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"previous model")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(Config(epochs=1, limit=256), out_dir=tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"previous model"
    assert not (tmp_path / "metrics.json").exists()


def test_random_warp_keeps_shape_range_and_ink():
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0
    out = random_warp(images, Augment(), generator)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    ink_ratio = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert torch.all((ink_ratio > 0.6) & (ink_ratio < 1.4))  # moved and scaled, not lost
    assert not torch.equal(out[0], out[1])  # a transform per image, not per batch


def run_training(out_dir, *extra):
    """`python -m trainer.train` on a small deterministic run (1 thread, 1,500 images, 2 epochs)."""
    import subprocess
    import sys

    args = [
        sys.executable,
        "-m",
        "trainer.train",
        "--epochs",
        "2",
        "--limit",
        "1500",
        "--test-limit",
        "500",
        "--batch-size",
        "64",
        "--threads",
        "1",
        "--out-dir",
        str(out_dir),
        *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def descendants(pid):
    """The process ids of ``pid``'s children, grandchildren, ... (Linux: read from /proc)."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces, not ")"
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_after_first_checkpoint(process, checkpoint):
    """SIGKILL ``process`` and every process under it (torchrun starts its workers in sessions
    of their own) once ``checkpoint`` exists: the first epoch ended."""
    import os
    import signal
    import time

    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert process.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGSTOP)  # stopped first, so that none finishes meanwhile
        except ProcessLookupError:
            pass
    assert checkpoint.exists(), "training ended before it could be killed"
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def assert_same_run(a, b, metrics_name="metrics.json", weights_name="model.safetensors"):
    """Two output folders hold the same per-epoch history and bit-identical weights."""
    from safetensors.torch import load_file

    first, second = (json.loads((d / metrics_name).read_text()) for d in (a, b))
    strip = lambda history: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in history]  # noqa: E731
    assert strip(first["history"]) == strip(second["history"]) and len(first["history"]) == 2
    x, y = load_file(a / weights_name), load_file(b / weights_name)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    return first


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_model(tmp_path):
    """Kill -9 during epoch 2, --resume: same weights and metrics as a run never interrupted
    (same seed, same machine, same threads: the run is deterministic)."""
    killed = run_training(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    kill_after_first_checkpoint(killed, checkpoint)
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    assert run_training(tmp_path / "killed", "--resume").wait() == 0
    assert run_training(tmp_path / "whole").wait() == 0
    assert_same_run(tmp_path / "killed", tmp_path / "whole")
    assert not checkpoint.exists()  # removed once the run finished


@pytest.mark.slow
def test_two_processes_learn_agree_on_the_weights_and_resume(tmp_path):
    """--nproc 2: torchrun, DistributedDataParallel over gloo on the CPU. The run learns, both
    ranks end with the same parameters, and a run killed after its first epoch resumes to
    exactly the uninterrupted run's model (each rank's random state is in the checkpoint)."""
    options = ("--nproc", "2", "--arch", "mlp", "--outliers", "0", "--holdout", "0")
    killed = run_training(tmp_path / "killed", *options)
    checkpoint = tmp_path / "killed" / "mlp.checkpoint.pt"
    kill_after_first_checkpoint(killed, checkpoint)
    assert len(torch.load(checkpoint, weights_only=False)["ranks"]) == 2
    assert run_training(tmp_path / "killed", *options, "--resume").wait() == 0
    assert run_training(tmp_path / "whole", *options).wait() == 0
    metrics = assert_same_run(tmp_path / "killed", tmp_path / "whole", "mlp.metrics.json", "mlp.safetensors")
    assert metrics["test_accuracy"] > 0.7  # 2 epochs on 1,500 images: far above chance (10 %)
    distributed = metrics["distributed"]
    assert distributed["processes"] == 2 and distributed["backend"] == "gloo"
    assert len(distributed["parameters_sha256"]) == 2 and len(set(distributed["parameters_sha256"])) == 1
    assert metrics["config"]["nproc"] == 2 and not checkpoint.exists()


def test_a_run_resumes_only_with_its_own_number_of_processes(tmp_path):
    torch.save({"config": Config(epochs=1, limit=64).__dict__}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"nproc=1 \(now 2\)"):
        train_module.load_checkpoint(tmp_path / "checkpoint.pt", Config(epochs=1, limit=64, nproc=2))
    with pytest.raises(ValueError, match="this process is one of 1"):  # not started by torchrun
        train(Config(epochs=1, limit=64, nproc=2), out_dir=tmp_path)
    with pytest.raises(ValueError, match="split over the 4 processes"):
        train(Config(epochs=1, limit=64, nproc=4, batch_size=2), out_dir=tmp_path)


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(Config(epochs=1, limit=64), out_dir=tmp_path, resume=True)
    torch.save({"config": {**Config(epochs=3).__dict__}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="epochs=3"):
        train(Config(epochs=1, limit=64), out_dir=tmp_path, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        train(Config(epochs=1, limit=64), out_dir=tmp_path, resume=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs"),
        ("augment", "sharpen", "unknown augment"),
        ("label_smoothing", 1.0, "label_smoothing"),
        ("ema_decay", 1.5, "ema_decay"),
        ("lr", 0.0, "lr"),
        ("clean_epochs", -1, "clean_epochs"),
        ("test_limit", -5, "test_limit must be >= 0, got 0, 0, -5"),
        ("device", "tpu", "unknown device"),
    ],
)
def test_unknown_or_out_of_range_settings_are_refused(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        train(Config(**{field: value}), out_dir=tmp_path)


def test_draw_augmentation_changes_stroke_width_and_keeps_the_range():
    from trainer.augment import AUGMENT_PRESETS, augment, random_stroke_width

    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 6:22, 12:15] = 1.0  # a vertical stroke, 3 px wide
    aug = AUGMENT_PRESETS["draw"]
    widths = random_stroke_width(images, aug, generator).sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert (widths > 1.15).any() and (widths < 0.85).any()
    generator = torch.Generator().manual_seed(0)
    out = random_stroke_width(images, aug, generator)
    untouched = (out == images).all(dim=(1, 2, 3))
    assert 0 < untouched.sum() < len(images)  # the others are left exactly as they were, not blurred
    out = augment(images, aug, generator)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no CUDA device"):
        train(Config(device="cuda", epochs=1, limit=64), out_dir=tmp_path)


@pytest.mark.slow
def test_the_last_clean_epochs_see_the_images_unaugmented(tmp_path, monkeypatch):
    from trainer.augment import AUGMENT_PRESETS

    used = []
    real_augment = train_module.augment

    def recording_augment(images, aug, generator):
        used.append(aug)
        return real_augment(images, aug, generator)

    monkeypatch.setattr(train_module, "augment", recording_augment)
    # No outlier exposure here: its non-digits are augmented by a second call per step.
    train(
        Config(epochs=3, clean_epochs=1, limit=64, test_limit=100, batch_size=64, outliers=0, styles=0),
        out_dir=tmp_path,
    )
    assert used == [AUGMENT_PRESETS["draw"]] * 2 + [AUGMENT_PRESETS["none"]]
    used.clear()  # more clean epochs than a run has: all but the first epoch are clean
    train(
        Config(epochs=2, clean_epochs=5, limit=64, test_limit=100, batch_size=64, outliers=0, styles=0),
        out_dir=tmp_path,
    )
    assert used == [AUGMENT_PRESETS["draw"], AUGMENT_PRESETS["none"]]


@pytest.mark.slow
def test_the_benchmark_reports_every_seed_and_their_mean_and_std(tmp_path):
    import statistics

    from bench.train import report, run

    summary = run((0, 1), out_dir=tmp_path, epochs=1, limit=256, test_limit=500)
    accuracies = [r["test_accuracy"] for r in summary["runs"]]
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert summary["test_accuracy"]["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert summary["test_accuracy"]["std"] == pytest.approx(statistics.stdev(accuracies))
    assert all((tmp_path / f"seed{s}" / "model.safetensors").exists() for s in (0, 1))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "± " in report(summary) and summary["best"]["test_accuracy"] == max(accuracies)
    with pytest.raises(ValueError, match="at least one seed"):
        run((), out_dir=tmp_path)


def test_command_line_strings_become_typed_settings_or_a_clear_error():
    config = Config.from_options(epochs="3", ema_decay="0.5", augment="affine", device=None)
    assert (config.epochs, config.ema_decay, config.augment, config.device) == (3, 0.5, "affine", "cpu")
    with pytest.raises(ValueError, match="--epochs takes an integer, got 'abc'"):
        Config.from_options(epochs="abc")
    with pytest.raises(ValueError, match="--label-smoothing takes a number"):
        Config.from_options(label_smoothing="lots")
