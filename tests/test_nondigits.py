"""trainer/synthetic/nondigits.py: the non-digits of outlier exposure and of the "not a digit"
test, and what the committed models make of them (PyTorch, the rule the page and API apply)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from trainer.export import read_metadata
from trainer.synthetic import nondigits as nd
from trainer.uncertainty import mc_probabilities, summarize, top_probability

MODELS = sorted((ROOT / "models").glob("*.safetensors"))


def test_every_kind_draws_an_inked_centred_28x28_image():
    for kind in nd.KINDS:
        rng = np.random.default_rng(5)
        image = None
        while image is None:
            image = nd.draw(kind, "test", rng)
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 255, kind
        assert image.shape in ((28, 28), (nd.CANVAS_SIZE, nd.CANVAS_SIZE)), kind
        assert image.max() > 0, kind
    for i in range(40):
        pixels, kind = nd.nondigit(i, "test")
        assert pixels.shape == (28, 28) and pixels.max() > 0
        if kind != "noise":  # drawn kinds go through to_mnist: ink centred by its centre of mass
            ys, xs = np.mgrid[0:28, 0:28]
            mass = pixels.sum()
            assert abs((pixels * ys).sum() / mass - 14) < 2.5 and abs((pixels * xs).sum() / mass - 14) < 2.5, kind


def test_non_digits_are_seeded_and_prefix_stable(tmp_path):
    few = nd.nondigit_set(6, "test", cache_dir=None, progress=False)
    more = nd.nondigit_set(12, "test", cache_dir=None, progress=False)
    assert np.array_equal(few.images, more.images[:6]) and np.array_equal(few.kinds, more.kinds[:6])
    again, kind = nd.nondigit(3, "test")
    assert np.array_equal(np.clip(np.rint(again), 0, 255).astype(np.uint8), few.images[3])
    assert kind == few.kind_names()[3]
    train = nd.nondigit_set(6, "train", cache_dir=None, progress=False)
    assert not np.array_equal(train.images, few.images)  # another stream


def test_the_cache_round_trips_and_is_keyed_on_count_and_split(tmp_path):
    built = nd.nondigit_set(7, "test", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 1
    cached = nd.nondigit_set(7, "test", cache_dir=tmp_path, progress=False)
    assert np.array_equal(built.images, cached.images) and np.array_equal(built.kinds, cached.kinds)
    nd.nondigit_set(8, "test", cache_dir=tmp_path, progress=False)
    nd.nondigit_set(7, "train", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 3


def test_a_cached_set_is_sliced_or_extended_not_rebuilt(tmp_path, monkeypatch):
    """The first N non-digits are the same for every N: a larger cached set gives a smaller one
    (nothing drawn, nothing written), a smaller one is extended by the non-digits it lacks."""
    drawn = []
    build_chunk = nd._build_chunk
    monkeypatch.setattr(nd, "_build_chunk", lambda task: drawn.append(task) or build_chunk(task))
    nd.nondigit_set(5, "validation", cache_dir=tmp_path, processes=1, progress=False)
    extended = nd.nondigit_set(9, "validation", cache_dir=tmp_path, processes=1, progress=False)
    assert drawn == [("validation", 0, 5), ("validation", 5, 9)]
    fresh = nd.nondigit_set(9, "validation", cache_dir=None, processes=1, progress=False)
    assert np.array_equal(extended.images, fresh.images) and np.array_equal(extended.kinds, fresh.kinds)
    files = sorted(tmp_path.iterdir())
    sliced = nd.nondigit_set(7, "validation", cache_dir=tmp_path, processes=1, progress=False)
    assert sorted(tmp_path.iterdir()) == files and len(drawn) == 3  # only the fresh build drew
    assert np.array_equal(sliced.images, fresh.images[:7]) and np.array_equal(sliced.kinds, fresh.kinds[:7])
    assert len(nd.nondigit_set(4, "test", cache_dir=tmp_path, processes=1, progress=False).kinds) == 4
    assert drawn[-1] == ("test", 0, 4)  # another split's cache is not used


def test_training_never_sees_the_test_only_shapes():
    """Kinds, fonts, letters and symbols of the test split that the training split never draws."""
    train = nd.nondigit_set(300, "train", cache_dir=None, progress=False)
    assert not set(train.kind_names()) & set(nd.TEST_ONLY_KINDS)
    assert set(nd.kinds_of("test")) - set(nd.kinds_of("train")) == set(nd.TEST_ONLY_KINDS)
    assert not set(nd.FONTS["train"]) & set(nd.FONTS["test"])
    for alphabet, held_out in ((nd.LETTERS, nd.TEST_ONLY_LETTERS), (nd.SYMBOLS, nd.TEST_ONLY_SYMBOLS)):
        assert set(held_out) <= set(alphabet)
        assert not set(nd._characters("train", alphabet, held_out)) & set(held_out)
    assert not set(nd.LETTERS) & nd.DIGIT_LIKE  # no O, I, l, S, Z, B, g, q ... as "non-digits"
    # The validation split (the threshold's) draws what training draws, from other seeds.
    validation = nd.nondigit_set(300, "validation", cache_dir=None, progress=False)
    assert set(validation.kind_names()) == set(train.kind_names()) and nd.FONTS["validation"] == nd.FONTS["train"]
    assert not any((validation.images == image).all(axis=(1, 2)).any() for image in train.images)
    for font in nd.FONTS["train"] + nd.FONTS["test"]:
        assert (nd.font_dir() / font).is_file(), font


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        nd.nondigit(0, "holdout")
    with pytest.raises(ValueError, match="unknown kind"):
        nd.draw("unicorn", "test", np.random.default_rng(0))
    with pytest.raises(ValueError, match="count must be >= 1"):
        nd.nondigit_set(0)
    with pytest.raises(ValueError, match="index must be >= 0"):
        nd.nondigit(-1)


@pytest.mark.parametrize("weights", MODELS, ids=[p.stem for p in MODELS])
def test_committed_models_flag_non_digits_and_few_digits(weights, mnist_test):
    """The page's two rules, applied as the Rust crate does (not a digit: top eval-mode
    probability below ``not_a_digit_max_probability``; not sure: that, or the MC-dropout mutual
    information above ``unsure_mutual_information``), on 1,000 MNIST test digits (every tenth:
    the set's writers run from easy to hard) and 400 non-digits of the test split: every model
    meets the issue's goals (>= 90 % of non-digits, <= 2 % of digits; before outlier exposure
    15-71 % of non-digits, and with a threshold at 1 % of the validation digits 77-90 %)."""
    from trainer.export import load_model

    metadata = read_metadata(weights)
    if "not_a_digit_max_probability" not in metadata:
        pytest.fail(f"{weights.name} has no not_a_digit_max_probability: `python -m trainer.uncertainty`")
    model = load_model(Path(weights))
    tau = float(metadata["not_a_digit_max_probability"])
    # No threshold without dropout (the capsnet): then "not a digit" alone.
    mi_threshold = float(metadata.get("unsure_mutual_information", "inf"))
    nondigits = torch.from_numpy(nd.nondigit_set(400, "test", progress=False).images).float()

    def unsure(images: torch.Tensor) -> np.ndarray:
        top = top_probability(model, images)
        mi = summarize(mc_probabilities(model, images))["mutual_information"]
        return ((top < tau) | (mi > mi_threshold)).numpy()

    digits = unsure(mnist_test.images[::10].float()).mean()
    others = unsure(nondigits).mean()
    assert digits <= 0.02, f"{weights.stem}: {digits:.1%} of MNIST test digits flagged"
    assert others >= 0.9, f"{weights.stem}: only {others:.1%} of non-digits flagged"
