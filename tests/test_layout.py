"""One fact, one place: the input layout and the classes agree between Python (trainer/),
Rust (mnist_infer, built from wasm-infer/) and JS (web/preprocess.js). The normalisation
constants need no such test: the Rust crate reads them from the weights file's metadata."""

import re
from pathlib import Path

import mnist_infer
from trainer import model
from web.server import classify, preprocess
from web.server import app as server

PREPROCESS_JS = (Path(__file__).resolve().parent.parent / "web" / "preprocess.js").read_text()


def js_constant(name: str) -> int:
    match = re.search(rf"export const {name} = (\d+);", PREPROCESS_JS)
    assert match, f"web/preprocess.js no longer exports {name}"
    return int(match.group(1))


def test_input_layout_is_the_same_everywhere():
    side = model.IMAGE_SIZE
    assert preprocess.MNIST_SIZE == js_constant("MNIST_SIZE") == side
    assert preprocess.DIGIT_BOX == js_constant("DIGIT_BOX") == 20
    assert mnist_infer.INPUT_LEN == server.NUM_PIXELS == classify.PIXELS == side * side


def test_classes_are_the_same_everywhere():
    assert mnist_infer.NUM_CLASSES == model.NUM_CLASSES == len(classify.CLASS_NAMES) == 10
    assert mnist_infer.ARCHITECTURE == model.ARCHITECTURE
