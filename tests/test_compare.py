"""trainer/evaluation/compare.py: `invoke evaluate --all`, on a small real subset of MNIST test and two
real models (the committed cnn and lenet5) in a temporary models folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.conftest import ROOT, WEIGHTS
from trainer.evaluation.compare import (
    CompareError,
    auroc,
    compare,
    discover,
    expected_calibration_error,
    load_models,
    mahalanobis_score,
    main,
    wasm_timing,
)
from trainer.synthetic.redraw import PAGE_PEN_WIDTH

#: Test digits (and non-digits) of the comparison under test.
N = 200
LENET5 = ROOT / "models" / "lenet5.safetensors"
WASM = ROOT / "web" / "pkg" / "fast-simd128" / "mnist_wasm_bg.wasm"


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """(returned report, comparison folder, reports folder) for copies of the cnn and lenet5."""
    if not LENET5.exists():
        pytest.skip("models/lenet5.safetensors is not trained (`invoke train --arch lenet5`)")
    models = tmp_path_factory.mktemp("models")
    shutil.copy(WEIGHTS, models / "model.safetensors")
    shutil.copy(LENET5, models / "lenet5.safetensors")
    reports = tmp_path_factory.mktemp("reports")
    out = reports / "models"
    report = compare(models, out, limit=N, cache_dir=tmp_path_factory.mktemp("redrawn-cache"), wasm_rounds=3)
    return report, out, reports


def test_the_table_has_one_row_per_model(comparison):
    report, out, _ = comparison
    assert [row["name"] for row in report["models"]] == ["cnn", "lenet5"]  # model.safetensors is the cnn
    table = (out / "comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| cnn |") or line.startswith("| lenet5 |")]
    assert len(rows) == 2
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    assert all(line.count("|") == header.count("|") for line in rows)
    assert "{" not in table and "pens 8, 14, 20, 28 px" in table  # every placeholder filled in
    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(report))
    assert report["settings"]["n"] == N and report["settings"]["nondigits"] == N


def test_sizes_and_parameters_are_the_files(comparison):
    report, _, _ = comparison
    for row, path in zip(report["models"], (WEIGHTS, LENET5)):
        with safe_open(str(path), framework="pt") as f:
            elements = sum(f.get_tensor(name).numel() for name in f.keys())
        assert row["parameters"] == elements
        assert row["file_bytes"] == path.stat().st_size
    assert report["models"][0]["parameters"] == 260_810  # the cnn's documented count


def test_accuracies_are_the_per_model_reports(comparison):
    """evaluate() ran once per model into reports/<name>/; the comparison repeats its numbers."""
    report, _, reports = comparison
    for row in report["models"]:
        evaluation = json.loads((reports / row["name"] / "evaluation.json").read_text())
        sets = {key: result["accuracy"] for key, result in evaluation["sets"].items()}
        assert row["sets"] == sets
        assert row["accuracy"]["clean"] == sets["clean"]
        assert row["accuracy"]["page_pen"] == sets[f"redrawn_pen{PAGE_PEN_WIDTH}"]
        pens = [sets[f"redrawn_pen{w:g}"] for w in evaluation["pen_widths"]]
        assert row["accuracy"]["redrawn_mean"] == pytest.approx(np.mean(pens))
        assert row["accuracy"]["adverse"] == sets["redrawn_adverse"]
        assert row["accuracy"]["clean"] >= 0.97  # real models on real digits


def test_calibration_numbers_are_sane(comparison):
    report, _, _ = comparison
    for row in report["models"]:
        for mode in ("eval", "mc_dropout"):
            ece = row["calibration"][mode]
            assert 0 <= ece["ece"] <= 1
            assert ece["ece"] < 0.05, (row["name"], mode, ece["ece"])  # trained MNIST models are near-calibrated
            assert len(ece["bins"]) == 15 and sum(b["count"] for b in ece["bins"]) == N
            for b in ece["bins"]:
                if b["count"]:
                    assert b["lower"] < b["confidence"] <= b["upper"] + 1e-9
                    assert 0 <= b["accuracy"] <= 1


def test_ece_matches_a_hand_computation():
    # Bins of width 1/15: 0.95 -> (14/15, 1], 0.65 -> (9/15, 10/15], 0.35 -> (5/15, 6/15].
    # |0.5 - 0.95| * 2/4 + |1 - 0.65| * 1/4 + |1 - 0.35| * 1/4 = 0.225 + 0.0875 + 0.1625.
    result = expected_calibration_error([0.95, 0.95, 0.65, 0.35], [True, False, True, True])
    assert result["ece"] == pytest.approx(0.475)
    used = {i: b for i, b in enumerate(result["bins"]) if b["count"]}
    assert sorted(used) == [5, 9, 14]
    assert used[14] == pytest.approx({"lower": 14 / 15, "upper": 1.0, "confidence": 0.95, "accuracy": 0.5, "count": 2})
    # Calibrated: 80 % right at confidence 0.8. Always right at confidence 1: no error.
    assert expected_calibration_error([0.8] * 10, [True] * 8 + [False] * 2)["ece"] == pytest.approx(0)
    assert expected_calibration_error([1.0, 1.0], [True, True])["ece"] == 0
    # Bins are right-closed: exactly 2/15 is in bin 1, not bin 2.
    assert expected_calibration_error([2 / 15], [False])["bins"][1]["count"] == 1
    assert expected_calibration_error([0.0], [False])["bins"][0]["count"] == 1
    # Confidently wrong: the worst case.
    assert expected_calibration_error([1.0, 1.0], [False, False])["ece"] == 1
    for bad in (([], []), ([0.5], [True, False]), ([1.5], [True]), ([np.nan], [True])):
        with pytest.raises(ValueError):
            expected_calibration_error(*bad)


def test_auroc_on_known_rankings():
    assert auroc([2, 3], [0, 1]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1, 1]) == 0.5  # ties count half
    assert auroc([1, 3], [0, 2]) == 0.75  # 3 of 4 pairs in order
    rng = np.random.default_rng(0)
    assert auroc(rng.normal(size=4000), rng.normal(size=4000)) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError):
        auroc([], [1])
    with pytest.raises(ValueError):
        auroc([np.inf], [1])


def test_non_digits_are_told_from_digits(comparison):
    """Every score ranks the non-digits above the test digits well above chance; the page's
    rules flag far more non-digits than digits, per kind too; "not sure" is either rule."""
    report, out, _ = comparison
    for row in report["models"]:
        ood = row["ood"]
        assert ood["n_digits"] == N and ood["n_nondigits"] == N
        # Outlier exposure made the top probability the score to use; MC dropout's mutual
        # information and the Mahalanobis distance are reported, not relied on.
        assert ood["auroc_max_probability"] > 0.95 and ood["auroc_energy"] > 0.9, row["name"]
        for score in ("mahalanobis", "entropy", "mutual_information"):
            assert 0 <= ood[f"auroc_{score}"] <= 1, (row["name"], score)
        assert ood["unsure_digits"] <= 0.05
        assert ood["unsure_nondigits"] > ood["unsure_digits"] + 0.5
        assert ood["unsure_nondigits"] >= max(ood["not_a_digit_nondigits"], ood["mi_unsure_nondigits"])
        assert ood["unsure_nondigits"] <= ood["not_a_digit_nondigits"] + ood["mi_unsure_nondigits"] + 1e-9
        assert sum(kind["n"] for kind in ood["per_kind"].values()) == N
    table = (out / "comparison.md").read_text()
    assert "## Non-digits per kind" in table and "spiral (test only)" in table


def test_the_mahalanobis_score_measures_distance_to_the_nearest_class():
    # Two classes on a line (the other eight far away), unit variance around +-2: a point on a
    # class mean scores 0, one 3 standard deviations beyond scores 9.
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(np.repeat(np.arange(10), 2000))
    means = np.concatenate([[-2.0, 2.0], 100.0 + np.arange(8) * 10])
    fit = torch.from_numpy(means[labels.numpy()] + rng.normal(0, 1, len(labels)))[:, None]
    scores = mahalanobis_score(torch.tensor([[2.0], [5.0], [-2.0]]), fit, labels)
    assert scores.tolist() == pytest.approx([0.0, 9.0, 0.0], abs=0.2)


def test_comparison_png_is_a_real_image(comparison):
    _, out, _ = comparison
    for name, low in (("comparison.png", 1000), ("nondigits.png", 300)):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(out / name) as image:
            assert image.size[0] >= low and image.size[1] >= low * 0.6, image.size
            extrema = image.convert("L").getextrema()
            assert extrema[0] < extrema[1], f"{name} is blank"


def test_wasm_times_every_model_or_says_why(comparison):
    report, out, _ = comparison
    wasm = report["wasm"]
    if shutil.which("node") is None or not WASM.exists():
        assert "skipped" in wasm["note"] and wasm["models"] == {}
        assert all(row["wasm"] is None for row in report["models"])
        return
    for row in report["models"]:
        timing = row["wasm"]
        assert "error" not in timing, timing
        assert 0 < timing["median_ms"] < 100
        assert timing["predicts"] == 3 * 20
        assert timing["wasm_max_abs_diff"] < 1e-4  # the wasm computes the same model
    assert report["models"][0]["wasm"]["vs_baseline"] == 1.0
    assert "wasm ms/predict" in (out / "comparison.md").read_text()


def test_wasm_timing_is_skipped_with_a_note_without_a_build(tmp_path):
    result = wasm_timing(
        [{"name": "cnn", "path": WEIGHTS}],
        np.zeros(784, np.float32),
        np.zeros((1, 784), np.float32),
        {"cnn": np.zeros((1, 10))},
        build=tmp_path,
    )
    assert result["models"] == {} and "skipped" in result["note"]


def test_missing_empty_and_unreadable_model_folders_are_refused(tmp_path, capsys):
    with pytest.raises(CompareError, match="does not exist"):
        discover(tmp_path / "nowhere")
    with pytest.raises(CompareError, match="no \\*.safetensors"):
        discover(tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CompareError, match="no readable model"):
        load_models(discover(tmp_path))
    with pytest.raises(SystemExit) as exit_info:  # the CLI says so in one line, no traceback
        main(["--models-dir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    # Beside a good model, a broken file is left out with a note.
    shutil.copy(WEIGHTS, tmp_path / "model.safetensors")
    loaded, notes = load_models(discover(tmp_path))
    assert [m["name"] for m in loaded] == ["cnn"]
    assert len(notes) == 1 and "broken.safetensors" in notes[0]


def test_a_negative_limit_is_refused(tmp_path):
    shutil.copy(WEIGHTS, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="limit"):
        compare(tmp_path, tmp_path / "out", limit=-1)


def test_collected_drawings_become_a_column(tmp_path, mnist_test):
    """`invoke evaluate --all --samples DB`: every model scored on the saved drawings too."""
    from trainer.evaluation.compare import comparison_table

    rows = [
        {
            "name": "a",
            "architecture": "cnn",
            "parameters": 1,
            "file_bytes": 1,
            "accuracy": {
                "clean": 0.99,
                "augmented": 0.98,
                "page_pen": 0.97,
                "redrawn_mean": 0.97,
                "adverse": 0.9,
                "samples": 0.875,
            },
            "calibration": {"eval": {"ece": 0.01}, "mc_dropout": {"ece": 0.02}},
            "ood": {
                "auroc_max_probability": 0.99,
                "auroc_energy": 0.98,
                "auroc_mahalanobis": 0.7,
                "auroc_mutual_information": 0.5,
                "not_a_digit_nondigits": 0.9,
                "unsure_digits": 0.01,
                "unsure_nondigits": 0.92,
            },
        }
    ]
    table = comparison_table(rows)
    assert table.splitlines()[0].endswith("| collected drawings |") and "87.50%" in table.splitlines()[2]
    rows[0]["accuracy"]["samples"] = None
    assert "collected" not in comparison_table(rows)
