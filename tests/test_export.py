"""The hand-off file: metadata, round trip, refusal of other architectures and bad tensors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import WEIGHTS
from trainer.export import WeightsError, load_model, read_metadata, save_safetensors
from trainer.fixtures import FIXTURE_PATH
from trainer.model import ARCHITECTURE, MNIST_MEAN, MNIST_STD, Net, normalize


def test_round_trip_is_exact(tmp_path):
    net = Net().eval()
    path = save_safetensors(net, tmp_path / "m.safetensors")
    loaded = load_model(path)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(net(x), loaded(x))
    tensors = load_file(str(path))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert not any(name.endswith("num_batches_tracked") for name in tensors)


def test_metadata_carries_architecture_and_normalisation():
    meta = read_metadata(WEIGHTS)
    assert meta["architecture"] == ARCHITECTURE
    assert float(meta["mnist_mean"]) == MNIST_MEAN and float(meta["mnist_std"]) == MNIST_STD
    assert "torch_version" in meta and "test_accuracy" in meta


def test_committed_model_reaches_the_accuracy_floor(model, mnist_test):
    with torch.no_grad():
        predicted = model(normalize(mnist_test.images.unsqueeze(1))).argmax(1)
    accuracy = (predicted == mnist_test.labels).float().mean().item()
    metrics = json.loads((WEIGHTS.parent / "metrics.json").read_text())
    assert accuracy >= 0.993
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert metrics["parameters"]["total"] == 260_810


def test_rust_fixture_matches_the_committed_model(model):
    fixture = load_file(str(FIXTURE_PATH))
    with torch.no_grad():
        logits = model(normalize(fixture["images"].reshape(-1, 1, 28, 28)))
    assert fixture["images"].shape[0] >= 100
    assert torch.allclose(logits, fixture["logits"], atol=1e-5), "run `invoke fixtures`"


def test_a_file_without_a_usable_plan_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"architecture": "lenet5"})
    with pytest.raises(WeightsError, match="architecture 'lenet5' without a `layers` plan"):
        load_model(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"architecture": "x", "layers": '[{"kind": "rnn"}]'})
    with pytest.raises(WeightsError, match="rnn"):
        load_model(path)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet"])
def test_every_architecture_round_trips_through_its_file(tmp_path, name):
    from trainer.export import save_safetensors
    from trainer.model import build

    net = build(name).eval()
    path = save_safetensors(net, tmp_path / f"{name}.safetensors")
    loaded = load_model(path)
    assert loaded.layers == net.layers and loaded.architecture == net.architecture
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), net(x))


def test_metadata_updates_keep_the_tensors(tmp_path):
    from trainer.export import update_metadata

    path = tmp_path / "model.safetensors"
    path.write_bytes(WEIGHTS.read_bytes())
    update_metadata(path, {"unsure_mutual_information": "0.05"})
    assert read_metadata(path)["unsure_mutual_information"] == "0.05"
    before, after = load_file(str(WEIGHTS)), load_file(str(path))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    tensors = load_file(str(WEIGHTS))
    meta = read_metadata(WEIGHTS)
    del tensors["fc2.bias"]
    tensors["fc3.weight"] = torch.zeros(10, 64)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(WeightsError) as err:
        load_model(path)
    assert "missing tensor fc2.bias" in str(err.value)
    assert "fc3.weight has shape (10, 64), expected (10, 128)" in str(err.value)


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(WEIGHTS.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model(path)


def test_f16_copy_halves_the_file_and_loads_into_the_f32_model(tmp_path, model, mnist_test):
    from trainer.export import convert_weights

    half = convert_weights(WEIGHTS, tmp_path / "f16.safetensors", "f16")
    assert half.stat().st_size < 0.52 * WEIGHTS.stat().st_size
    assert read_metadata(half)["weights_dtype"] == "f16"
    assert read_metadata(half)["architecture"] == ARCHITECTURE
    assert {t.dtype for t in load_file(str(half)).values()} == {torch.float16}
    # Rounding each weight to 11 significant bits moves the logits, not the digits.
    images = normalize(mnist_test.images[:500].unsqueeze(1))
    with torch.no_grad():
        full, rounded = model(images), load_model(half)(images)
    assert (full.argmax(1) == rounded.argmax(1)).float().mean() >= 0.998
    assert float((full - rounded).abs().max()) < 0.1
    with pytest.raises(ValueError, match="f16"):
        convert_weights(WEIGHTS, tmp_path / "x.safetensors", "int4")


def test_int8_copy_quarters_the_weights_and_each_is_within_half_a_step(tmp_path, model, mnist_test):
    """--weights-dtype int8: every weight of 2+ dimensions as int8 times one float32 scale per
    output channel (mnist_common.weights.quantize_int8), the vectors kept in f32."""
    from safetensors.numpy import load_file as load_numpy
    from safetensors.numpy import save_file as save_numpy

    from trainer.export import convert_weights

    int8 = convert_weights(WEIGHTS, tmp_path / "int8.safetensors", "int8")
    assert int8.stat().st_size < 0.27 * WEIGHTS.stat().st_size
    assert read_metadata(int8)["weights_dtype"] == "int8"
    stored, original = load_numpy(str(int8)), load_numpy(str(WEIGHTS))
    assert set(stored) == set(original) | {f"{n}_scale" for n, t in original.items() if t.ndim >= 2}
    for name, weight in original.items():
        if weight.ndim < 2:
            assert stored[name].dtype == np.float32 and (stored[name] == weight).all(), name
            continue
        q, scale = stored[name], stored[f"{name}_scale"]
        assert q.dtype == np.int8 and scale.shape == (weight.shape[0],), name
        assert np.abs(q.reshape(len(q), -1)).max(1).min() == 127, name  # each channel's peak is ±127
        step = scale.reshape((-1,) + (1,) * (q.ndim - 1))
        # Half a step, and the float32 rounding of the scale and of the product.
        assert (np.abs(q * step - weight) <= step * (0.5 + 1e-5)).all(), name
    images = normalize(mnist_test.images[:500].unsqueeze(1))
    with torch.no_grad():
        full, quantized = model(images), load_model(int8)(images)
    assert (full.argmax(1) == quantized.argmax(1)).float().mean() >= 0.998
    # Without its scales an int8 weight is refused by name.
    del stored["fc1.weight_scale"]
    broken = tmp_path / "broken.safetensors"
    save_numpy(stored, str(broken), metadata=read_metadata(int8))
    with pytest.raises(WeightsError, match="fc1.weight_scale"):
        load_model(broken)
