"""How good a model is, measured: ``invoke evaluate`` and ``invoke personalize``.

* ``evaluate``: one model on clean, augmented, redrawn and writer-separated test sets (report,
  plots).
* ``compare``: every model in models/ side by side (``invoke evaluate --all``).
* ``personalize``: the page's "Teach it" refit, measured on synthetic writers.
"""
