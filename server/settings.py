"""What one server answers with (``Settings``), made from ``make_server``'s arguments and
carried to uvicorn's worker processes as JSON in an environment variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mnist_common.paths import DEFAULT_WEIGHTS as EMBEDDED_WEIGHTS
from mnist_common.paths import MODELS_DIR
from mnist_common.samples import DEFAULT_DB

from .middleware import MAX_BODY
from .native import Building, ClassifyPixels, NotADigitFn, UncertaintyFn
from .static import list_models, page_config

#: The environment variable that carries ``Settings`` (as JSON) to uvicorn's worker processes.
SETTINGS_ENV = "MNIST_SERVE_SETTINGS"
#: The settings that are callables of this process: they cannot reach worker processes.
IN_PROCESS = ("classify_pixels", "uncertainty", "not_a_digit", "building")


class Settings(BaseModel):
    """What one server answers with; everything but the callables (IN_PROCESS) travels to worker
    processes (``to_env``; ``Settings.model_validate_json`` reads it back).

    Attributes:
        config: the /config.json document (``static.page_config``); ``invoke serve`` updates its
            ``backends`` as background builds finish (the answer follows, in this process).
        model_files: file name -> weights file served at ``/models/<file name>``.
        samples_db: the SQLite file of /api/samples, opened (created) on first use.
        max_body: largest request body in bytes (413 above).
        log_requests: one access-log line per request (errors are logged regardless).
        classify_pixels: (N, 784) float32 pixels 0..255 -> (N, 10) probabilities; None:
            ``mnist_infer.predict``, imported on the first request (503 while it is not built).
        uncertainty: ``UncertaintyFn`` for ``?samples=N``; None: ``mnist_infer.uncertainty``.
        not_a_digit: ``NotADigitFn`` for every answer's ``not_a_digit``; None: the rule that goes
            with ``classify_pixels``: ``mnist_infer.not_a_digit`` (the embedded model's) when
            that is None too, and none at all (``native.no_rule``: null) for a
            ``classify_pixels`` of its own, whose model's rule this server does not know.
        building: while the native module is not importable, what builds it and for how long
            (``native.Building``), for the 503 answers; None: nothing is.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    config: dict
    model_files: dict[str, Path]
    samples_db: Path = DEFAULT_DB
    max_body: int = MAX_BODY
    log_requests: bool = True
    classify_pixels: ClassifyPixels | None = None
    uncertainty: UncertaintyFn | None = None
    not_a_digit: NotADigitFn | None = None
    building: Building | None = None

    def to_env(self) -> str:
        """The settings as JSON for ``SETTINGS_ENV``.

        Raises:
            ValueError: a callable is set (it cannot reach another process).
        """
        given = [name for name in IN_PROCESS if getattr(self, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot be passed to worker processes")
        return self.model_dump_json(exclude=set(IN_PROCESS))


def make_settings(
    default_backend: str,
    backends: list[str],
    classify_pixels: ClassifyPixels | None = None,
    max_body: int = MAX_BODY,
    *,
    models_dir: Path | None = None,
    embedded: Path | None = None,
    samples_db: Path | None = None,
    **options,
) -> Settings:
    """``Settings`` from ``make_server``'s arguments: lists the models folder now.

    Args:
        default_backend, backends: what ``/config.json`` tells the page.
        classify_pixels, max_body: as ``Settings``; so are ``options`` (``uncertainty``,
            ``not_a_digit``, ``log_requests``, ``building``).
        models_dir: the folder whose ``*.safetensors`` files /config.json lists and /models/
            serves (None: the repo's models/). Listed once, here: see ``static.list_models``.
        embedded: the weights file the wasm and the native module embed, flagged and named by
            its architecture in the listing (None: the repo's models/model.safetensors).
        samples_db: the SQLite file of /api/samples (None: the repo's data/samples.db); opened,
            created if missing, on the first samples request, not here (503 while it cannot be).

    Raises:
        SystemExit: ``models_dir`` is not a folder.
    """
    listing = list_models(Path(models_dir or MODELS_DIR), Path(embedded or EMBEDDED_WEIGHTS))
    return Settings(
        config=page_config(default_backend, backends, listing),
        model_files=listing.files,
        samples_db=Path(samples_db or DEFAULT_DB),
        max_body=max_body,
        classify_pixels=classify_pixels,
        **options,
    )
