"""What training and serving share: defined once, imported by both, importing neither.

Imports run one way: ``trainer`` -> ``mnist_common`` <- ``server`` (``bench`` and ``tasks.py``
sit on top and may import all three; tests/test_layout.py checks it).

* ``constants``: the input and output contract (28x28 grey pixels, 10 classes, MNIST's mean
  and standard deviation), repeated in Rust and JS and checked against them by the tests.
* ``paths``: where the repository keeps models, data, reports and the static page.
* ``plan``: the layer plans (architectures as data) and their JSON form in the weights files.
* ``weights``: reading a weights file's metadata without loading a tensor (no PyTorch).
* ``preprocess``: any image -> the 28x28 MNIST-style input, the twin of web/preprocess.js.
* ``samples``: the SQLite store of the labelled drawings the page saves.
"""
