"""The PyTorch side: MNIST data, the model, training, export to safetensors, and evaluation.

Data flows trainer/ -> ``models/model.safetensors`` -> wasm-infer/ (Rust, burn) -> web/.

* ``data``: MNIST (IDX files, md5-checked) and the drawings collected by the page.
* ``model``: the PyTorch modules of a layer plan (``mnist_common.plan``).
* ``augment``: the training augmentation and the fixed augmented test set.
* ``train``: the training run (``invoke train``); ``export``: the weights file.
* ``uncertainty``: MC dropout and the "not sure" threshold.
* ``fixtures``: the parity fixture the Rust tests read.
* ``evaluation``: ``invoke evaluate`` (one model, all models, teaching a hand).
* ``synthetic``: test sets drawn with the page's pen (redrawn MNIST, synthetic writers, scribbles).
"""
