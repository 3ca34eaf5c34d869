"""What one server answers with (``Settings``), made from ``make_server``'s arguments and
carried to uvicorn's worker processes as JSON in an environment variable."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mnist_common.paths import DEFAULT_WEIGHTS as EMBEDDED_WEIGHTS
from mnist_common.paths import MODELS_DIR
from mnist_common.samples import DEFAULT_DB

from .middleware import MAX_BODY
from .native import Building, ClassifyPixels, UncertaintyFn
from .static import list_models, page_config

#: The environment variable that carries ``Settings`` (as JSON) to uvicorn's worker processes.
SETTINGS_ENV = "MNIST_SERVE_SETTINGS"

#: The settings that are callables of this process: they cannot reach worker processes.
IN_PROCESS = ("classify_pixels", "uncertainty", "building")


@dataclass
class Settings:
    """What one server answers with; everything but the callables travels to worker processes
    (``to_env``/``from_env``).

    Attributes:
        config: the /config.json document (``page_config``); ``invoke serve`` updates its
            ``backends`` as background builds finish (the answer follows, in this process).
        model_files: file name -> weights file served at ``/models/<file name>``.
        samples_db: the SQLite file of /api/samples, opened (created) on first use.
        max_body: largest request body in bytes (413 above).
        log_requests: one access-log line per request (errors are logged regardless).
        classify_pixels: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities; None:
            ``mnist_infer.predict``, imported on the first request (503 while it is not built).
        uncertainty: ``UncertaintyFn`` for ``?samples=N``; None: ``mnist_infer.uncertainty``.
        building: while the native module is not importable, what builds it and for how long
            (``Building``), for the 503 answers; None: nothing is.
    """

    config: dict
    model_files: dict[str, Path]
    samples_db: Path = DEFAULT_DB
    max_body: int = MAX_BODY
    log_requests: bool = True
    classify_pixels: ClassifyPixels | None = None
    uncertainty: UncertaintyFn | None = None
    building: Building | None = None

    def to_env(self) -> str:
        """The settings as JSON for ``SETTINGS_ENV``.

        Raises:
            ValueError: a callable is set (it cannot reach another process).
        """
        given = [name for name in IN_PROCESS if getattr(self, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot be passed to worker processes")
        return json.dumps(
            {
                "config": self.config,
                "model_files": {name: str(path) for name, path in self.model_files.items()},
                "samples_db": str(self.samples_db),
                "max_body": self.max_body,
                "log_requests": self.log_requests,
            }
        )

    @classmethod
    def from_env(cls, text: str) -> Settings:
        """The settings ``to_env`` wrote."""
        document = json.loads(text)
        return cls(
            config=document["config"],
            model_files={name: Path(path) for name, path in document["model_files"].items()},
            samples_db=Path(document["samples_db"]),
            max_body=int(document["max_body"]),
            log_requests=bool(document["log_requests"]),
        )


def make_settings(
    default_backend: str,
    backends: list[str],
    classify_pixels: ClassifyPixels | None = None,
    max_body: int = MAX_BODY,
    *,
    uncertainty: UncertaintyFn | None = None,
    models_dir: Path | None = None,
    embedded: Path | None = None,
    samples_db: Path | None = None,
    log_requests: bool = True,
    building: Building | None = None,
) -> Settings:
    """``Settings`` from ``make_server``'s arguments (see there): lists the models folder now.

    Raises:
        SystemExit: ``models_dir`` is not a folder.
    """
    listing = list_models(
        MODELS_DIR if models_dir is None else Path(models_dir), EMBEDDED_WEIGHTS if embedded is None else Path(embedded)
    )
    return Settings(
        config=page_config(default_backend, backends, listing),
        model_files=listing.files,
        samples_db=DEFAULT_DB if samples_db is None else Path(samples_db),
        max_body=max_body,
        log_requests=log_requests,
        classify_pixels=classify_pixels,
        uncertainty=uncertainty,
        building=building,
    )
