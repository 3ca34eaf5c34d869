"""The capsule network (Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NeurIPS
2017; issue 24, its PyTorch half): squash, routing by agreement, the margin loss and the masked
decoder against the paper's formulas written out here, the shape of every stage, the plan's
JSON (strided convolutions too, and plans written before them), and a short real training."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_common.paths import MODELS_DIR
from mnist_common.plan import (
    ARCHITECTURES,
    CAPSNET,
    Architecture,
    CapsuleLength,
    Conv,
    Decoder,
    DigitCaps,
    Flatten,
    Linear,
    PrimaryCaps,
    layers_from_json,
    layers_to_json,
)
from mnist_common.weights import read_metadata
from trainer.export import load_model
from trainer.model import (
    MARGIN_LAMBDA,
    MARGIN_NEGATIVE,
    MARGIN_POSITIVE,
    DigitCapsules,
    Net,
    build,
    count_parameters,
    margin_loss,
    normalize,
    reconstruction_loss,
    route,
    squash,
)
from trainer.train import Config, default_out_dir, train
from trainer.uncertainty import mc_probabilities, summarize


def paper_squash(s: np.ndarray) -> np.ndarray:
    """Eq. 1 as written: |s|^2 / (1 + |s|^2) * s / |s| (float64, last axis)."""
    norm = np.linalg.norm(s, axis=-1, keepdims=True)
    return norm**2 / (1 + norm**2) * s / norm


# --- squash ----------------------------------------------------------------------------------


def test_squash_is_the_papers_formula_shorter_than_one_and_keeps_the_direction():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(200, 8)) * rng.choice([1e-3, 0.1, 1.0, 10.0, 1e3], size=(200, 1))
    v = squash(torch.from_numpy(s)).numpy()
    np.testing.assert_allclose(v, paper_squash(s), rtol=1e-12, atol=1e-300)
    lengths = np.linalg.norm(v, axis=1)
    assert np.all(lengths < 1)
    cosine = (v * s).sum(1) / (lengths * np.linalg.norm(s, axis=1))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-12)
    # Longer in, longer out.
    scaled = squash(torch.from_numpy(s[:1] * np.array([[1.0], [2.0], [4.0]])))
    assert torch.all(torch.diff(torch.linalg.vector_norm(scaled, dim=1)) > 0)


def test_squash_limits_short_vectors_vanish_long_ones_approach_length_one_zero_is_zero():
    unit = torch.tensor([0.6, 0.8], dtype=torch.float64)
    tiny = squash(1e-4 * unit)
    assert torch.linalg.vector_norm(tiny).item() == pytest.approx(1e-8, rel=1e-6)  # |v| ~ |s|^2
    huge = squash(1e4 * unit)
    assert 1 - torch.linalg.vector_norm(huge).item() == pytest.approx(1e-8, rel=1e-6)  # 1 - 1/|s|^2
    assert squash(torch.ones(3, dtype=torch.float64)).norm().item() == pytest.approx(3 / 4)  # |s|^2 = 3
    zero = torch.zeros(4, requires_grad=True)
    out = squash(zero)
    assert torch.equal(out, torch.zeros(4))
    out.sum().backward()
    assert torch.isfinite(zero.grad).all()


# --- routing ---------------------------------------------------------------------------------


def naive_routing(u_hat: np.ndarray, iterations: int) -> np.ndarray:
    """The paper's Procedure 1 written as loops, one image at a time (float64)."""
    n_images, n_in, n_out, _ = u_hat.shape
    v_all = []
    for n in range(n_images):
        b = [[0.0] * n_out for _ in range(n_in)]
        for r in range(iterations):
            c = [
                [math.exp(b[i][j]) / sum(math.exp(b[i][k]) for k in range(n_out)) for j in range(n_out)]
                for i in range(n_in)
            ]
            v = [paper_squash(sum(c[i][j] * u_hat[n, i, j] for i in range(n_in))) for j in range(n_out)]
            if r < iterations - 1:
                for i in range(n_in):
                    for j in range(n_out):
                        b[i][j] += float(np.dot(u_hat[n, i, j], v[j]))
        v_all.append(np.stack(v))
    return np.stack(v_all)


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_routing_matches_a_naive_loop(iterations):
    rng = np.random.default_rng(iterations)
    u_hat = rng.normal(size=(3, 12, 4, 5)) * 0.5
    got = route(torch.from_numpy(u_hat), iterations).numpy()
    np.testing.assert_allclose(got, naive_routing(u_hat, iterations), rtol=1e-10, atol=1e-12)


def test_digit_capsules_predict_with_one_matrix_per_pair_then_route():
    spec = DigitCaps("digits", in_capsules=7, in_dim=3, capsules=4, dim=5, routing=3)
    module = DigitCapsules(spec).double()
    rng = np.random.default_rng(1)
    u = rng.normal(size=(2, 7, 3))
    w = module.weight.detach().numpy()
    assert w.shape == (7, 4, 5, 3)  # (in_capsules, capsules, dim, in_dim): W_ij = weight[i, j]
    u_hat = np.zeros((2, 7, 4, 5))
    for n in range(2):
        for i in range(7):
            for j in range(4):
                u_hat[n, i, j] = w[i, j] @ u[n, i]
    got = module(torch.from_numpy(u)).detach().numpy()
    np.testing.assert_allclose(got, naive_routing(u_hat, 3), rtol=1e-10, atol=1e-12)


# --- losses ----------------------------------------------------------------------------------


def test_margin_loss_is_the_papers_formula_on_hand_made_lengths():
    assert (MARGIN_POSITIVE, MARGIN_NEGATIVE, MARGIN_LAMBDA) == (0.9, 0.1, 0.5)
    lengths = torch.full((4, 10), 0.1, dtype=torch.float64)
    lengths[0, 0], lengths[0, 1:] = 0.95, 0.05  # sure and right: no loss
    lengths[1, 3], lengths[1, 7] = 0.5, 0.3  # (0.9 - 0.5)^2 + 0.5 (0.3 - 0.1)^2
    lengths[2] = 0.2  # (0.9 - 0.2)^2 + 9 x 0.5 x 0.1^2
    lengths[3, 5] = 0.0  # the right capsule missing: 0.9^2
    target = torch.tensor([0, 3, 1, 5])
    expected = torch.tensor([0.0, 0.16 + 0.02, 0.49 + 0.045, 0.81], dtype=torch.float64)
    torch.testing.assert_close(margin_loss(lengths, target), expected)
    # No class present (a non-digit): every capsule above m- pays lambda (|v| - m-)^2.
    torch.testing.assert_close(
        margin_loss(lengths[:2], None), torch.tensor([0.5 * 0.85**2, 0.5 * 0.4**2 + 0.5 * 0.2**2], dtype=torch.float64)
    )


def test_reconstruction_loss_is_0_0005_times_the_pixel_sum_of_squares_against_pixels_over_255():
    reconstruction = torch.full((2, 784), 0.5, dtype=torch.float64)
    pixels = torch.zeros(2, 28, 28, dtype=torch.uint8)
    pixels[0] = 255
    torch.testing.assert_close(
        reconstruction_loss(reconstruction, pixels), torch.tensor([0.0005 * 784 * 0.25] * 2, dtype=torch.float64)
    )


# --- the network -----------------------------------------------------------------------------


def test_the_committed_configuration_and_every_stage_shape():
    net = build("capsnet").eval()
    assert count_parameters(net) == (2_454_096, 0)
    sizes = {name: sum(p.numel() for p in module.parameters()) for name, module in net.named_children()}
    assert sizes == {"conv1": 10_496, "primary": 663_616, "digits": 368_640, "decoder": 1_411_344}
    x = normalize(torch.randint(0, 256, (3, 1, 28, 28)))
    with torch.no_grad():
        features = net.conv1(x)
        assert features.shape == (3, 128, 20, 20)
        primary = net.primary(features)
        assert primary.shape == (3, 8 * 6 * 6, 8)
        assert (torch.linalg.vector_norm(primary, dim=-1) < 1).all()
        capsules = net.capsules(x)
        torch.testing.assert_close(capsules, net.digits(primary))
        assert capsules.shape == (3, 10, 16)
        lengths = net.capsule_lengths(x)
        assert lengths.shape == (3, 10) and (lengths < 1).all()
        logits = net(x)
        torch.testing.assert_close(logits, 10.0 * lengths)
        torch.testing.assert_close(logits, net.logits_of_capsules(capsules))
        reconstruction = net.reconstruct(x)
        assert reconstruction.shape == (3, 784) and (reconstruction > 0).all() and (reconstruction < 1).all()


def test_the_papers_configuration_has_its_8_2_million_parameters():
    paper = (
        Conv("conv1", 1, 256, kernel_size=9, norm=False, activation="relu", pool=0),
        PrimaryCaps("primary", 256, capsules=32, dim=8, kernel_size=9, stride=2),
        DigitCaps("digits", 32 * 6 * 6, in_dim=8, capsules=10, dim=16, routing=3),
        Decoder("decoder", 10, 16, hidden1=512, hidden2=1024, out_features=784),
        CapsuleLength(),
    )
    net = Net(paper, "paper")
    assert count_parameters(net) == (8_215_568, 0)  # "8.2M", and 6.8M without the decoder:
    assert count_parameters(net)[0] - sum(p.numel() for p in net.decoder.parameters()) == 6_804_224


def test_primary_capsules_are_type_major_and_grid_ordered():
    spec = PrimaryCaps("primary", in_channels=2, capsules=3, dim=4, kernel_size=3, stride=2)
    net = Net((spec,), "test")
    x = torch.randn(1, 2, 9, 9)
    conv = net.primary.conv(x)  # (1, 12, 4, 4)
    assert spec.grid(9, 9) == (4, 4) and conv.shape == (1, 12, 4, 4)
    out = net.primary(x)
    assert out.shape == (1, 3 * 4 * 4, 4)
    c, y, xx = 2, 1, 3  # capsule type 2 at (1, 3): index (2 * 4 + 1) * 4 + 3, channels 8..11
    torch.testing.assert_close(out[0, (c * 4 + y) * 4 + xx], squash(conv[0, c * 4 : c * 4 + 4, y, xx]))


def test_the_decoder_sees_only_the_masked_capsule():
    net = build("capsnet").eval()
    rng = torch.Generator().manual_seed(3)
    capsules = 0.3 * torch.randn(4, 10, 16, generator=rng)
    digit = torch.tensor([2, 5, 5, 9])
    with torch.no_grad():
        reconstruction = net.decode(capsules, digit)
        others = capsules + torch.randn(4, 10, 16, generator=rng)
        others[torch.arange(4), digit] = capsules[torch.arange(4), digit]
        torch.testing.assert_close(net.decode(others, digit), reconstruction, rtol=0, atol=0)
        moved = capsules.clone()
        moved[torch.arange(4), digit] += 1.0
        assert (net.decode(moved, digit) - reconstruction).abs().amax(dim=1).min() > 1e-3
        # No digit given: the longest capsule (the prediction); one digit for all.
        longest = torch.linalg.vector_norm(capsules, dim=-1).argmax(dim=1)
        torch.testing.assert_close(net.decode(capsules), net.decode(capsules, longest))
        torch.testing.assert_close(net.decode(capsules, 5), net.decode(capsules, torch.full((4,), 5)))


def test_without_dropout_every_mc_pass_is_the_eval_pass_and_the_mutual_information_0():
    net = build("capsnet").eval()
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    probabilities = mc_probabilities(net, images, samples=4)
    assert probabilities.shape == (3, 4, 10)
    with torch.no_grad():
        expected = torch.softmax(net(normalize(images.unsqueeze(1))), dim=1)
    torch.testing.assert_close(probabilities, expected.unsqueeze(1).expand(-1, 4, -1))
    assert summarize(probabilities)["mutual_information"].abs().max() < 1e-12


def test_plans_without_capsules_or_a_decoder_say_so():
    with pytest.raises(ValueError, match="no digit capsules"):
        build("cnn").capsules(torch.zeros(1, 1, 28, 28))
    no_decoder = Net(tuple(s for s in CAPSNET.layers if not isinstance(s, Decoder)), "test")
    assert no_decoder(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="no decoder"):
        no_decoder.reconstruct(torch.zeros(1, 1, 28, 28))


# --- the plan as data ------------------------------------------------------------------------


def test_capsule_plan_round_trips_through_json_with_every_field():
    text = layers_to_json(CAPSNET.layers)
    assert layers_from_json(text) == CAPSNET.layers
    kinds = [item["kind"] for item in json.loads(text)]
    assert kinds == ["conv", "primary_caps", "digit_caps", "decoder", "capsule_length"]
    assert json.loads(text)[2]["routing"] == 3 and json.loads(text)[4]["scale"] == 10.0


def test_stride_is_written_only_when_not_1_and_old_plans_without_it_still_load():
    # The committed models' plans (written before `stride`) load, and write back byte for byte:
    # the Rust reader, which refuses unknown fields, sees the JSON it always did.
    for path in sorted(MODELS_DIR.glob("*.safetensors")):
        text = read_metadata(path)["layers"]
        assert all("stride" not in item for item in json.loads(text) if item["kind"] == "conv")
        assert layers_to_json(layers_from_json(text)) == text
    old = '[{"kind":"conv","name":"c","in_channels":1,"out_channels":4,"kernel_size":3,"padding":1,"norm":false,"activation":"relu","pool":0}]'
    assert layers_from_json(old)[0].stride == 1
    strided = (Conv("c", 1, 4, kernel_size=3, padding=1, norm=False, activation="relu", pool=0, stride=2), Flatten())
    text = layers_to_json(strided)
    assert json.loads(text)[0]["stride"] == 2 and layers_from_json(text) == strided
    net = Net((*strided, Linear("fc", 4 * 14 * 14, 10, activation="none")), "test")
    assert net.c.conv(torch.zeros(1, 1, 28, 28)).shape == (1, 4, 14, 14)  # (28 + 2 - 3) // 2 + 1


def test_every_architecture_trains_into_models():
    assert {default_out_dir(name) for name in ARCHITECTURES} == {MODELS_DIR}


# --- training --------------------------------------------------------------------------------

#: A capsnet small enough to train a few hundred steps in seconds: 16 conv channels, 4 primary
#: capsule types (144 capsules), a narrow decoder.
SMALL = Architecture(
    "capsnet",
    CAPSNET.id,
    "a small capsnet for the tests",
    (
        Conv("conv1", 1, 16, kernel_size=9, norm=False, activation="relu", pool=0),
        PrimaryCaps("primary", 16, capsules=4, dim=8),
        DigitCaps("digits", 4 * 6 * 6),
        Decoder("decoder", hidden1=64, hidden2=128),
        CapsuleLength(),
    ),
)


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_loss_and_beat_chance(tmp_path, monkeypatch, mnist_test):
    """`train` with the margin and reconstruction losses and outlier exposure: 2 epochs of 150
    steps (32 digits + 16 non-digits each) on real MNIST."""
    monkeypatch.setitem(ARCHITECTURES, "capsnet", SMALL)
    config = Config(
        arch="capsnet",
        epochs=2,
        clean_epochs=1,
        batch_size=32,
        limit=4800,
        test_limit=1000,
        outliers=256,  # as many as the short runs of test_train.py (one cache file)
        outlier_batch=16,
        ema_decay=0.99,
    )
    metrics = train(config, out_dir=tmp_path)
    first, last = metrics["history"]
    assert last["train_loss"] < 0.7 * first["train_loss"], metrics["history"]
    assert metrics["test_accuracy"] > 0.8  # chance: 0.1
    assert metrics["loss"] == "margin + 0.0005 reconstruction"
    model = load_model(tmp_path / "capsnet.safetensors")
    assert model.layers == SMALL.layers
    metadata = read_metadata(tmp_path / "capsnet.safetensors")
    assert layers_from_json(metadata["layers"]) == SMALL.layers and "not_a_digit_max_probability" in metadata
    images = mnist_test.images[:200]
    with torch.no_grad():
        x = normalize(images.unsqueeze(1))
        lengths = model.capsule_lengths(x)
        reconstruction = model.reconstruct(x)
        wrong = model.reconstruct(x, (mnist_test.labels[:200] + 1) % 10)
    assert (lengths.argmax(1) == mnist_test.labels[:200]).float().mean() > 0.8
    # The decoder draws the digit of the capsule it is given: from the right one, closer to the input.
    target = images.reshape(200, -1).float() / 255
    assert (reconstruction - target).square().sum(1).mean() < 0.9 * (wrong - target).square().sum(1).mean()


def test_label_smoothing_is_refused_for_the_margin_loss():
    with pytest.raises(ValueError, match="margin loss"):
        Config(arch="capsnet", label_smoothing=0.1).validate()
    Config(arch="capsnet").validate()
    assert Path(default_out_dir("nonsense")) == MODELS_DIR
