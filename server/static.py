"""What ``invoke serve`` serves besides the API: the static page of web/, ``/config.json`` and
the listed weights files under ``/models/`` (the policy in full: docs/api.md, "Everything
`invoke serve` answers")."""

from __future__ import annotations

import math
import mimetypes
import os
import stat
import sys
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

import anyio
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from mnist_common.paths import DEFAULT_WEIGHTS as EMBEDDED_WEIGHTS
from mnist_common.paths import MODELS_DIR, WEB_DIR  # noqa: F401 (MODELS_DIR: list_models' usual folder)

#: URL prefix of the listed weights files (``models/<file name>`` relative to the page).
MODELS_PATH = "/models/"
#: Content types added to Python's table, where Starlette's FileResponse looks them up (any
#: other unknown extension: bytes); ``.wasm`` as ``application/wasm`` lets the browser compile
#: the module while it downloads.
CONTENT_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
                 ".json": "application/json", ".svg": "image/svg+xml", ".safetensors": "application/octet-stream"}  # fmt: skip
for suffix, kind in CONTENT_TYPES.items():
    mimetypes.add_type(kind, suffix)


@dataclass(frozen=True)
class ModelListing:
    """The weights files the server offers (``list_models``).

    Attributes:
        entries: config.json's ``models`` list (fields: docs/api.md), embedded one first.
        files: file name, as in each entry's ``url`` after ``models/`` -> the file served.
        embedded: the ``name`` of the embedded entry, None when it is not listed.
    """

    entries: list[dict]
    files: dict[str, Path]
    embedded: str | None


def warn(message: str) -> None:
    """One line on stderr, prefixed ``[serve]``."""
    sys.stderr.write(f"[serve] {' '.join(message.split())}\n")


def list_models(models_dir: Path, embedded: Path | None = EMBEDDED_WEIGHTS) -> ModelListing:
    """Describe every ``*.safetensors`` file directly in ``models_dir`` (not in subfolders, not
    hidden ones) for /config.json, reading only the files' headers (no tensor is loaded).

    ``embedded`` is the weights file the wasm and the native module embed, listed even outside
    ``models_dir`` (a file there of the same name gives way to it, with a warning). The entries'
    fields, names and order: docs/api.md (``/config.json``).

    A file that is not a readable model (not safetensors, no ``architecture``, a bad layer plan:
    ``mnist_common.weights.read_model_metadata``) is left out with one warning line on stderr.

    Raises:
        SystemExit: ``models_dir`` is not a folder.
    """
    if not models_dir.is_dir():
        raise SystemExit(f"the models folder {models_dir} is not a folder")
    files, embedded_file = listed_files(models_dir, embedded)
    entries, served = [], {}
    for name, path in files.items():
        entry = model_entry(name, path)
        if entry is not None:
            entry["embedded"] = name == embedded_file
            entries.append(entry)
            served[name] = path
    embedded_name = name_embedded(entries)
    entries.sort(key=lambda e: (not e["embedded"], e["name"]))
    return ModelListing(entries, served, embedded_name)


def listed_files(models_dir: Path, embedded: Path | None) -> tuple[dict[str, Path], str | None]:
    """The ``*.safetensors`` files of ``list_models`` by file name, with ``embedded`` added when
    it lies outside ``models_dir``; and the embedded one's file name (None: not listed)."""
    files = {
        path.name: path
        for path in sorted(models_dir.iterdir())
        if path.suffix == ".safetensors" and not path.name.startswith(".") and path.is_file()
    }
    if embedded is None:
        return files, None
    target = embedded.resolve()
    found = next((name for name, path in files.items() if path.resolve() == target), None)
    if found is not None:
        return files, found
    if not target.is_file():
        warn(f"the embedded weights {embedded} are not a file: not listed")
        return files, None
    if target.name in files:
        warn(f"{files[target.name]}: not listed, the embedded weights {embedded} have its name")
    files[target.name] = embedded
    return files, target.name


def model_entry(name: str, path: Path) -> dict | None:
    """config.json's entry of one weights file (its ``embedded`` flag excepted), reading only
    its header; None, with a warning on stderr, for a file that is not a readable model."""
    from safetensors import SafetensorError, safe_open

    from mnist_common.plan import ARCHITECTURES
    from mnist_common.weights import WeightsError, read_model_metadata

    try:
        metadata = read_model_metadata(path)
        with safe_open(str(path), framework="numpy") as f:
            parameters = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
        size = path.stat().st_size
    except (WeightsError, SafetensorError, OSError, ValueError) as e:
        reason = str(e) if str(path) in str(e) else f"{path}: {e}"
        warn(f"model not listed, not a readable model file: {reason}")
        return None
    architecture = next((a for a in ARCHITECTURES.values() if a.id == metadata["architecture"]), None)
    return {
        "name": Path(name).stem,  # the embedded one is renamed by name_embedded
        "url": "models/" + quote(name),
        "architecture": metadata["architecture"],
        "summary": architecture.summary if architecture else None,
        "test_accuracy": fraction(metadata.get("test_accuracy")),
        "parameters": int(parameters),
        "bytes": size,
    }


def name_embedded(entries: list[dict]) -> str | None:
    """Rename the embedded entry by its architecture's short name (``cnn``) unless another
    entry has that name; return its name (None: no entry is the embedded one)."""
    from mnist_common.plan import ARCHITECTURES

    for entry in entries:
        if entry["embedded"]:
            short = next((a.name for a in ARCHITECTURES.values() if a.id == entry["architecture"]), None)
            if short and short not in {e["name"] for e in entries if not e["embedded"]}:
                entry["name"] = short
            return entry["name"]
    return None


def fraction(text: str | None) -> float | None:
    """A metadata string holding a number 0..1 (``"0.9931"``) as a float, else None."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if 0 <= value <= 1 else None


def is_models(path: str) -> bool:
    """Paths of the weights files: ``/models/...`` (none other than the listed ones is served)."""
    return path == MODELS_PATH.rstrip("/") or path.startswith(MODELS_PATH)


def is_hidden(path: str) -> bool:
    """Python sources and caches are never served (web/ holds none; a stray one stays hidden)."""
    return path == "/server" or path.startswith("/server/") or path.endswith((".py", ".pyc")) or "__pycache__" in path


def page_config(default_backend: str, backends: list[str], listing: ModelListing) -> dict:
    """The /config.json document: ``{"default", "backends", "embedded", "models"}`` (see the
    fields in docs/api.md). ``invoke build-wasm`` writes it to web/config.json too, for static hosts."""
    return {
        "default": default_backend,
        "backends": list(backends),
        "embedded": listing.embedded,
        "models": listing.entries,
    }


def content_type(path: str | os.PathLike) -> str:
    """The Content-Type of a static file, by its extension (CONTENT_TYPES, then Python's table)."""
    return mimetypes.guess_type(Path(path).name)[0] or "application/octet-stream"


class WebFiles(StaticFiles):
    """web/ as Starlette serves a folder (``index.html`` for a folder, 304 for a fresh copy,
    ranges, content types from CONTENT_TYPES and Python's table), and 405 (``Allow: GET, HEAD``) for another method only
    where the file exists (404 elsewhere)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            exists = await anyio.to_thread.run_sync(self.servable, path)
            raise HTTPException(HTTPStatus.METHOD_NOT_ALLOWED if exists else HTTPStatus.NOT_FOUND)
        return await super().get_response(path, scope)

    def servable(self, path: str) -> bool:
        """Whether a GET of ``path`` (relative to web/) would find a file or a folder's index.html."""
        try:
            _, found = self.lookup_path(path)
            if found is not None and stat.S_ISDIR(found.st_mode):
                _, found = self.lookup_path(os.path.join(path, "index.html"))
        except (OSError, ValueError):  # a name too long, a NUL byte
            return False
        return found is not None and stat.S_ISREG(found.st_mode)


class Site:
    """Every path no API route takes, but /api/: the listed weights files under /models/ (404 for
    any other name there), sources and caches 404, and the static files of web/ (``WebFiles``)."""

    def __init__(self, model_files: dict[str, Path]) -> None:
        self.model_files = model_files
        self.files = WebFiles(directory=WEB_DIR, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]  # percent-decoded by the server, not normalised
        if is_hidden(path):
            raise HTTPException(HTTPStatus.NOT_FOUND)
        if not is_models(path):
            await self.files(scope, receive, send)
            return
        response = await self.model_file(path[len(MODELS_PATH) :], scope["method"])
        await response(scope, receive, send)

    async def model_file(self, name: str, method: str) -> Response:
        """``/models/<name>``: the listed file's bytes (application/octet-stream), or 404 when
        the name is not listed (or the file is gone since the server started)."""
        file = self.model_files.get(name)
        try:
            if file is None:
                raise FileNotFoundError(name)
            stat_result = await anyio.to_thread.run_sync(os.stat, file)
        except OSError:
            raise HTTPException(HTTPStatus.NOT_FOUND) from None
        if method not in ("GET", "HEAD"):
            raise HTTPException(HTTPStatus.METHOD_NOT_ALLOWED)
        return FileResponse(file, stat_result=stat_result, media_type="application/octet-stream")
