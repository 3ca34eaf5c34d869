"""trainer/evaluation/evaluate.py: the report of `invoke evaluate`, on a small real subset of MNIST test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import WEIGHTS
from trainer.augment import augmented_images
from trainer.evaluation.evaluate import evaluate, main, set_label, summary_table
from trainer.export import WeightsError, metrics_path, read_metadata
from trainer.model import normalize
from trainer.synthetic.redraw import PAGE_PEN_WIDTH, PEN_WIDTHS

#: Test digits of the evaluation under test (the first N of the 10,000).
N = 300
#: The committed cnn is a soup of fine-tunes (trainer.soup): no training run of its own, so no
#: training curves, and the report says why.
SOUP = "soup" in json.loads((WEIGHTS.parent / "metrics.json").read_text())
PNGS = (
    "confusion_matrix.png",
    f"confusion_matrix_pen{PAGE_PEN_WIDTH}.png",
    "per_class_accuracy.png",
    *(() if SOUP else ("training_curves.png",)),
    "worst_errors.png",
    f"worst_errors_pen{PAGE_PEN_WIDTH}.png",
    "worst_errors_adverse.png",
)
SET_KEYS = ("clean", "augmented", *(f"redrawn_pen{w}" for w in PEN_WIDTHS), "redrawn_adverse", "writers", "styles")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(the returned report, the report folder) of the committed model on the first N digits."""
    out = tmp_path_factory.mktemp("report") / "nested" / "model"  # parents are created
    result = evaluate(WEIGHTS, out, limit=N, cache_dir=tmp_path_factory.mktemp("redrawn-cache"))
    return result, out


@pytest.fixture(scope="module")
def direct_logits(model, mnist_test):
    """The committed model's logits for the first N clean test digits, computed here."""
    with torch.no_grad():
        return model(normalize(mnist_test.images[:N].unsqueeze(1)))


def test_every_file_is_written(report):
    _, out = report
    for name in ("evaluation.json", "summary.md", *PNGS):
        assert (out / name).is_file(), name
    for name in PNGS:
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(out / name) as image:
            width, height = image.size
            assert 500 <= width <= 2000 and 300 <= height <= 2000, (name, image.size)
            extrema = image.convert("L").getextrema()
            assert extrema[0] < extrema[1], f"{name} is a blank image"


def test_json_is_what_was_returned(report):
    result, out = report
    assert json.loads((out / "evaluation.json").read_text()) == json.loads(json.dumps(result))
    assert tuple(result["sets"]) == SET_KEYS
    assert result["n"] == N and result["limit"] == N


def test_synthetic_writers_are_scored_per_writer(report, model, mnist_test):
    """One synthetic writer per 100 digits of the limit (3 here), each scored on its own."""
    from trainer.synthetic.writers import writers_set

    result = report[0]["sets"]["writers"]
    written = writers_set(
        mnist_test.images.numpy(), mnist_test.labels.numpy(), writers=3, progress=False, cache_dir=None
    )
    with torch.no_grad():
        predicted = model(normalize(torch.from_numpy(written.images).float().unsqueeze(1))).argmax(1).numpy()
    correct = predicted == written.labels
    assert result["accuracy"] == pytest.approx(correct.mean())
    assert set(result["per_writer"]) == {"writer 00", "writer 01", "writer 02"}
    for w in range(3):
        mine = result["per_writer"][f"writer {w:02d}"]
        assert mine["n"] == 100 and mine["accuracy"] == pytest.approx(correct[written.writers == w].mean())
    summary = (report[1] / "summary.md").read_text()
    assert "**synthetic writers**: 3 writers" in summary


def test_styles_are_scored_per_style(report, model):
    """One styles writer per 50 digits of the limit (6 here), every digit scored, per style too."""
    from trainer.synthetic.styles import style_names, styles_set

    result = report[0]["sets"]["styles"]
    styled = styles_set(6, progress=False, cache_dir=None)
    with torch.no_grad():
        predicted = model(normalize(torch.from_numpy(styled.images).float().unsqueeze(1))).argmax(1).numpy()
    correct = predicted == styled.labels
    assert result["accuracy"] == pytest.approx(correct.mean())
    names = np.array([style_names()[i] for i in styled.styles])
    assert set(result["per_style"]) == set(names)
    for name, mine in result["per_style"].items():
        assert mine["n"] == (names == name).sum() and mine["accuracy"] == pytest.approx(correct[names == name].mean())
    assert "**styles MNIST lacks**" in (report[1] / "summary.md").read_text()


def test_clean_accuracy_matches_the_model(report, direct_logits, mnist_test):
    clean = report[0]["sets"]["clean"]
    labels = mnist_test.labels[:N]
    correct = (direct_logits.argmax(1) == labels).sum().item()
    assert clean["accuracy"] == correct / N and clean["errors"] == N - correct
    assert clean["mean_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(direct_logits, labels).item(), rel=1e-5
    )
    probabilities = torch.softmax(direct_logits, dim=1)
    for error in clean["worst_errors"]:
        assert labels[error["index"]] == error["true"] != error["predicted"]
        assert probabilities[error["index"]].argmax() == error["predicted"]
        assert error["probability"] == pytest.approx(probabilities[error["index"], error["predicted"]].item(), abs=1e-6)


def test_augmented_accuracy_is_on_the_first_digits_of_the_full_augmented_set(report, model, mnist_test):
    images = augmented_images(mnist_test.images)[:N]
    assert torch.equal(images, augmented_images(mnist_test.images)[:N]), "the seed fixes the transforms"
    assert not torch.equal(images, mnist_test.images[:N].float())
    with torch.no_grad():
        predicted = model(normalize(images.unsqueeze(1))).argmax(1)
    assert report[0]["sets"]["augmented"]["accuracy"] == (predicted == mnist_test.labels[:N]).sum().item() / N


@pytest.mark.parametrize("key", SET_KEYS)
def test_numbers_are_consistent(report, mnist_test, key):
    result = report[0]["sets"][key]
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == result["n"] == N
    np.testing.assert_array_equal(confusion.sum(axis=1), result["per_class_n"])
    per_class = (
        [N // 10] * 10 if key in ("writers", "styles") else torch.bincount(mnist_test.labels[:N], minlength=10).numpy()
    )
    np.testing.assert_array_equal(confusion.sum(axis=1), per_class)
    assert result["errors"] == N - np.trace(confusion)
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / N)
    for digit, accuracy in enumerate(result["per_class_accuracy"]):
        assert accuracy == pytest.approx(confusion[digit, digit] / confusion[digit].sum())
    worst = result["worst_errors"]
    assert len(worst) == min(result["errors"], 25)
    assert all(e["true"] != e["predicted"] and 0 <= e["true_probability"] <= e["probability"] <= 1 for e in worst)
    assert [e["probability"] for e in worst] == sorted((e["probability"] for e in worst), reverse=True)
    assert result["blank"] == 0
    assert 0 < result["mean_loss"] < 1


def test_summary_has_the_table_and_the_metadata(report):
    result, out = report
    summary = (out / "summary.md").read_text()
    assert summary_table(result["sets"]) in summary
    for key, numbers in result["sets"].items():
        row = f"| {set_label(key)} | {numbers['accuracy']:.2%} | {numbers['errors']:,} | {N} |"
        assert row in summary, row
    assert f"| redrawn pen {PAGE_PEN_WIDTH} (page) |" in summary and "| redrawn, adverse pen |" in summary
    for key, value in read_metadata(WEIGHTS).items():  # test_accuracy, versions, architecture, ...
        assert f"| {key} | {value} |" in summary
    for name in PNGS:
        assert f"]({name})" in summary
    assert ("no training curves: the weights average" in summary) == SOUP
    assert ("training_curves.png" in summary) != SOUP


@pytest.mark.parametrize("metrics", [None, {"test_accuracy": 0.5, "history": [{"epoch": 1}]}])
def test_training_curves_need_the_weights_own_metrics(tmp_path, capsys, metrics):
    weights = tmp_path / "copy.safetensors"
    shutil.copyfile(WEIGHTS, weights)
    if metrics is not None:
        metrics_path(weights).write_text(json.dumps(metrics))
    out = tmp_path / "report"
    result = evaluate(weights, out, limit=50, pen_widths=(PAGE_PEN_WIDTH,), cache_dir=tmp_path / "cache")
    assert not (out / "training_curves.png").exists()
    summary = (out / "summary.md").read_text()
    expected = "no copy.metrics.json beside" if metrics is None else "is from another run"
    assert expected in summary and any(expected in note for note in result["notes"])
    assert tuple(result["sets"]) == (
        "clean",
        "augmented",
        f"redrawn_pen{PAGE_PEN_WIDTH}",
        "redrawn_adverse",
        "writers",
        "styles",
    )
    printed = capsys.readouterr().out
    assert "| test set | accuracy | errors | n |" in printed and "| clean |" in printed


def test_weights_of_another_architecture_are_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"layer.weight": torch.zeros(3, 3)}, str(other), metadata={"architecture": "resnet-9000"})
    with pytest.raises(WeightsError, match="architecture 'resnet-9000' without a `layers` plan"):
        evaluate(other, tmp_path / "report", limit=10)
    assert not (tmp_path / "report").exists(), "nothing is written for weights that do not load"


def test_mis_shaped_and_corrupt_weights_are_refused(tmp_path):
    from safetensors.torch import load_file

    tensors = load_file(str(WEIGHTS))
    tensors["fc3.weight"] = torch.zeros(5, 128)
    shaped = tmp_path / "shaped.safetensors"
    save_file(tensors, str(shaped), metadata={"architecture": "mnist-conv-bn-gelu-v1"})
    with pytest.raises(WeightsError, match=r"fc3\.weight has shape \(5, 128\)"):
        evaluate(shaped, tmp_path / "a", limit=10)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        evaluate(corrupt, tmp_path / "b", limit=10)
    with pytest.raises(WeightsError):
        evaluate(tmp_path / "missing.safetensors", tmp_path / "c", limit=10)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        evaluate(WEIGHTS, tmp_path / "a", limit=-1)
    with pytest.raises(ValueError, match="pen widths"):
        evaluate(WEIGHTS, tmp_path / "b", limit=10, pen_widths=(20, 0))


def test_command_line_errors_exit_with_a_message(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_info:
        main(["--weights", str(corrupt), "--out-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_collected_drawings_are_scored_per_writer(tmp_path, mnist_test):
    """`invoke evaluate --samples`: drawings saved from the page (here: MNIST test digits 100-159
    stored through mnist_common.samples, as the page would) scored as a set of their own, per writer."""
    from mnist_common.samples import open_store

    store = open_store(tmp_path / "samples.db")
    images, labels = mnist_test.images[100:160], mnist_test.labels[100:160]
    for i, (image, label) in enumerate(zip(images, labels)):
        wrong = i == 0  # one sample whose writer gave the wrong label
        store.add(
            {
                "label": (int(label) + 1) % 10 if wrong else int(label),
                "pixels": image.flatten().tolist(),
                "strokes": [[[0, 0, 0]]],
                "pen_width": 20,
                "canvas": [280, 280],
                "writer": "ann" if i < 20 else ("bob" if i < 50 else None),
            }
        )
    result = evaluate(
        WEIGHTS,
        tmp_path / "report",
        limit=10,
        pen_widths=(PAGE_PEN_WIDTH,),
        cache_dir=tmp_path / "cache",
        adverse_pen=False,
        samples=store.arrays(),
    )
    collected = result["sets"]["samples"]
    writers = collected["per_writer"]
    assert collected["n"] == 60 and result["sets"]["clean"]["n"] == 10
    assert {name: w["n"] for name, w in writers.items()} == {"ann": 20, "bob": 30, "(no writer)": 10}
    assert writers["ann"]["accuracy"] <= 19 / 20 and collected["errors"] >= 1
    assert writers["bob"]["accuracy"] >= 0.95
    assert "collected drawings" in (tmp_path / "report" / "summary.md").read_text()
