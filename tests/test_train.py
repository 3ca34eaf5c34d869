"""A short real training run, and an interrupted one that must leave no trace."""

import json

import pytest
import torch

from trainer import train as train_module
from trainer.export import load_model
from trainer.train import Augment, Config, random_affine, train


def test_short_run_learns_and_writes_weights_and_metrics(tmp_path):
    metrics = train(Config(epochs=1, limit=3000, batch_size=64), out_dir=tmp_path)
    assert (tmp_path / "model.safetensors").exists()
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


def test_random_affine_keeps_shape_range_and_ink():
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0
    out = random_affine(images, Augment(), generator)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    ink_ratio = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert torch.all((ink_ratio > 0.6) & (ink_ratio < 1.4))  # moved and scaled, not lost
    assert not torch.equal(out[0], out[1])  # a transform per image, not per batch


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        train(Config(epochs=0), out_dir=tmp_path)
