"""The PyTorch models: exact architectures, parameter counts, layer plans, input checks."""

import pytest
import torch

from mnist_common.constants import MNIST_MEAN, MNIST_STD
from mnist_common.plan import ARCHITECTURES, CNN, architecture, layers_from_json, layers_to_json
from trainer.model import Net, build, count_parameters, normalize


def test_parameter_count_matches_burns_mnist_demo():
    trainable, running = count_parameters(Net())
    assert trainable == 260_554
    assert running == 256  # running_mean + running_var of two BatchNorm2d(64)
    assert trainable + running == 260_810


def test_layers_in_order():
    net = Net()
    names = [name for name, _ in net.state_dict().items() if not name.endswith("num_batches_tracked")]
    assert names == [
        "conv1.conv.weight",
        "conv1.conv.bias",
        "conv1.norm.weight",
        "conv1.norm.bias",
        "conv1.norm.running_mean",
        "conv1.norm.running_var",
        "conv2.conv.weight",
        "conv2.conv.bias",
        "conv2.norm.weight",
        "conv2.norm.bias",
        "conv2.norm.running_mean",
        "conv2.norm.running_var",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]
    assert net.fc1.in_features == 1600 and net.conv1.conv.kernel_size == (3, 3)
    assert net.conv1.conv.padding == (0, 0)
    assert [spec.p for spec in net.layers if spec.kind == "dropout"] == [0.25, 0.25]


def test_forward_shapes_and_eval_is_deterministic():
    net = Net().eval()
    x = torch.randn(5, 1, 28, 28)
    assert net(x).shape == (5, 10)
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (2, 3, 28, 28), (2, 1, 32, 32)])
def test_wrong_input_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        Net()(torch.zeros(shape))


def test_normalize_uses_the_mnist_constants():
    pixels = torch.tensor([0, 255], dtype=torch.uint8)
    expected = torch.tensor([(0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD])
    assert torch.allclose(normalize(pixels), expected)
    assert (MNIST_MEAN, MNIST_STD) == (0.1307, 0.3081)


#: (trainable, BatchNorm running statistics) per architecture: the zoo's sizes, in docs/training.md.
EXPECTED_PARAMETERS = {
    "cnn": (260_554, 256),
    "mlp": (784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10, 0),
    "lenet5": (61_706, 0),  # LeCun et al.'s C1-C3-C5-F6-output sizes with a full C3
    "resnet": (73_386, 608),
    "capsnet": (2_454_096, 0),  # the paper's size is 8,215,568 (tests/test_capsnet.py)
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_builds_runs_and_round_trips_its_plan(name):
    net = build(name).eval()
    assert count_parameters(net) == EXPECTED_PARAMETERS[name]
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert layers_from_json(layers_to_json(net.layers)) == net.layers
    assert net.architecture == architecture(name).id
    # Every tensor lives under a layer name of the plan (what the Rust loaders look up).
    names = {spec.name for spec in net.layers if hasattr(spec, "name")}
    assert {key.split(".")[0] for key in net.state_dict()} == names


def test_given_masks_replace_dropout_in_any_mode():
    net = build("mlp").train()
    x = torch.randn(2, 1, 28, 28)
    ones = lambda i, shape: torch.ones(shape)  # noqa: E731
    # All-ones masks: only the 1 / (1 - p) scale, the same in train and eval mode.
    assert torch.allclose(net(x, masks=ones), net.eval()(x, masks=ones))
    shapes = []
    net(x, masks=lambda i, shape: shapes.append((i, tuple(shape))) or torch.ones(shape))
    assert shapes == [(0, (2, 512)), (1, (2, 256))]


def test_unknown_architectures_and_bad_plans_are_named():
    with pytest.raises(ValueError, match="choose one of cnn, mlp, lenet5, resnet, capsnet"):
        architecture("vgg")
    with pytest.raises(ValueError, match="attention"):
        layers_from_json('[{"kind": "attention"}]')
    with pytest.raises(ValueError, match="stride"):
        layers_from_json('[{"kind": "max_pool", "kernel_size": 2, "stride": 1}]')
    with pytest.raises(ValueError, match="JSON"):
        layers_from_json("[{")
    assert layers_from_json(layers_to_json(CNN.layers)) == CNN.layers
