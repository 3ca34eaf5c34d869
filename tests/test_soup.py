"""trainer/soup.py: a uniform model soup of fine-tunes, on the committed models."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from trainer.export import WeightsError, load_model, metrics_path, read_metadata, save_safetensors
from trainer.soup import average, main

MLP = ROOT / "models" / "mlp.safetensors"
LENET5 = ROOT / "models" / "lenet5.safetensors"


def perturbed_copy(source: Path, path: Path, seed: int) -> Path:
    """``source`` with every floating-point tensor moved by a little noise: another "fine-tune"."""
    model = load_model(source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 1e-3)
    metadata = {k: v for k, v in read_metadata(source).items() if k not in ("architecture", "layers")}
    return save_safetensors(model, path, metadata)


def test_the_soup_is_the_mean_of_every_tensor(tmp_path):
    """Parameters and BatchNorm running statistics alike (the cnn has both), against a plain
    element-wise mean; the same model twice is that model."""
    cnn = ROOT / "models" / "model.safetensors"
    paths = [perturbed_copy(cnn, tmp_path / f"ft{seed}.safetensors", seed) for seed in range(3)]
    models = [load_model(p) for p in paths]
    states = [{name: tensor.clone() for name, tensor in model.state_dict().items()} for model in models]
    soup = average(models).state_dict()
    for model, state in zip(models, states):  # the inputs are left as they were
        assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())
    assert any("running_var" in name for name in soup)
    for name, tensor in soup.items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, sum(state[name] for state in states) / 3, atol=1e-6), name
        else:  # BatchNorm's num_batches_tracked, not in the exported file
            assert torch.equal(tensor, states[0][name]), name
    same = average([load_model(cnn), load_model(cnn)]).state_dict()
    original = load_model(cnn).state_dict()
    assert all(torch.equal(same[name], original[name]) for name in original)


def test_only_fine_tunes_of_one_model_are_averaged(tmp_path):
    with pytest.raises(WeightsError, match="not of one architecture"):
        average([load_model(MLP), load_model(LENET5)])
    with pytest.raises(ValueError, match="at least two models"):
        average([load_model(MLP)])


def test_the_command_writes_the_soup_its_metrics_and_thresholds(tmp_path, capsys):
    """``python -m trainer.soup``: the weights (with the soup's test accuracy and its inputs in
    the metadata), the metrics file beside them (each input's accuracy and the soup's, on the
    test set and the held-out validation split, and their validation NLL) and the two
    thresholds, chosen on that split."""
    inputs = [perturbed_copy(MLP, tmp_path / f"mlp-ft{seed}.safetensors", seed) for seed in range(2)]
    out = tmp_path / "soup" / "mlp.safetensors"
    out.parent.mkdir()
    main([str(out), *map(str, inputs)])
    metadata = read_metadata(out)
    metrics = json.loads(metrics_path(out).read_text())
    assert metrics_path(out).name == "mlp.metrics.json"
    assert json.loads(metadata["soup_of"]) == [p.name for p in inputs]
    assert metadata["test_accuracy"] == f"{metrics['test_accuracy']:.4f}" and metrics["test_accuracy"] > 0.98
    assert [entry["weights"] for entry in metrics["soup"]["inputs"]] == [p.name for p in inputs]
    assert all(0.98 < entry["validation_accuracy"] <= 1 for entry in metrics["soup"]["inputs"])
    # an MLP right on ~99 % of the split, sure of most: a few hundredths of a nat per image
    assert all(0.005 < entry["validation_nll"] < 0.1 for entry in [metrics, *metrics["soup"]["inputs"]])
    assert float(metadata["not_a_digit_max_probability"]) == pytest.approx(metrics["not_a_digit_max_probability"])
    assert "not_a_digit_rule" in metadata and "unsure_rule" in metadata
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_bad_input_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    shutil.copyfile(MLP, tmp_path / "mlp.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out.safetensors"), str(tmp_path / "mlp.safetensors"), str(broken)])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out.safetensors").exists()


def test_scores_on_the_redrawn_validation_split(tmp_path):
    """``python -m trainer.soup --redrawn``: each model's accuracy on validation images redrawn
    with the test sets' pens, the same figure ``trainer.train.evaluate`` gives on that split."""
    from trainer import data
    from trainer.soup import redrawn_validation, scores
    from trainer.synthetic.redraw import PEN_WIDTHS
    from trainer.train import evaluate
    from trainer.uncertainty import VALIDATION

    train = data.load_split(train=True)
    validation = data.Split(train.images[VALIDATION][:100], train.labels[VALIDATION][:100])
    redrawn = redrawn_validation(validation, tmp_path)
    assert tuple(redrawn) == PEN_WIDTHS and len(list(tmp_path.glob("*.npy"))) == len(PEN_WIDTHS)
    model = load_model(ROOT / "models" / "model.safetensors")
    result = scores(model, validation, validation, redrawn)
    assert set(result["validation_redrawn"]) == set(PEN_WIDTHS)
    for width, split in redrawn.items():
        assert not torch.equal(split.images.float(), validation.images.float())
        assert result["validation_redrawn"][width] == evaluate(model, split)[1] >= 0.95
