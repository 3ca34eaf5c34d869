"""The server of ``invoke serve``: the static page of web/, /config.json and the REST API (in
full: docs/api.md), a FastAPI application run by uvicorn.

* ``app``: the application and its launching (``make_server``, ``serve``); ``settings``.
* ``api``: the routes; ``schemas``: their pydantic documents; ``errors``: the JSON errors;
  ``middleware``: the headers of every answer and the body limit; ``native``: ``mnist_infer``.
* ``static``: web/, the weights under /models/ and the /config.json listing.
* ``classify``: image files -> digits with the native Rust model (``invoke predict``), and the
  API's predictions payload.

Serving imports ``mnist_common`` and never ``trainer``: it runs without PyTorch.
"""
