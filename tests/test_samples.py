"""The sample collection: mnist_common/samples.py (SQLite store, schema migrations, npz export/import)
and its HTTP side in server/app.py (POST/GET /api/samples), down to a server killed with
SIGKILL while samples are being written."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_common import samples as samples_module
from mnist_common.samples import SCHEMA_VERSION, SampleStore, StoreError, open_store
from server.app import make_server

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20  # seconds a test request may take
CREATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def make_sample(i: int = 0, **changes) -> dict:
    """A valid sample, different for every ``i``: integer pixels (so they are stored exactly),
    two strokes with int and float coordinates, every optional field set."""
    rng = np.random.default_rng(i)
    pixels = np.zeros(784, dtype=np.int64)
    pixels[rng.choice(784, size=40, replace=False)] = rng.integers(1, 256, size=40)
    sample = {
        "label": i % 10,
        "pixels": pixels.tolist(),
        "strokes": [[[10, 20, 0], [30.25, 40.5, 16.7], [50, 60, 33]], [[i, 2 * i, 100.5]]],
        "pen_width": 18.5,
        "canvas": [280, 280],
        "writer": f"writer-{i}",
        "predicted": (i + 1) % 10,
        "model": "cnn",
    }
    sample.update(changes)
    return sample


def sent_fields(sample: dict) -> dict:
    """What page() gives back of a sample, ids and created_at aside."""
    return {
        k: sample.get(k) for k in ("label", "pixels", "strokes", "pen_width", "canvas", "writer", "predicted", "model")
    }


@pytest.fixture()
def store(tmp_path) -> SampleStore:
    return open_store(tmp_path / "samples.db")


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


# --- schema and migrations ------------------------------------------------------------------


def test_a_new_database_has_the_current_schema_in_wal_mode(tmp_path):
    path = tmp_path / "new" / "folder" / "samples.db"  # folders are made
    open_store(path)
    assert user_version(path) == SCHEMA_VERSION == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [(r[1], r[2], r[3]) for r in db.execute("PRAGMA table_info(samples)")]
    assert columns == [
        ("id", "INTEGER", 0),
        ("created_at", "TEXT", 1),
        ("label", "INTEGER", 1),
        ("predicted", "INTEGER", 0),
        ("model", "TEXT", 0),
        ("writer", "TEXT", 0),
        ("pixels", "BLOB", 1),
        ("strokes", "TEXT", 1),
        ("pen_width", "REAL", 1),
        ("canvas_width", "INTEGER", 1),
        ("canvas_height", "INTEGER", 1),
    ]


def test_connections_write_with_synchronous_full(store):
    with store.connect() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_version_0_file_made_by_hand_is_migrated(tmp_path):
    path = tmp_path / "v0.db"
    with sqlite3.connect(path) as db:  # a SQLite file of no schema version and no tables
        db.execute("CREATE TABLE scratch (x)")
        db.execute("DROP TABLE scratch")
    assert path.stat().st_size > 0 and user_version(path) == 0
    store = open_store(path)
    assert user_version(path) == SCHEMA_VERSION
    assert store.page() == [] and store.add(make_sample()) == 1


def test_migrations_run_in_order_from_the_files_version_keeping_the_data(tmp_path, monkeypatch):
    path = tmp_path / "v1.db"
    old = open_store(path)
    for i in range(3):
        old.add(make_sample(i))
    before = old.page()
    ran = []

    def v2(db):
        ran.append(2)
        db.execute("ALTER TABLE samples ADD COLUMN session TEXT")

    def v3(db):
        ran.append(3)
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # v2 is committed first
        db.execute("CREATE INDEX samples_session ON samples (session)")

    monkeypatch.setattr(samples_module, "MIGRATIONS", [samples_module.MIGRATIONS[0], v2, v3])
    store = open_store(path)
    assert ran == [2, 3] and user_version(path) == 3  # v1 is not run again
    with sqlite3.connect(path) as db:
        assert "session" in [r[1] for r in db.execute("PRAGMA table_info(samples)")]
    assert store.page() == before
    assert store.add(make_sample(9)) == 4
    open_store(path)
    assert ran == [2, 3]  # nothing to do the second time


def test_a_failed_migration_leaves_the_file_at_its_version(tmp_path, monkeypatch):
    path = tmp_path / "v1.db"
    open_store(path).add(make_sample())

    def broken(db):
        db.execute("ALTER TABLE samples ADD COLUMN session TEXT")
        db.execute("ALTER TABLE no_such_table ADD COLUMN x")

    monkeypatch.setattr(samples_module, "MIGRATIONS", [samples_module.MIGRATIONS[0], broken])
    with pytest.raises(StoreError, match="from schema version 1 to 2 failed.*stays at version 1"):
        open_store(path)
    assert user_version(path) == 1
    with sqlite3.connect(path) as db:
        assert "session" not in [r[1] for r in db.execute("PRAGMA table_info(samples)")]  # rolled back
    assert SampleStore(path).count() == 1


def test_a_database_of_a_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / "future.db"
    open_store(path).add(make_sample())
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    content = path.read_bytes()
    with pytest.raises(
        StoreError,
        match=f"schema version {SCHEMA_VERSION + 1}, newer than this code's "
        f"{SCHEMA_VERSION}.*newer version of this project",
    ):
        open_store(path)
    assert path.read_bytes() == content and user_version(path) == SCHEMA_VERSION + 1


@pytest.mark.parametrize(
    "kind, words",
    [
        ("foreign", "not a sample database: it has tables \\(people\\)"),
        ("text", "file is not a database"),
        ("folder", "it is a folder"),
        ("under-a-file", "cannot create the folder"),
    ],
)
def test_files_that_are_not_sample_databases_are_refused(tmp_path, kind, words):
    path = tmp_path / "samples.db"
    if kind == "foreign":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE people (name)")
    elif kind == "text":
        path.write_text("hello, not SQLite\n" * 100)
    elif kind == "folder":
        path.mkdir()
    else:
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "samples.db"
    with pytest.raises(StoreError, match=words) as e:
        open_store(path)
    assert str(path) in str(e.value)


def test_open_without_create_needs_the_file(tmp_path):
    with pytest.raises(StoreError, match="no sample database at"):
        open_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


# --- adding and reading ---------------------------------------------------------------------


def test_a_sample_comes_back_as_it_was_sent(store):
    sample = make_sample(3, created_at="2026-01-02T03:04:05.678Z")
    sample_id = store.add(sample)
    [row] = store.page()
    assert row == {"id": sample_id, **sent_fields(sample), "created_at": "2026-01-02T03:04:05.678Z"}
    assert isinstance(row["strokes"][0][0][0], int) and isinstance(row["strokes"][0][1][0], float)


def test_created_at_defaults_to_now_in_utc(store):
    store.add(make_sample(writer=None, predicted=None, model=None))
    [row] = store.page()
    assert CREATED_AT.fullmatch(row["created_at"])
    assert (
        abs(time.mktime(time.strptime(row["created_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime())) < 60
    )
    assert row["writer"] is row["predicted"] is row["model"] is None


def test_fractional_pixels_are_rounded_half_up(store):
    pixels = [0] * 784
    pixels[:6] = [0.49, 0.5, 1.5, 2.5, 254.5, 255]
    store.add(make_sample(pixels=pixels))
    assert store.page()[0]["pixels"][:6] == [0, 1, 2, 3, 255, 255]


def _with(**changes):
    return lambda s: {**s, **changes}


def _without(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


def _pixel(index, value):
    def change(s):
        pixels = list(s["pixels"])
        pixels[index] = value
        return {**s, "pixels": pixels}

    return change


INVALID = {
    "not-an-object": (lambda s: [s], "a sample is an object"),
    "no-label": (_without("label"), "has no label"),
    "no-strokes": (_without("strokes"), "has no strokes"),
    "unknown-field": (_with(lable=3), "unknown field 'lable'"),
    "id-given": (_with(id=5), "unknown field 'id'"),
    "label-10": (_with(label=10), "label must be an integer 0..9, got 10"),
    "label-text": (_with(label="7"), "label must be an integer 0..9, got '7'"),
    "label-bool": (_with(label=True), "label must be an integer 0..9, got True"),
    "label-float": (_with(label=3.0), "label must be an integer 0..9, got 3.0"),
    "label-null": (_with(label=None), "label must be an integer 0..9, got None"),
    "predicted-11": (_with(predicted=11), "predicted must be an integer 0..9 or null"),
    "pixels-783": (_with(pixels=[1] * 783), "pixels must hold 784 numbers"),
    "pixels-text": (_with(pixels="abc"), "pixels must be a list of 784"),
    "pixel-negative": (_pixel(3, -1), "pixels[3] is -1, not a number in 0..255"),
    "pixel-256": (_pixel(5, 256), "pixels[5] is 256"),
    "pixel-nan": (_pixel(7, float("nan")), "pixels[7] is nan"),
    "pixel-bool": (_pixel(9, True), "pixels[9] is True"),
    "pixel-text": (_pixel(9, "1"), "pixels[9] is '1'"),
    "pixels-blank": (_with(pixels=[0] * 784), "all 0"),
    "strokes-empty": (_with(strokes=[]), "strokes must be a list of 1..1000 strokes"),
    "stroke-empty": (_with(strokes=[[[1, 2, 3]], []]), "strokes[1] must be a non-empty list"),
    "point-2-numbers": (_with(strokes=[[[1, 2, 0], [1, 2]]]), "strokes[0][1] must be [x, y, t_ms]"),
    "point-infinite": (_with(strokes=[[[1, float("inf"), 0]]]), "three finite numbers"),
    "point-text": (_with(strokes=[[["1", 2, 0]]]), "strokes[0][0] must be [x, y, t_ms]"),
    "t-negative": (_with(strokes=[[[1, 2, -1]]]), "strokes[0][0] has t_ms -1"),
    "too-many-points": (_with(strokes=[[[1, 2, 0]] * 60_000] * 2), "more than 100000 points"),
    "pen-0": (_with(pen_width=0), "pen_width must be a number"),
    "pen-text": (_with(pen_width="18"), "pen_width must be a number"),
    "pen-infinite": (_with(pen_width=float("inf")), "pen_width must be a number"),
    "canvas-1": (_with(canvas=[280]), "canvas must be [width, height]"),
    "canvas-0": (_with(canvas=[0, 280]), "canvas must be [width, height]"),
    "canvas-float": (_with(canvas=[280.0, 280]), "canvas must be [width, height]"),
    "writer-empty": (_with(writer=""), "writer must be null or a text of 1..200 characters"),
    "writer-number": (_with(writer=7), "writer must be null or a text"),
    "writer-long": (_with(writer="x" * 201), "writer must be null or a text"),
    "model-list": (_with(model=["cnn"]), "model must be null or a text"),
    "created-at-space": (_with(created_at="2026-01-02 03:04:05.678Z"), "created_at must be UTC time"),
    "created-at-month-13": (_with(created_at="2026-13-02T03:04:05.678Z"), "created_at must be UTC time"),
    "created-at-offset": (_with(created_at="2026-01-02T03:04:05.678+01:00"), "created_at must be UTC time"),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_samples_are_refused_with_the_field_named(store, case):
    change, words = case
    with pytest.raises(ValueError, match=re.escape(words)):
        store.add(change(make_sample()))
    assert store.count() == 0


def test_paging(store):
    ids = [store.add(make_sample(i)) for i in range(7)]
    assert ids == list(range(1, 8))
    assert [r["id"] for r in store.page(0, 3)] == [1, 2, 3]
    assert [r["id"] for r in store.page(3, 3)] == [4, 5, 6]
    assert [r["id"] for r in store.page(6, 3)] == [7]
    assert store.page(7, 3) == [] and store.page(100) == []
    assert [r["id"] for r in store.page()] == ids  # default: after 0, up to 100
    walk, after = [], 0
    while True:
        answer = store.browse(after, 3)
        assert answer["total"] == 7
        walk += [r["id"] for r in answer["samples"]]
        if answer["next"] is None:
            break
        after = answer["next"]
    assert walk == ids
    assert store.browse(0, 3)["next"] == 3 and store.browse(6, 3)["next"] is None
    assert store.browse(0, 7)["next"] is None  # a full last page: nothing follows
    assert store.browse(0, 6)["next"] == 6
    for after_id, limit in ((-1, 3), (0, 0), (0, True), ("0", 3)):
        with pytest.raises(ValueError, match="must be an integer"):
            store.page(after_id, limit)


def test_label_counts_and_count(store):
    for i in range(13):
        store.add(make_sample(i))
    assert store.count() == 13
    assert store.label_counts() == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1}


def test_threads_share_a_store_and_a_fresh_file(tmp_path):
    path, ids, errors = tmp_path / "samples.db", [], []

    def work(k):
        try:
            store = open_store(path)  # every thread opens (and would migrate) the new file at once
            for j in range(8):
                ids.append(store.add(make_sample(10 * k + j)))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(ids) == list(range(1, 49))
    assert SampleStore(path).integrity_check() == "ok"


# --- export and import ----------------------------------------------------------------------


def varied_samples() -> list[dict]:
    return [
        make_sample(0, created_at="2026-03-04T05:06:07.089Z"),
        make_sample(1, writer='Zoë ✓ "quotes"', model=None, predicted=None),
        make_sample(2, pixels=[255] * 784, strokes=[[[0.1, 1e-7, 0.0]], [[-5, 300.75, 12345.678]]], pen_width=0.5),
        make_sample(3, writer=None, canvas=[640, 480]),
    ]


def test_export_format(store, tmp_path):
    for s in varied_samples():
        store.add(s)
    assert store.export_npz(tmp_path / "out.npz") == 4
    with np.load(tmp_path / "out.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["labels", "metadata", "pixels"]
        assert npz["pixels"].shape == (4, 28, 28) and npz["pixels"].dtype == np.uint8
        assert npz["labels"].dtype == np.int64 and npz["labels"].tolist() == [0, 1, 2, 3]
        metadata = json.loads(bytes(npz["metadata"]))
        pixels = npz["pixels"]
    assert metadata["format"] == "mnist-wasm-samples" and metadata["version"] == 1
    rows = store.page()
    for row, image, meta in zip(rows, pixels, metadata["samples"]):
        assert image.reshape(784).tolist() == row["pixels"]
        assert meta == {
            k: row[k] for k in ("created_at", "predicted", "model", "writer", "strokes", "pen_width", "canvas")
        }
    assert not (tmp_path / "out.npz.tmp").exists()


def test_export_import_round_trip_is_exact_and_skips_duplicates(store, tmp_path):
    for s in varied_samples():
        store.add(s)
    store.export_npz(tmp_path / "a.npz")
    other = open_store(tmp_path / "elsewhere" / "samples.db")  # "another machine": a new database
    assert other.import_npz(tmp_path / "a.npz") == (4, 0)
    assert other.page() == store.page()  # every field, created_at and ids included (both start at 1)
    other.export_npz(tmp_path / "b.npz")
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        for name in ("pixels", "labels", "metadata"):
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert other.import_npz(tmp_path / "a.npz") == (0, 4)  # again: all duplicates
    assert store.import_npz(tmp_path / "b.npz") == (0, 4)  # back home: all duplicates
    other.add(make_sample(7))
    other.export_npz(tmp_path / "c.npz")
    assert store.import_npz(tmp_path / "c.npz") == (1, 4)  # a merge adds only what is new
    assert store.count() == 5


def test_import_is_all_or_nothing_and_names_the_bad_sample(store, tmp_path):
    for s in varied_samples():
        store.add(s)
    store.export_npz(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as npz:
        arrays = dict(npz)
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][2] = 12
    np.savez(tmp_path / "bad.npz", **arrays)
    fresh = open_store(tmp_path / "fresh.db")
    with pytest.raises(ValueError, match="sample 2: label must be an integer 0..9, got 12"):
        fresh.import_npz(tmp_path / "bad.npz")
    assert fresh.count() == 0


@pytest.mark.parametrize(
    "kind, error, words",
    [
        ("missing", FileNotFoundError, "no such file"),
        ("text", ValueError, "not a zip archive"),
        ("no-metadata", ValueError, "has no metadata array"),
        ("float-pixels", ValueError, "pixels must be \\(N, 28, 28\\) uint8"),
        ("other-format", ValueError, "not of the 'mnist-wasm-samples' format"),
        ("newer-version", ValueError, "export version 2"),
        ("count-mismatch", ValueError, "1 images but metadata for 0 samples"),
    ],
)
def test_import_refuses_other_files(store, tmp_path, kind, error, words):
    path = tmp_path / "in.npz"
    pixels = np.zeros((1, 28, 28), np.uint8)
    pixels[0, 10, 10] = 255
    meta = {
        "format": "mnist-wasm-samples",
        "version": 1,
        "samples": [
            {
                "created_at": "2026-01-01T00:00:00.000Z",
                "predicted": None,
                "model": None,
                "writer": None,
                "strokes": [[[1, 2, 0]]],
                "pen_width": 3.0,
                "canvas": [280, 280],
            }
        ],
    }

    def encode(document):
        return np.frombuffer(json.dumps(document).encode(), np.uint8)

    arrays = {"pixels": pixels, "labels": np.array([1]), "metadata": encode(meta)}
    if kind == "text":
        path.write_text("not a zip")
    elif kind != "missing":
        if kind == "no-metadata":
            del arrays["metadata"]
        elif kind == "float-pixels":
            arrays["pixels"] = pixels.astype(np.float32)
        elif kind == "other-format":
            arrays["metadata"] = encode({**meta, "format": "something"})
        elif kind == "newer-version":
            arrays["metadata"] = encode({**meta, "version": 2})
        elif kind == "count-mismatch":
            arrays["metadata"] = encode({**meta, "samples": []})
        np.savez(path, **arrays)
    with pytest.raises(error, match=words):
        store.import_npz(path)
    assert store.count() == 0


def test_the_well_formed_file_of_those_imports(store, tmp_path):
    """The file test_import_refuses_other_files spoils is itself importable."""
    pixels = np.zeros((1, 28, 28), np.uint8)
    pixels[0, 10, 10] = 255
    meta = {
        "format": "mnist-wasm-samples",
        "version": 1,
        "samples": [
            {
                "created_at": "2026-01-01T00:00:00.000Z",
                "predicted": None,
                "model": None,
                "writer": None,
                "strokes": [[[1, 2, 0]]],
                "pen_width": 3.0,
                "canvas": [280, 280],
            }
        ],
    }
    np.savez(
        tmp_path / "in.npz",
        pixels=pixels,
        labels=np.array([1]),
        metadata=np.frombuffer(json.dumps(meta).encode(), np.uint8),
    )
    assert store.import_npz(tmp_path / "in.npz") == (1, 0)


# --- HTTP: /api/samples ---------------------------------------------------------------------


def start(**kwargs):
    server = make_server(
        "127.0.0.1",
        0,
        "flex",
        ["flex"],
        classify_pixels=lambda p: np.full((len(p), 10), 0.1),
        log_requests=False,
        **kwargs,
    )
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"127.0.0.1:{server.server_port}"


@pytest.fixture()
def api(tmp_path):
    """(address, database path) of a server storing samples in a new database."""
    path = tmp_path / "data" / "samples.db"
    server, address = start(samples_db=path)
    yield address, path
    server.shutdown()
    server.server_close()


def call(
    address: str,
    method: str,
    path: str = "/api/samples",
    body: bytes = b"",
    headers: dict | None = None,
    content_length: bool = True,
):
    """One request (tests/test_api.py's, exact headers); returns (status, headers, body bytes)."""
    from tests.test_api import call as api_call

    reply = api_call(f"http://{address}", path, method, body, headers, content_length)
    return reply.status, reply.headers, reply.body


def post(address: str, document, **kwargs):
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers = kwargs.pop("headers", {"Content-Type": "application/json"})
    status, headers, body = call(address, "POST", body=body, headers=headers, **kwargs)
    return status, json.loads(body)


def get(address: str, query: str = ""):
    status, headers, body = call(address, "GET", "/api/samples" + query, content_length=False)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def test_post_stores_a_sample_and_get_returns_it(api):
    address, path = api
    assert not path.exists()  # opened on first use, not when the server starts
    sample = make_sample(5)
    assert post(address, sample) == (201, {"success": True, "id": 1})
    assert post(address, make_sample(6, writer=None)) == (201, {"success": True, "id": 2})
    status, answer = get(address)
    assert status == 200 and answer["total"] == 2 and answer["next"] is None
    first = answer["samples"][0]
    assert CREATED_AT.fullmatch(first.pop("created_at"))
    assert first == {"id": 1, **sent_fields(sample)}
    assert SampleStore(path).count() == 2  # in the database the server was given


def test_get_pages(api):
    address, _ = api
    for i in range(5):
        assert post(address, make_sample(i))[0] == 201
    assert [
        [s["id"] for s in get(address, q)[1]["samples"]] for q in ("?limit=2", "?after=2&limit=2", "?after=4&limit=2")
    ] == [[1, 2], [3, 4], [5]]
    assert [get(address, q)[1]["next"] for q in ("?limit=2", "?after=2&limit=2", "?after=4&limit=2", "?limit=5")] == [
        2,
        4,
        None,
        None,
    ]
    assert get(address, "?after=5") == (200, {"samples": [], "next": None, "total": 5})
    assert get(address, "?after=3&other=x")[1]["total"] == 5
    status, headers, body = call(address, "HEAD", "/api/samples?limit=1", content_length=False)
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    "query, words",
    [
        ("?limit=0", "limit: Input should be greater than or equal to 1, got '0'"),
        ("?limit=1001", "limit: Input should be less than or equal to 1000, got '1001'"),
        ("?limit=abc", "limit: must be a plain decimal integer (digits 0-9, at most 30), got 'abc'"),
        ("?limit=", "limit: must be a plain decimal integer"),
        ("?after=-1", "after: must be a plain decimal integer"),
        ("?after=1.5", "after: must be a plain decimal integer"),
        ("?after=" + "9" * 30, "after: Input should be less than or equal to 9223372036854775807"),
        ("?after=1&after=2", "after is given 2 times"),
    ],
)
def test_get_refuses_bad_paging(api, query, words):
    status, answer = get(api[0], query)
    assert status == 400 and answer["success"] is False and words in answer["error"]


JSON = {"Content-Type": "application/json"}
POST_ERRORS = {
    "not-json": (dict(body=b"{label: 3"), 400, "the body is not valid JSON"),
    "a-list": (dict(body=b"[1, 2]"), 400, "a sample is an object"),
    "no-content-type": (dict(body=json.dumps(make_sample()).encode(), headers={}), 400, "application/json"),
    "text-plain": (
        dict(body=json.dumps(make_sample()).encode(), headers={"Content-Type": "text/plain"}),
        400,
        "Content-Type: application/json",
    ),
    "bad-label": (dict(body=json.dumps(make_sample(label=10)).encode()), 400, "label must be an integer 0..9, got 10"),
    "unknown-field": (dict(body=json.dumps({**make_sample(), "lable": 1}).encode()), 400, "unknown field 'lable'"),
    "nan-pixel": (
        dict(body=json.dumps(make_sample(pixels=[float("nan")] + [1] * 783)).encode()),
        400,
        "pixels[0] is nan",
    ),
    "deep-json": (dict(body=b"[" * 100_000 + b"]" * 100_000), 400, "not valid JSON"),
    # JSON integers too large for a float (json.loads reads them as ints).
    "huge-pixel": (
        dict(body=json.dumps(make_sample(pixels=[10**400] + [1] * 783)).encode()),
        400,
        "pixels[0] is 1000000",
    ),
    "huge-pen-width": (dict(body=json.dumps(make_sample(pen_width=10**400)).encode()), 400, "pen_width must be"),
    "huge-stroke-x": (
        dict(body=json.dumps(make_sample(strokes=[[[10**400, 1, 0]]])).encode()),
        400,
        "strokes[0][0] must be [x, y, t_ms], three finite numbers",
    ),
    "no-content-length": (dict(body=b"", content_length=False), 400, "not valid JSON"),  # an empty body
    "over-2MB": (dict(body=b"", headers={**JSON, "Content-Length": "2000001"}), 413, "limit is 2000000"),
}


@pytest.mark.parametrize("case", POST_ERRORS.values(), ids=POST_ERRORS.keys())
def test_post_errors(api, case):
    kwargs, status, words = case
    kwargs = {"headers": JSON, **kwargs}
    got, headers, body = call(api[0], "POST", **kwargs)
    answer = json.loads(body)
    assert (got, answer["success"]) == (status, False) and words in answer["error"], answer
    assert get(api[0]) == (200, {"samples": [], "next": None, "total": 0})  # nothing stored, still serving


def test_an_oversized_body_being_sent_gets_413(api):
    body = json.dumps({**make_sample(), "padding": "x" * 3_000_000}).encode()
    status, answer = post(api[0], body)
    assert status == 413 and "limit is 2000000" in answer["error"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405(api, method):
    status, headers, body = call(api[0], method, content_length=False)
    assert status == 405 and headers["Allow"] == "GET, HEAD, POST"
    assert f"takes GET or POST, not {method}" in json.loads(body)["error"]


def test_predict_still_allows_only_post(api):
    status, headers, _ = call(api[0], "GET", "/api/predict", content_length=False)
    assert status == 405 and headers["Allow"] == "POST"
    status, _, body = call(api[0], "POST", "/api/nothing", body=b"{}", headers=JSON)
    assert status == 404 and "GET/POST /api/samples" in json.loads(body)["error"]


def test_an_unusable_database_gives_503_and_is_retried(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the folder should be")
    server, address = start(samples_db=blocker / "samples.db")
    try:
        status, answer = post(address, make_sample())
        assert status == 503 and "cannot save or list samples" in answer["error"]
        assert str(blocker / "samples.db") in answer["error"] and "cannot create the folder" in answer["error"]
        status, answer = get(address)
        assert status == 503 and "cannot save or list samples" in answer["error"]
        blocker.unlink()  # fixed: the next request opens it
        assert post(address, make_sample()) == (201, {"success": True, "id": 1})
    finally:
        server.shutdown()
        server.server_close()


def test_a_newer_database_gives_503(tmp_path):
    path = tmp_path / "samples.db"
    open_store(path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    server, address = start(samples_db=path)
    try:
        status, answer = post(address, make_sample())
        assert status == 503 and "schema version 99, newer" in answer["error"]
    finally:
        server.shutdown()
        server.server_close()


# --- durability: SIGKILL in the middle of the writes ----------------------------------------

SERVER_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from server.app import make_server
server = make_server("127.0.0.1", 0, "flex", ["flex"], samples_db=sys.argv[2], log_requests=False)
print(server.server_port, flush=True)
server.serve_forever()
"""


def spawn_server(db: Path) -> tuple[subprocess.Popen, str]:
    """The real server in a child process on a free port; returns it and its address."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, str(ROOT), str(db)], stdout=subprocess.PIPE, text=True
    )
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        proc.kill()
        pytest.fail(f"the server did not start (exit code {proc.poll()}, said {line!r})")
    return proc, f"127.0.0.1:{line.strip()}"


def test_samples_that_got_201_survive_sigkill_mid_write(tmp_path):
    db = tmp_path / "samples.db"
    proc, address = spawn_server(db)
    acknowledged: dict[int, dict] = {}  # id -> the sample the server said it saved
    cut = []  # how each client's last request ended when the server died
    unexpected = []
    counter = iter(range(10**6))
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                i = next(counter)
            sample = make_sample(i, writer=f"client-{i}")
            try:
                status, answer = post(address, sample)
            except (OSError, http.client.HTTPException, ValueError) as e:  # the server is gone
                cut.append(e)
                return
            with lock:
                if status == 201:
                    acknowledged[answer["id"]] = sample
                else:
                    unexpected.append((status, answer))

    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 40 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # while the four clients are sending and the server writing
        proc.wait(10)
        for t in threads:
            t.join(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert unexpected == [] and len(acknowledged) >= 40 and len(cut) == 4
    # Not only refused connections: requests were in flight when the server died.
    assert any(not isinstance(e, ConnectionRefusedError) for e in cut), cut

    proc, address = spawn_server(db)  # the same database, recovered by SQLite on opening
    try:
        stored, after = {}, 0
        while after is not None:
            status, answer = get(address, f"?after={after}&limit=7")
            assert status == 200
            stored.update((s["id"], s) for s in answer["samples"])
            after = answer["next"]
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"samples answered 201 but lost: {missing}"
    for sample_id, sample in acknowledged.items():
        row = dict(stored[sample_id])
        del row["id"], row["created_at"]
        assert row == sent_fields(sample), sample_id
    # The samples the kill cut off (at most one per client) are there whole or not at all.
    assert len(stored) - len(acknowledged) <= 4
    for row in stored.values():
        i = int(row["writer"].removeprefix("client-"))
        assert {k: row[k] for k in sent_fields(row)} == sent_fields(make_sample(i, writer=row["writer"]))
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


OPEN_AT_ONCE_SCRIPT = """
import multiprocessing, sys
sys.path.insert(0, sys.argv[1])
from mnist_common.samples import StoreError, open_store

def open_it(path, barrier, failures):
    barrier.wait()
    try:
        open_store(path)
    except StoreError as e:
        failures.put(str(e))

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for trial in range(int(sys.argv[3])):
        barrier = context.Barrier(4)
        path = f"{sys.argv[2]}/{trial}/samples.db"
        processes = [context.Process(target=open_it, args=(path, barrier, failures)) for _ in range(4)]
        for p in processes:
            p.start()
        for p in processes:
            p.join()
    print(failures.qsize(), failures.get() if failures.qsize() else "")
"""


def test_processes_opening_a_new_database_at_once_all_get_it(tmp_path):
    """Four processes open (create, switch to WAL, migrate) the same new file at the same moment,
    60 times over: as the workers of `invoke serve --workers N` do on their first requests. SQLite
    refuses a concurrent switch to WAL at once ("database is locked", without waiting), which
    open_store retries; without that, 2 to 10 of the 60 trials failed here."""
    result = subprocess.run(
        [sys.executable, "-c", OPEN_AT_ONCE_SCRIPT, str(ROOT), str(tmp_path), "60"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1)[0] == "0", result.stdout
    for trial in range(60):
        assert SampleStore(tmp_path / str(trial) / "samples.db").integrity_check() == "ok"


WORKERS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from server.app import serve
serve("127.0.0.1", int(sys.argv[3]), "flex", ["flex"], workers=2, samples_db=sys.argv[2], log_requests=False)
"""


def test_two_worker_processes_share_one_database(tmp_path):
    """`invoke serve --workers 2`: two uvicorn worker processes on one port, each opening the
    same SQLite file (created by whichever comes first); every sample posted to them is stored
    once, under its own id."""
    from tests.conftest import free_port, wait_until_serving

    db, port = tmp_path / "data" / "samples.db", free_port()
    proc = subprocess.Popen([sys.executable, "-c", WORKERS_SCRIPT, str(ROOT), str(db), str(port)], cwd=ROOT)
    address = f"127.0.0.1:{port}"
    try:
        wait_until_serving(proc, f"http://{address}/config.json", seconds=60, what="serve(workers=2)")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [c for c in children if b"multiprocessing" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) >= 2, children
        ids, lock = [], threading.Lock()

        def client(k: int) -> None:
            for i in range(15):
                status, answer = post(address, make_sample(k * 100 + i, writer=f"client-{k}"))
                assert status == 201, answer
                with lock:
                    ids.append(answer["id"])

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 3)
        assert sorted(ids) == list(range(1, 61))
        status, answer = get(address, "?limit=1000")
        assert status == 200 and answer["total"] == 60 and answer["next"] is None
        assert sorted((s["writer"], s["label"]) for s in answer["samples"]) == sorted(
            (f"client-{k}", (k * 100 + i) % 10) for k in range(4) for i in range(15)
        )
        assert call(address, "GET", "/api/predict", content_length=False)[0] == 405  # the whole app, in each
    finally:
        proc.terminate()
        proc.wait(30)
    assert SampleStore(db).integrity_check() == "ok"


# --- invoke samples ---------------------------------------------------------------------------


def test_invoke_samples_imports_exports_and_counts(store, tmp_path, capsys):
    from invoke import Context, Exit

    import tasks

    for s in varied_samples():
        store.add(s)
    store.export_npz(tmp_path / "a.npz")
    db = tmp_path / "copy" / "samples.db"
    tasks.samples_task(Context(), import_=str(tmp_path / "a.npz"), db=str(db))
    tasks.samples_task(Context(), import_=str(tmp_path / "a.npz"), db=str(db))
    tasks.samples_task(Context(), export=str(tmp_path / "b.npz"), db=str(db))
    out = capsys.readouterr().out
    assert "a.npz: 4 samples added, 0 duplicates skipped" in out
    assert "a.npz: 0 samples added, 4 duplicates skipped" in out
    assert "b.npz: 4 samples exported" in out
    assert f"{db}: 4 samples (0: 1, 1: 1, 2: 1, 3: 1, 4: 0," in out
    assert SampleStore(db).page() == store.page()
    for kwargs, words in [
        (dict(import_=str(tmp_path / "missing.npz")), "--import: no such file"),
        (dict(import_=str(Path(tasks.__file__))), "nothing imported: " + str(Path(tasks.__file__))),
        (dict(export=str(tmp_path / "b.npz"), db=str(tmp_path / "none.db")), "no sample database at"),
        (dict(export=str(tmp_path / "no" / "b.npz")), "--export: the folder"),
        (dict(export="x.npz", import_="y.npz"), "not both"),
    ]:
        with pytest.raises(Exit, match=re.escape(words)):
            tasks.samples_task(Context(), **{"db": str(db), **kwargs})
    assert not (tmp_path / "none.db").exists()
