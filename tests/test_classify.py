"""server/classify.py: image files -> digits, with the native model (mnist_infer) and PyTorch."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from PIL import Image

from mnist_common.preprocess import BlankImageError
from server import classify
from server.classify import CLASS_NAMES, classify_image, main, predictions_payload
from tests.conftest import WEIGHTS, non_digits
from tests.test_preprocess import upscale
from trainer.export import torch_predictor


def native_module():
    """The native Rust module (built by `invoke setup`); the test is skipped without it, and
    fails under MNIST_REQUIRE_NATIVE=1 (``invoke test``: see tests/conftest.py)."""
    return pytest.importorskip("mnist_infer", reason="the native module is built by `invoke setup`")


@pytest.fixture(scope="module")
def torch_predict():
    return torch_predictor(WEIGHTS)


@pytest.fixture(params=[pytest.param("native", marks=pytest.mark.native), "torch"])
def predict(request, torch_predict):
    """Each test runs with the native module (classify's default, predict=None) and PyTorch."""
    if request.param == "torch":
        return torch_predict
    native_module()
    return None


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, mnist_test):
    """The first MNIST test digit of each class, upscaled on a 280x280 canvas and saved as a
    white-on-black PNG (even digits) or a black-on-white JPEG (odd): [(path, label)]."""
    folder = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(5)
    labels = mnist_test.labels.numpy()
    files = []
    for digit in range(10):
        canvas = upscale(mnist_test.images[int(np.flatnonzero(labels == digit)[0])].numpy(), rng, smooth=True)
        if digit % 2 == 0:
            path = folder / f"{digit}.png"
            Image.fromarray(canvas).save(path)
        else:
            path = folder / f"{digit}.jpg"
            Image.fromarray(255 - canvas).convert("RGB").save(path, quality=90)
        files.append((str(path), digit))
    return files


def test_payload_has_the_lenet_rest_shape():
    probabilities = np.full(10, 0.02, np.float32)
    probabilities[7] = 0.82
    payload = predictions_payload(probabilities)
    assert set(payload) == {"predictions", "success"} and payload["success"] is True
    entries = payload["predictions"]["all"]
    assert [e["label"] for e in entries] == list(range(10))
    assert [e["class_name"] for e in entries] == list(CLASS_NAMES) and CLASS_NAMES[7] == "seven"
    assert all(type(e["probability"]) is float for e in entries)
    assert entries[7]["probability"] == pytest.approx(0.82)
    best = payload["predictions"]["prediction"]
    assert best == {"class_name": "seven", "label": 7, "probability": entries[7]["probability"]}
    assert json.loads(json.dumps(payload)) == payload
    for bad in (np.ones(9), np.ones((2, 10)), np.full(10, np.nan)):
        with pytest.raises(ValueError):
            predictions_payload(bad)


def test_classify_image_reads_both_polarities(digit_files, predict):
    for path, label in digit_files:
        probabilities = classify_image(path, predict=predict)
        assert probabilities.shape == (10,) and probabilities.dtype == np.float32
        assert probabilities.sum() == pytest.approx(1, abs=1e-5)
        assert int(probabilities.argmax()) == label, path


def test_a_blank_image_is_refused(tmp_path, predict):
    path = tmp_path / "blank.png"
    Image.new("L", (50, 50), 255).save(path)
    with pytest.raises(BlankImageError, match="blank.png: blank image"):
        classify_image(path, predict=predict)


def test_cli_prints_one_line_per_file(digit_files, predict, capsys):
    assert main([path for path, _ in digit_files], predict=predict) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(digit_files)
    for line, (path, label) in zip(out, digit_files):
        match = re.fullmatch(rf"{re.escape(path)}: (\d) \((\d+\.\d)%\)", line)
        assert match, line
        assert int(match[1]) == label and float(match[2]) > 50
    print("\n".join(out))


def test_cli_top_k(digit_files, predict, capsys):
    assert main([digit_files[3][0], "--top", "3"], predict=predict) == 0
    line = capsys.readouterr().out.strip()
    name, rest = line.split(": ")
    best = [(int(d), float(p)) for d, p in re.findall(r"(\d) (\d+\.\d)%", rest)]
    assert name == digit_files[3][0] and len(best) == 3 and best[0][0] == 3
    assert [p for _, p in best] == sorted((p for _, p in best), reverse=True)


def test_cli_json(digit_files, predict, capsys):
    assert main([path for path, _ in digit_files[:4]] + ["--json", "--top", "2"], predict=predict) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [path for path, _ in digit_files[:4]]
    for result, (_, label) in zip(results, digit_files):
        assert result["digit"] == label and 0.5 < result["probability"] <= 1
        assert len(result["top"]) == 2 and result["top"][0] == {"label": label, "probability": result["probability"]}
        # The native model's "not a digit" rule; no rule with another predict function.
        assert result["not_a_digit"] is (False if predict is None else None)


def test_cli_bad_files_fail_alone(digit_files, predict, tmp_path, capsys):
    notes, blank, missing = tmp_path / "notes.txt", tmp_path / "blank.png", tmp_path / "missing.png"
    notes.write_text("not a digit")
    Image.new("RGB", (64, 64), "white").save(blank)
    good = [path for path, _ in digit_files[:3]]
    files = [good[0], str(notes), good[1], str(blank), str(missing), good[2]]
    assert main(files, predict=predict) == 1
    captured = capsys.readouterr()
    assert [line.split(": ")[0] for line in captured.out.splitlines()] == good
    assert [line.split(": ")[0] for line in captured.err.splitlines()] == [str(notes), str(blank), str(missing)]
    assert main(files + ["--json"], predict=predict) == 1
    results = json.loads(capsys.readouterr().out)
    assert ["error" in r for r in results] == [False, True, False, True, True, False]
    assert "not an image" in results[1]["error"] and "blank" in results[3]["error"]
    print(captured.err)


@pytest.mark.native
def test_cli_says_not_a_digit(digit_files, tmp_path, capsys):
    """Drawings that are no digit (noise, a block, a checkerboard, stripes, a zigzag, a ring of
    dots, upscaled to 280x280 files) end their line with "not a digit"; the digits do not."""
    native_module()
    files = []
    for i, image in enumerate(non_digits()):
        files.append(str(tmp_path / f"not-a-digit-{i}.png"))
        Image.fromarray(image.reshape(28, 28).astype(np.uint8)).resize((280, 280), Image.BILINEAR).save(files[-1])
    digits = [path for path, _ in digit_files]
    assert main(files + digits) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main(files[:1] + digits[:1] + ["--json"]) == 0
    assert [r["not_a_digit"] for r in json.loads(capsys.readouterr().out)] == [True, False]
    print("\n".join(lines))
    assert [line.endswith(", not a digit") for line in lines] == [True] * len(files) + [False] * len(digits)


def test_cli_refuses_bad_arguments(digit_files, capsys):
    path = digit_files[0][0]
    for argv in ([path, "--top", "0"], [path, "--top", "11"], [path, "--top", "x"], []):
        assert main(argv) == 2, argv
        assert "usage: invoke predict" in capsys.readouterr().err


def test_cli_predicts_once_with_a_batch(digit_files, torch_predict):
    calls = []

    def spy(pixels):
        calls.append(pixels.shape)
        return torch_predict(pixels)

    assert main([path for path, _ in digit_files], predict=spy) == 0
    assert calls == [(10, 784)]


def test_cli_without_the_native_module_says_so(digit_files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mnist_infer", None)  # import mnist_infer fails
    assert main([digit_files[0][0]]) == 1
    assert "mnist_infer is not installed" in capsys.readouterr().err


@pytest.mark.native
def test_native_model_matches_pytorch(digit_files, torch_predict):
    mnist_infer = native_module()
    pixels = np.stack([classify.preprocess_file(path) for path, _ in digit_files])
    native, reference = mnist_infer.predict(pixels), torch_predict(pixels)
    assert native.shape == (10, 10) and mnist_infer.predict(pixels[0]).shape == (10,)
    print(f"native ({mnist_infer.BACKEND}) vs PyTorch: max |prob diff| {np.abs(native - reference).max():.2e}")
    assert np.abs(native - reference).max() <= 1e-4
    assert (native.argmax(1) == reference.argmax(1)).all()
