"""Benchmarks: what users get, measured against a baseline in the same run.

* ``page``: ``invoke bench``, the wasm builds in headless Chromium against ONNX Runtime Web.
* ``api``: ``invoke bench-api``, POST /api/predict against PyTorch.
* ``train``: ``invoke bench-train``, training with several seeds (mean and spread).
* ``browser``: where Chromium is and the flags the tests and the benchmarks start it with.

A leaf: it may import ``trainer``, ``server`` and ``mnist_common``; none of them imports it.
"""
