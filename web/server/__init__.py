"""The Python side of the page: everything that runs on a server, none of it served.

web/ holds the static page (plain ES modules, the wasm builds in web/pkg/); this package serves
it and answers its API. The data flows trainer/ -> models/*.safetensors -> wasm-infer/ -> web/;
this package is the last step's server half:

* ``app``: the dev server of ``invoke serve`` (static files, /config.json, the weights under
  /models/, POST /api/predict, POST/GET /api/samples).
* ``samples``: the SQLite store of the labelled drawings the page saves.
* ``preprocess``: any image -> the 28x28 MNIST-style input, the twin of web/preprocess.js (the
  evaluation's redrawn digits go through it too, so they are scored as the page sees them).
* ``classify``: image files -> digits with the native Rust model (``mnist_infer``) or PyTorch
  (``invoke predict``, and the API's predictions payload).
* ``bench_page`` and ``bench_api``: ``invoke bench`` (wasm builds against ONNX Runtime Web in
  headless Chromium) and ``invoke bench-api`` (the API against PyTorch).
* ``browser``: where Chromium is and the flags the tests and the benchmark start it with.
"""
