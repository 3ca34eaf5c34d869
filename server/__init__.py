"""The server of ``invoke serve``: the static page of web/, /config.json and the REST API.

* ``app``: the HTTP server, a FastAPI application run by uvicorn (static files, /config.json,
  the weights under /models/, POST /api/predict and /api/mnist, POST/GET /api/samples; the
  API in full: docs/api.md).
* ``classify``: image files -> digits with the native Rust model (``mnist_infer``), and the
  API's predictions payload (``invoke predict``).

Serving imports ``mnist_common`` and never ``trainer``: it runs without PyTorch.
"""
