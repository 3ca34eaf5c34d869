"""What training learns from besides MNIST: the drawings saved from the page (``invoke train
--extra-samples``, split by writer so that the held-out writers stay a test) and synthetic
writers (``invoke train --writers``)."""

from pathlib import Path

import pytest
import torch

from trainer.export import load_model
from trainer.model import normalize
from trainer.train import Config, train

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "models/model.safetensors"


def collected_db(path, images, labels, writers):
    """A sample database as the page fills it (mnist_common/samples.py), one drawing per image."""
    from mnist_common.samples import open_store

    store = open_store(path)
    for image, label, writer in zip(images, labels, writers):
        store.add(
            {
                "label": int(label),
                "pixels": [int(v) for v in image.flatten()],
                "strokes": [[[0, 0, 0]]],
                "pen_width": 20,
                "canvas": [280, 280],
                "writer": writer,
            }
        )
    return store


def box_glyph() -> torch.Tensor:
    """A hollow square, a shape no MNIST class is: (28, 28) uint8, ink 255."""
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[6:22, 6:22] = 255
    image[9:19, 9:19] = 0
    return image


def test_collected_drawings_split_by_writer_and_stably():
    from trainer import data

    rng = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (400, 28, 28), generator=rng, dtype=torch.uint8).numpy()
    labels = torch.randint(0, 10, (400,), generator=rng).numpy()
    writers = [f"writer {i % 40}" if i < 300 else None for i in range(400)]
    (_, _, train_w), (_, held_labels, held_w) = data.split_collected(images, labels, writers)
    named_train, named_held = {w for w in train_w if w}, {w for w in held_w if w}
    assert named_train and named_held and not named_train & named_held  # a writer is on one side only
    assert len(train_w) + len(held_w) == 400 and 0.1 < len(held_labels) / 400 < 0.3  # about 1 in 5
    # Adding drawings moves nobody: the first 200 split on their own as they do among all 400.
    held = [data.is_held_out(w, image) for w, image in zip(writers, images)]
    _, (_, _, first_held) = data.split_collected(images[:200], labels[:200], writers[:200])
    assert first_held == [w for w, h in zip(writers[:200], held[:200]) if h]
    assert held[:300] == [w in named_held for w in writers[:300]]


def box_is_seven(weights) -> bool:
    model = load_model(weights)
    with torch.no_grad():
        return model(normalize(box_glyph()[None, None].float())).argmax(1).item() == 7


@pytest.mark.slow
def test_extra_samples_join_training_and_the_held_out_writers_are_its_test(tmp_path):
    """`invoke train --extra-samples`: a shape MNIST lacks (a hollow square), drawn by 30 writers
    and labelled 7, is learnt (the committed model, trained on MNIST alone, does not call it a
    7); the writers held out are kept for `invoke evaluate --samples`."""
    from trainer import data
    from trainer.evaluation.evaluate import evaluate

    writers = [f"writer {i}" for i in range(30) for _ in range(4)]
    boxes = box_glyph().expand(len(writers), 28, 28).numpy()
    store = collected_db(tmp_path / "samples.db", boxes, [7] * len(writers), writers)
    (_, train_labels, _), (_, held_labels, held_writers) = data.split_collected(*store.arrays())
    assert len(train_labels) and len(held_labels)
    assert not box_is_seven(ROOT / WEIGHTS)

    config = Config(
        epochs=2,
        limit=500,
        test_limit=500,
        batch_size=64,
        clean_epochs=1,
        extra_samples=str(tmp_path / "samples.db"),
        styles=0,  # the drawings alone beside MNIST's digits
    )
    metrics = train(config, out_dir=tmp_path)
    assert box_is_seven(tmp_path / "model.safetensors")
    assert metrics["extra_samples"] == {
        "database": str(tmp_path / "samples.db"),
        "train": len(train_labels),
        "held_out": len(held_labels),
        "train_writers": 30 - len(set(held_writers)),
        "held_out_writers": len(set(held_writers)),
        "repeat": 10,
    }
    assert metrics["train_images"] == 500 + 10 * len(train_labels)

    report = evaluate(
        tmp_path / "model.safetensors",
        tmp_path / "report",
        limit=10,
        pen_widths=(20,),
        cache_dir=tmp_path / "cache",
        adverse_pen=False,
        writers=0,
        samples=store.arrays(),
    )
    assert report["sets"]["samples"]["n"] == len(held_labels)  # the training writers are not a test
    assert set(report["sets"]["samples"]["per_writer"]) == set(held_writers)
    assert "held out from training" in (tmp_path / "report" / "summary.md").read_text()


def test_extra_samples_refuse_a_missing_database_clearly(tmp_path):
    with pytest.raises(ValueError, match="no sample database at"):
        train(Config(epochs=1, limit=64, extra_samples=str(tmp_path / "none.db")), out_dir=tmp_path)
    with pytest.raises(ValueError, match="extra_repeat must be at least 1"):
        train(Config(epochs=1, limit=64, extra_repeat=0), out_dir=tmp_path)


@pytest.mark.slow
def test_synthetic_writers_from_the_training_digits_join_training(tmp_path):
    """`invoke train --writers N`: N writers' digits (trainer/synthetic/writers.py) are added, written from
    MNIST's training digits by writers whose seeds are not the test writers'."""
    from trainer.evaluation.personalize import TUNE_FIRST_SEED
    from trainer.synthetic.writers import WRITER_SEED
    from trainer.train import TRAIN_WRITER_SEED

    assert TRAIN_WRITER_SEED > max(WRITER_SEED, TUNE_FIRST_SEED) + 100_000
    metrics = train(
        Config(epochs=1, limit=256, test_limit=500, writers=2, writers_per_class=1, styles=0), out_dir=tmp_path
    )
    assert metrics["train_images"] == 256 + 2 * 10
    assert metrics["config"]["writers"] == 2
    with pytest.raises(ValueError, match="writers must be >= 0"):
        train(Config(epochs=1, limit=64, writers=-1), out_dir=tmp_path)


@pytest.mark.slow
def test_redrawn_training_digits_join_training(tmp_path):
    """`invoke train --redrawn N`: the first N digits of the training split, redrawn with the
    page's kind of pen (trainer/synthetic/redraw.py), join the training images."""
    metrics = train(
        Config(epochs=1, limit=256, test_limit=500, redrawn=24, styles=0, outliers=0),
        out_dir=tmp_path,
    )
    assert metrics["train_images"] == 256 + 24  # none of the first 24 is blank
    assert metrics["config"]["redrawn"] == 24
    with pytest.raises(ValueError, match="redrawn, outliers and outlier_weight must be >= 0"):
        train(Config(epochs=1, limit=64, redrawn=-1), out_dir=tmp_path)
