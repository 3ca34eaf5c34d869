"""The model's input and output contract, shared by Python, Rust and JS.

Rust repeats these in ``wasm-infer/mnist-model`` (``INPUT_LEN``, ``NUM_CLASSES``) and JS in
``web/preprocess.js`` (``MNIST_SIZE``); tests/test_layout.py checks that the copies agree.
"""

#: Side of the model's input image in pixels: MNIST's 28x28 (LeCun et al., 1998).
IMAGE_SIZE = 28
#: Pixels of one input image, row-major: 784.
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
#: Output classes: the digits 0..9.
NUM_CLASSES = 10
#: The classes' names, by label (the API's ``class_name``).
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Mean and standard deviation of the MNIST training pixels scaled to [0, 1], as used by
#: PyTorch's examples/mnist (``transforms.Normalize((0.1307,), (0.3081,))``). Written into the
#: safetensors metadata by ``trainer.export``; the Rust crate reads them from there.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
