"""The PyTorch model: exact architecture, parameter count, input checks."""

import pytest
import torch

from trainer.model import MNIST_MEAN, MNIST_STD, Net, count_parameters, normalize


def test_parameter_count_matches_burns_mnist_demo():
    trainable, running = count_parameters(Net())
    assert trainable == 260_554
    assert running == 256  # running_mean + running_var of two BatchNorm2d(64)
    assert trainable + running == 260_810


def test_layers_in_order():
    net = Net()
    names = [name for name, _ in net.state_dict().items() if not name.endswith("num_batches_tracked")]
    assert names == [
        "conv1.conv.weight", "conv1.conv.bias", "conv1.norm.weight", "conv1.norm.bias",
        "conv1.norm.running_mean", "conv1.norm.running_var",
        "conv2.conv.weight", "conv2.conv.bias", "conv2.norm.weight", "conv2.norm.bias",
        "conv2.norm.running_mean", "conv2.norm.running_var",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias",
    ]
    assert net.fc1.in_features == 1600 and net.conv1.conv.kernel_size == (3, 3)
    assert net.conv1.conv.padding == (0, 0) and net.dropout.p == 0.25


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
