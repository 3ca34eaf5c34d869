"""Drawn digits collected from the page, in a SQLite database (``data/samples.db`` by default).

One table, ``samples``, one row per drawing::

    id          INTEGER PRIMARY KEY   assigned by the database: 1, 2, 3, ... in insertion order
    created_at  TEXT      UTC, ISO-8601 with milliseconds, JavaScript's toISOString() form:
                          "2026-11-22T10:11:12.345Z"
    label       INTEGER   the digit the writer meant, 0..9
    predicted   INTEGER   what the model said, 0..9, or NULL
    model       TEXT      the model that predicted (the page's model name), or NULL
    writer      TEXT      who drew it (a name or pseudonym), or NULL
    pixels      BLOB      784 bytes: the 28x28 uint8 image, row-major, ink = 255 (MNIST's form)
    strokes     TEXT      JSON: a list of strokes, each a list of [x, y, t_ms] points, x and y in
                          canvas px, t_ms in milliseconds (>= 0)
    pen_width   REAL      the pen's width in canvas px (> 0)
    canvas_width, canvas_height  INTEGER  the canvas size in px

A *sample*, as ``SampleStore.add`` takes it and as ``POST /api/samples`` receives it, is a dict
(a JSON object) with these keys::

    {"label": 0..9, "pixels": [784 numbers 0..255], "strokes": [[[x, y, t_ms], ...], ...],
     "pen_width": number > 0, "canvas": [width, height],
     optional: "writer": text or null, "predicted": 0..9 or null, "model": text or null,
               "created_at": "YYYY-MM-DDTHH:MM:SS.mmmZ" (default: now)}

and ``SampleStore.page`` gives each one back with its ``id`` and ``created_at`` added: pixels as
784 ints, strokes as they were sent (the same numbers), ``canvas`` as [width, height].

Durability: WAL mode (``PRAGMA journal_mode=WAL``) with ``PRAGMA synchronous=FULL``. Every write
is one transaction; ``add`` returns only after its commit, and with FULL the commit fsyncs the
write-ahead log, so a sample whose id was returned (a 201 from the server) survives the process
being killed at any moment *and* a power cut or OS crash. NORMAL with WAL would also survive a
killed process (the WAL is in the OS's cache, which a killed process does not lose), but its
last commits can roll back on power loss: a page that was told "saved" must not lose the digit,
and one fsync per hand-drawn digit costs nothing worth saving. A commit that did not finish is
rolled back when the database is next opened: a sample is there whole or not at all.

Threads and processes: a ``SampleStore`` holds only the path. Every call opens its own
connection, uses it for one transaction and closes it (``SampleStore.connect``), so any number of
threads (the server's thread pool) and processes (``invoke serve --workers N``) can share one
file; SQLite serialises the writers (each waits up to BUSY_TIMEOUT seconds for the lock), readers
never wait in WAL mode, and ``open_store`` retries the switch to WAL and migrates under the
write lock, so processes opening a new file at once all get it, created once. Opening a
connection costs tens of microseconds.

Schema versions: ``PRAGMA user_version`` holds the schema version (0 for a new, empty file);
``open_store`` applies ``MIGRATIONS[v:]`` in order, each in its own transaction together with
the version bump, so an interrupted migration leaves the file at the last version it finished.
A file of a newer version than this code knows is refused (``StoreError``) and left untouched.

Export: ``export_npz`` writes a NumPy ``.npz`` file (``np.load(path)`` reads it, no pickle)::

    pixels    (N, 28, 28) uint8    the images, ink = 255
    labels    (N,) int64           0..9
    metadata  (M,) uint8           UTF-8 JSON: {"format": "mnist-wasm-samples", "version": 1,
                                   "samples": [N objects {"created_at", "predicted", "model",
                                   "writer", "strokes", "pen_width", "canvas"}]}
                                   (json.loads(bytes(npz["metadata"])))

in id order. ``import_npz`` adds the samples of such a file, skipping exact duplicates: a sample
whose every field (ids aside) equals one already in the database, or one earlier in the file.
So importing a file twice, or merging exports of databases that share samples, adds each
drawing once. Ids are not carried over (the receiving database numbers its rows); everything
else is: exporting an import into an empty database gives the same arrays and metadata.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sqlite3
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .constants import IMAGE_SIZE as SIDE
from .constants import NUM_PIXELS
from .paths import SAMPLES_DB as DEFAULT_DB

# DEFAULT_DB: where ``invoke serve`` and ``invoke samples`` keep the samples unless told
# otherwise. The image: SIDE x SIDE (28x28) uint8, row-major.
#: Bounds on one sample (the server's body limit, 2 MB, bounds it too).
MAX_STROKES = 1000
MAX_POINTS = 100_000  # points over all strokes
MAX_CANVAS_SIDE = 10_000  # px, for the canvas and the pen width
MAX_TEXT = 200  # characters of writer and model
#: Seconds a connection waits for another one's write lock before giving up (StoreError).
BUSY_TIMEOUT = 10.0

REQUIRED = ("label", "pixels", "strokes", "pen_width", "canvas")
OPTIONAL = ("writer", "predicted", "model", "created_at")
CREATED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")

EXPORT_FORMAT = "mnist-wasm-samples"
EXPORT_VERSION = 1
#: The row's columns, in the order ``_row`` reads them.
COLUMNS = "id, created_at, label, predicted, model, writer, pixels, strokes, pen_width, canvas_width, canvas_height"


class StoreError(Exception):
    """The database cannot be used: the file cannot be created or opened (a folder in its
    place, an unwritable folder, not a SQLite file), it is of a newer schema version, or SQLite
    failed (disk full, locked for longer than BUSY_TIMEOUT). The message names the file."""


# --- schema ---------------------------------------------------------------------------------


def _v1_samples_table(db: sqlite3.Connection) -> None:
    """Version 1: the samples table (see the module docstring) and an index on created_at
    (``import_npz``'s duplicate check looks samples up by it)."""
    db.execute("""
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL CHECK (typeof(created_at) = 'text' AND length(created_at) = 24),
            label INTEGER NOT NULL CHECK (typeof(label) = 'integer' AND label BETWEEN 0 AND 9),
            predicted INTEGER CHECK (predicted IS NULL
                                     OR (typeof(predicted) = 'integer' AND predicted BETWEEN 0 AND 9)),
            model TEXT CHECK (model IS NULL OR typeof(model) = 'text'),
            writer TEXT CHECK (writer IS NULL OR typeof(writer) = 'text'),
            pixels BLOB NOT NULL CHECK (typeof(pixels) = 'blob' AND length(pixels) = 784),
            strokes TEXT NOT NULL CHECK (typeof(strokes) = 'text'),
            pen_width REAL NOT NULL CHECK (typeof(pen_width) = 'real' AND pen_width > 0),
            canvas_width INTEGER NOT NULL CHECK (typeof(canvas_width) = 'integer' AND canvas_width > 0),
            canvas_height INTEGER NOT NULL CHECK (typeof(canvas_height) = 'integer' AND canvas_height > 0)
        )""")
    db.execute("CREATE INDEX samples_created_at ON samples (created_at)")


#: Migration i takes a database from schema version i to i + 1 (it runs inside a transaction:
#: DDL is transactional in SQLite). Append new ones; never edit a published one.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1_samples_table]
#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


def open_store(path: Path | str = DEFAULT_DB, *, create: bool = True) -> SampleStore:
    """The store at ``path``, created (with its folder) when missing and ``create`` is true,
    brought to the current schema version by ``MIGRATIONS`` and switched to WAL mode.

    Raises:
        StoreError: the file is missing and ``create`` is false; it cannot be created or opened
            (its folder cannot be made or written, a folder or a non-SQLite file in its place);
            its schema version is newer than this code's (the file is left untouched); it has
            tables but no schema version (another application's database); a migration failed
            (the file stays at the last version that finished).
    """
    path = Path(path)
    if not create and not path.is_file():
        raise StoreError(f"no sample database at {path}")
    if path.is_dir():
        raise StoreError(f"cannot use {path} as the sample database: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the folder of the sample database {path}: {e.strerror or e}") from None
    store = SampleStore(path)
    with store.connect(create=True) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]  # refuse a newer file before touching it
        if version > len(MIGRATIONS):
            raise _newer(path, version)
        mode = _wal(db)  # stored in the file, once for all
        if mode.lower() != "wal":
            raise StoreError(f"the sample database {path} cannot use WAL mode (journal mode {mode!r})")
        _migrate(db, path)
    return store


def _wal(db: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode=WAL``; returns the journal mode now in force.

    Switching a new file to WAL takes its exclusive lock, and SQLite answers "database is
    locked" at once, without waiting BUSY_TIMEOUT, when two connections try it together (the
    workers of ``invoke serve --workers N`` opening a new file): so it is retried here, for up
    to BUSY_TIMEOUT seconds.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.005)


def _newer(path: Path, version: int) -> StoreError:
    return StoreError(
        f"the sample database {path} has schema version {version}, newer than this code's "
        f"{len(MIGRATIONS)}: it was written by a newer version of this project; update the code "
        "(the file was not changed)"
    )


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations from the file's version to SCHEMA_VERSION, one transaction each."""
    target = len(MIGRATIONS)
    while True:
        db.execute("BEGIN IMMEDIATE")  # the write lock first: a second opener waits, then sees the new version
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > target:
                raise _newer(path, version)
            if version == target:
                db.execute("COMMIT")
                return
            if version == 0:
                tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                if tables:
                    raise StoreError(
                        f"{path} is not a sample database: it has tables ({', '.join(tables[:5])}) "
                        "but no schema version"
                    )
            try:
                MIGRATIONS[version](db)
            except sqlite3.Error as e:
                raise StoreError(
                    f"migrating the sample database {path} from schema version {version} "
                    f"to {version + 1} failed ({e}); it stays at version {version}"
                ) from None
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


class ImportResult(NamedTuple):
    """What ``import_npz`` did: ``added`` new samples, ``duplicates`` skipped ones."""

    added: int
    duplicates: int


class SampleStore:
    """The samples in the SQLite file ``path`` (made by ``open_store``, which creates and
    migrates it; the constructor itself touches nothing). Safe to share between threads: every
    method opens its own connection (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @contextmanager
    def connect(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        """A new connection for one piece of work, closed at the end of the ``with``; the file
        must exist unless ``create`` (a database deleted under a running server is not silently
        made again, empty and without a schema).

        In autocommit mode (``isolation_level=None``): callers write in explicit
        ``BEGIN IMMEDIATE`` ... ``COMMIT`` transactions (``_write``). ``synchronous=FULL`` is set
        here because it is a per-connection setting (the WAL mode is stored in the file).
        sqlite3 errors inside the block become StoreError naming the file.
        """
        try:
            uri = f"{self.path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
            db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the sample database {self.path}: {e}") from None
        with closing(db):
            try:
                db.execute("PRAGMA synchronous=FULL")
                yield db
            except sqlite3.Error as e:
                raise StoreError(f"the sample database {self.path} failed: {e}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction: committed if the block ends normally, rolled
        back if it raises."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- writing ---------------------------------------------------------------------------

    def add(self, sample: dict) -> int:
        """Validate ``sample`` (see the module docstring), store it, return its id (>= 1).

        The sample is on disk when this returns (committed, synchronous=FULL). Pixels are
        stored as uint8, rounded half up (as JavaScript's Math.round): the page's preprocessing
        gives fractions. ``created_at`` is now (UTC) unless the sample carries one.

        Raises:
            ValueError: the sample is not valid; the message names the field and the problem.
            StoreError: the database failed (503 from the server).
        """
        row = validate(sample)
        with self._write() as db:
            return db.execute(INSERT, row).lastrowid

    def import_npz(self, path: Path | str) -> ImportResult:
        """Add the samples of an ``export_npz`` file, skipping exact duplicates (module docstring).

        All or nothing: every sample is checked before the one transaction that adds them.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not such a file (not an npz, missing or mis-shaped arrays, metadata of
                another format or a newer version), or a sample in it is not valid (the message
                names its index).
            StoreError: the database failed.
        """
        rows = read_npz(path)
        added = 0
        with self._write() as db:
            for row in rows:
                duplicate = db.execute(
                    "SELECT 1 FROM samples WHERE created_at = ? AND label = ? AND predicted IS ? AND model IS ? "
                    "AND writer IS ? AND pixels = ? AND strokes = ? AND pen_width = ? AND canvas_width = ? "
                    "AND canvas_height = ? LIMIT 1",
                    row,
                ).fetchone()
                if duplicate is None:
                    db.execute(INSERT, row)
                    added += 1
        return ImportResult(added, len(rows) - added)

    # --- reading ---------------------------------------------------------------------------

    def page(self, after_id: int = 0, limit: int = 100) -> list[dict]:
        """Up to ``limit`` samples (1..) with ids above ``after_id`` (>= 0), in id order, as
        dicts: the keys of a sample plus ``id`` and ``created_at``; pixels a list of 784 ints
        0..255, strokes the list of strokes, canvas [width, height]. Pass the last id seen as
        ``after_id`` for the next page; an empty list means there is no more.

        Raises:
            ValueError: ``after_id`` < 0 or ``limit`` < 1 (or not integers).
            StoreError: the database failed.
        """
        _check_paging(after_id, limit)
        with self.connect() as db:
            return _page(db, after_id, limit)

    def browse(self, after_id: int = 0, limit: int = 100) -> dict:
        """``GET /api/samples``'s answer, read in one snapshot: ``{"samples": page(after_id,
        limit), "next": the last id of this page when more samples follow it, else None,
        "total": count()}`` (errors as ``page``)."""
        _check_paging(after_id, limit)
        with self.connect() as db:
            db.execute("BEGIN")  # one read snapshot for the page and the count
            try:
                samples = _page(db, after_id, limit + 1)
                total = db.execute("SELECT count(*) FROM samples").fetchone()[0]
            finally:
                db.execute("COMMIT")
        more = len(samples) > limit
        samples = samples[:limit]
        return {"samples": samples, "next": samples[-1]["id"] if more else None, "total": total}

    def arrays(self) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Every sample, in id order, as a test set: images (N, 28, 28) uint8 (ink = 255),
        labels (N,) int64 0..9 and the N writers (None where none was given).

        Raises:
            StoreError: the database failed.
        """
        images, labels, writers, after = [], [], [], 0
        while batch := self.page(after, 1000):
            for sample in batch:
                images.append(np.asarray(sample["pixels"], dtype=np.uint8).reshape(28, 28))
                labels.append(sample["label"])
                writers.append(sample["writer"])
            after = batch[-1]["id"]
        images = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
        return images, np.asarray(labels, dtype=np.int64), writers

    def count(self) -> int:
        """How many samples the database holds."""
        with self.connect() as db:
            return db.execute("SELECT count(*) FROM samples").fetchone()[0]

    def label_counts(self) -> dict[int, int]:
        """Samples per label, {0: n0, ..., 9: n9} (every label, 0 where there is none)."""
        counts = dict.fromkeys(range(10), 0)
        with self.connect() as db:
            counts.update(db.execute("SELECT label, count(*) FROM samples GROUP BY label"))
        return counts

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: "ok", or SQLite's description of the damage."""
        with self.connect() as db:
            return "\n".join(r[0] for r in db.execute("PRAGMA integrity_check"))

    def export_npz(self, path: Path | str) -> int:
        """Write every sample, in id order, to the ``.npz`` file ``path`` (format in the module
        docstring; written to ``path + ".tmp"`` and renamed, so a reader never sees half a file);
        returns how many. An empty database gives a file with N = 0.

        Raises:
            OSError: the file cannot be written (its folder missing, say).
            StoreError: the database failed.
        """
        path = Path(path)
        with self.connect() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM samples ORDER BY id").fetchall()  # one snapshot
        pixels = np.frombuffer(b"".join(r[6] for r in rows), dtype=np.uint8).reshape(len(rows), SIDE, SIDE)
        labels = np.array([r[2] for r in rows], dtype=np.int64)
        metadata = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "samples": [
                {
                    "created_at": r[1],
                    "predicted": r[3],
                    "model": r[4],
                    "writer": r[5],
                    "strokes": json.loads(r[7]),
                    "pen_width": r[8],
                    "canvas": [r[9], r[10]],
                }
                for r in rows
            ],
        }
        encoded = np.frombuffer(json.dumps(metadata, separators=(",", ":")).encode(), dtype=np.uint8)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with open(temporary, "wb") as f:
                np.savez_compressed(f, pixels=pixels, labels=labels, metadata=encoded)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return len(rows)


INSERT = (
    "INSERT INTO samples (created_at, label, predicted, model, writer, pixels, strokes, pen_width, "
    "canvas_width, canvas_height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _check_paging(after_id: int, limit: int) -> None:
    for name, value, low in (("after_id", after_id, 0), ("limit", limit, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _page(db: sqlite3.Connection, after_id: int, limit: int) -> list[dict]:
    rows = db.execute(f"SELECT {COLUMNS} FROM samples WHERE id > ? ORDER BY id LIMIT ?", (int(after_id), int(limit)))
    return [_row(r) for r in rows]


def _row(r: tuple) -> dict:
    return {
        "id": r[0],
        "created_at": r[1],
        "label": r[2],
        "predicted": r[3],
        "model": r[4],
        "writer": r[5],
        "pixels": list(r[6]),
        "strokes": json.loads(r[7]),
        "pen_width": r[8],
        "canvas": [r[9], r[10]],
    }


# --- validation -----------------------------------------------------------------------------


def now() -> str:
    """The current UTC time as ``created_at`` text: "2026-11-22T10:11:12.345Z"."""
    t = datetime.now(timezone.utc)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    """A number that is finite as a float: not NaN or infinite, nor an integer too large for a
    float (JSON allows 10**400; math.isfinite would raise OverflowError on it)."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _digit(value: object, name: str, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if not _is_integer(value) or not 0 <= value <= 9:
        allowed = "an integer 0..9 or null" if nullable else "an integer 0..9"
        raise ValueError(f"{name} must be {allowed}, got {_short(value)}")
    return int(value)


def _text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT:
        raise ValueError(f"{name} must be null or a text of 1..{MAX_TEXT} characters, got {_short(value)}")
    return value


def _pixels(value: object) -> bytes:
    """784 numbers 0..255 (a list, or an array of 784 or 28x28) -> 784 bytes, rounded half up."""
    if isinstance(value, np.ndarray):
        if value.size != NUM_PIXELS or value.shape not in ((NUM_PIXELS,), (SIDE, SIDE)):
            raise ValueError(
                f"pixels must be {NUM_PIXELS} numbers (28x28, row-major), got an array of shape {value.shape}"
            )
        if value.dtype == np.uint8:
            image = value.reshape(NUM_PIXELS)
        elif value.dtype.kind in "iuf":
            values = value.reshape(NUM_PIXELS).astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 255))
            if bad.size:
                raise ValueError(f"pixels[{bad[0]}] is {values[bad[0]]!r}, not a number in 0..255")
            image = np.floor(values + 0.5).astype(np.uint8)
        else:
            raise ValueError(f"pixels must be numbers, got an array of {value.dtype}")
    else:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"pixels must be a list of {NUM_PIXELS} numbers 0..255, got {_short(value)}")
        if len(value) != NUM_PIXELS:
            raise ValueError(f"pixels must hold {NUM_PIXELS} numbers (28x28, row-major), got {len(value)}")
        for i, v in enumerate(value):
            if not _is_finite(v) or not 0 <= v <= 255:
                raise ValueError(f"pixels[{i}] is {_short(v)}, not a number in 0..255")
        image = np.floor(np.asarray(value, dtype=np.float64) + 0.5).astype(np.uint8)
    if not image.any():
        raise ValueError("pixels are all 0: a blank drawing is not a sample")
    return image.tobytes()


def _strokes(value: object) -> str:
    """A list of strokes, each a list of [x, y, t_ms] -> its JSON text (compact, the numbers as
    given: ints stay ints)."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_STROKES:
        raise ValueError(
            f"strokes must be a list of 1..{MAX_STROKES} strokes, each a list of [x, y, t_ms] "
            f"points, got {_short(value)}"
        )
    strokes, points = [], 0
    for i, stroke in enumerate(value):
        if not isinstance(stroke, (list, tuple)) or not stroke:
            raise ValueError(f"strokes[{i}] must be a non-empty list of [x, y, t_ms] points, got {_short(stroke)}")
        points += len(stroke)
        if points > MAX_POINTS:
            raise ValueError(f"strokes hold more than {MAX_POINTS} points")
        checked = []
        for j, point in enumerate(stroke):
            if not isinstance(point, (list, tuple)) or len(point) != 3 or not all(_is_finite(v) for v in point):
                raise ValueError(f"strokes[{i}][{j}] must be [x, y, t_ms], three finite numbers, got {_short(point)}")
            if point[2] < 0:
                raise ValueError(f"strokes[{i}][{j}] has t_ms {_short(point[2])}; times are >= 0")
            checked.append([v.item() if isinstance(v, np.generic) else v for v in point])
        strokes.append(checked)
    return json.dumps(strokes, separators=(",", ":"))


def _canvas(value: object) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_integer(v) and 1 <= v <= MAX_CANVAS_SIDE for v in value)
    ):
        raise ValueError(f"canvas must be [width, height], two integers 1..{MAX_CANVAS_SIDE} (px), got {_short(value)}")
    return int(value[0]), int(value[1])


def _created_at(value: object) -> str:
    if value is None:
        return now()
    message = f'created_at must be UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ" (toISOString()), got {_short(value)}'
    if not isinstance(value, str) or not CREATED_AT.fullmatch(value):
        raise ValueError(message)
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise ValueError(message) from None
    return value


def validate(sample: object) -> tuple:
    """A sample dict -> the row ``INSERT`` takes: (created_at, label, predicted, model, writer,
    pixels bytes, strokes JSON, pen_width, canvas_width, canvas_height).

    Raises:
        ValueError: not a dict; a required key missing or an unknown key; a value of the wrong
            type or out of range (see the module docstring); all pixels 0. The message names
            the field (``pixels[12]``, ``strokes[0][3]``).
    """
    if not isinstance(sample, dict):
        raise ValueError(f"a sample is an object with {', '.join(REQUIRED)}; got {_short(sample)}")
    missing = [k for k in REQUIRED if k not in sample]
    if missing:
        raise ValueError(f"the sample has no {', '.join(missing)} (required: {', '.join(REQUIRED)})")
    unknown = [k for k in sample if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValueError(f"unknown field {_short(unknown[0])} (fields: {', '.join(REQUIRED + OPTIONAL)})")
    pen_width = sample["pen_width"]
    if not _is_finite(pen_width) or not 0 < pen_width <= MAX_CANVAS_SIDE:
        raise ValueError(f"pen_width must be a number of px in (0, {MAX_CANVAS_SIDE}], got {_short(pen_width)}")
    width, height = _canvas(sample["canvas"])
    return (
        _created_at(sample.get("created_at")),
        _digit(sample["label"], "label", nullable=False),
        _digit(sample.get("predicted"), "predicted", nullable=True),
        _text(sample.get("model"), "model"),
        _text(sample.get("writer"), "writer"),
        _pixels(sample["pixels"]),
        _strokes(sample["strokes"]),
        float(pen_width),
        width,
        height,
    )


# --- the export file ------------------------------------------------------------------------


def read_npz(path: Path | str) -> list[tuple]:
    """An ``export_npz`` file -> its samples as validated rows (``validate``), in file order.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not such a file, or an invalid sample (named by its index in the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and say so
        raise ValueError(f"{path} is not a samples .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as e:  # not a zip, a truncated one, a pickled array
        raise ValueError(f"{path} is not a samples .npz file ({e})") from None
    missing = [n for n in ("pixels", "labels", "metadata") if n not in arrays]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} array (it holds {', '.join(arrays) or 'none'})")
    pixels, labels, encoded = arrays["pixels"], arrays["labels"], arrays["metadata"]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"{path}: pixels must be (N, 28, 28) uint8, got {pixels.shape} {pixels.dtype}")
    if labels.shape != (len(pixels),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be ({len(pixels)},) integers, got {labels.shape} {labels.dtype}")
    if encoded.dtype != np.uint8 or encoded.ndim != 1:
        raise ValueError(
            f"{path}: metadata must be UTF-8 JSON as a 1-D uint8 array, got {encoded.shape} {encoded.dtype}"
        )
    try:
        metadata = json.loads(encoded.tobytes())
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: metadata is not UTF-8 JSON ({e})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: metadata is not of the {EXPORT_FORMAT!r} format")
    version = metadata.get("version")
    if not _is_integer(version) or not 1 <= version <= EXPORT_VERSION:
        raise ValueError(f"{path}: export version {version!r}; this code reads 1..{EXPORT_VERSION}")
    entries = metadata.get("samples")
    if not isinstance(entries, list) or len(entries) != len(pixels):
        count = len(entries) if isinstance(entries, list) else _short(entries)
        raise ValueError(f"{path}: {len(pixels)} images but metadata for {count} samples")
    rows = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: sample {i}: metadata is not an object: {_short(entry)}")
        extra = {k for k in ("label", "pixels") if k in entry}
        if extra:
            raise ValueError(f"{path}: sample {i}: metadata holds {', '.join(sorted(extra))}, which are arrays")
        if entry.get("created_at") is None:
            raise ValueError(f"{path}: sample {i} has no created_at")
        try:
            rows.append(validate({**entry, "label": int(labels[i]), "pixels": pixels[i]}))
        except ValueError as e:
            raise ValueError(f"{path}: sample {i}: {e}") from None
    return rows
