"""MNIST files: md5 verification, clear errors, torchvision loading."""

import shutil

import pytest

from trainer import data


def test_real_mnist_loads_through_torchvision(mnist_test):
    assert mnist_test.images.shape == (10_000, 28, 28)
    assert mnist_test.images.dtype.is_floating_point is False
    assert int(mnist_test.images.max()) == 255
    assert sorted(set(mnist_test.labels.tolist())) == list(range(10))


def test_verify_reports_missing_files(tmp_path):
    assert sorted(data.verify(tmp_path)) == sorted(data.MNIST_FILES)


def test_corrupt_file_is_refused_with_its_md5(tmp_path):
    raw = data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES:
        shutil.copy(data.raw_dir(data.DEFAULT_DATA_DIR) / name, raw / name)
    assert data.verify(tmp_path) == []
    victim = raw / "t10k-labels-idx1-ubyte"
    content = bytearray(victim.read_bytes())
    content[100] ^= 0xFF
    victim.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte is corrupt: md5"):
        data.verify(tmp_path)
    with pytest.raises(data.DataError, match="corrupt"):
        data.load_split(train=False, data_dir=tmp_path)
