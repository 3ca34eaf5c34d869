"""The model listing of server/app.py: /config.json's ``models`` and the files under /models/.

Each test serves a temporary models folder built from the committed models/model.safetensors
and from trainer code (an untrained but valid mlp), so nothing depends on what else has been
trained into models/.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from safetensors.torch import save_file

from server.app import make_server
from tests.conftest import WEIGHTS
from trainer.export import save_safetensors
from trainer.model import ARCHITECTURES, build

ENTRY_KEYS = {"name", "url", "architecture", "summary", "test_accuracy", "parameters", "bytes", "embedded"}
#: Tensor elements of each file, counted by hand from the layer shapes (weights + biases, and
#: for the cnn the BatchNorm weight, bias, running mean and running variance): see docs/training.md.
CNN_PARAMETERS = (
    (64 * 1 * 9 + 64 + 4 * 64) + (64 * 64 * 9 + 64 + 4 * 64) + (1600 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)
)
MLP_PARAMETERS = (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10)


def get(base: str, path: str, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with the path sent exactly as given (no normalisation of ``..``)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def serve(**kwargs):
    server = make_server("127.0.0.1", 0, "flex", ["flex"], log_requests=False, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def zoo(tmp_path) -> Path:
    """A models folder: the embedded cnn, a byte-identical copy of it under another name, an
    (untrained) mlp, plus files that must not be listed (metrics, a subfolder, a hidden file)."""
    shutil.copy(WEIGHTS, tmp_path / "model.safetensors")
    shutil.copy(WEIGHTS, tmp_path / "copy.safetensors")
    save_safetensors(build("mlp"), tmp_path / "mlp.safetensors")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    shutil.copy(WEIGHTS, tmp_path / "sub" / "deep.safetensors")
    shutil.copy(WEIGHTS, tmp_path / ".hidden.safetensors")
    return tmp_path


@pytest.fixture()
def zoo_server(zoo):
    server = serve(models_dir=zoo, embedded=zoo / "model.safetensors")
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def config_of(base: str) -> dict:
    status, headers, body = get(base, "/config.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    return json.loads(body)


def test_config_lists_the_models_of_the_folder(zoo_server, zoo):
    config = config_of(zoo_server)
    assert config["default"] == "flex" and config["backends"] == ["flex"]
    models = config["models"]
    assert all(set(m) == ENTRY_KEYS for m in models)
    # The embedded file first, named by its architecture; the others by file stem, sorted.
    assert [m["name"] for m in models] == ["cnn", "copy", "mlp"]
    assert config["embedded"] == "cnn"
    assert [m["embedded"] for m in models] == [True, False, False]  # a byte-identical copy is not it
    cnn, copy, mlp = models
    assert cnn["url"] == "models/model.safetensors" and copy["url"] == "models/copy.safetensors"
    assert mlp["url"] == "models/mlp.safetensors"
    assert cnn["architecture"] == copy["architecture"] == ARCHITECTURES["cnn"].id == "mnist-conv-bn-gelu-v1"
    assert mlp["architecture"] == ARCHITECTURES["mlp"].id == "mnist-mlp-v1"
    assert cnn["summary"] == ARCHITECTURES["cnn"].summary and mlp["summary"] == ARCHITECTURES["mlp"].summary
    assert cnn["parameters"] == copy["parameters"] == CNN_PARAMETERS == 260_810
    assert mlp["parameters"] == MLP_PARAMETERS == 535_818
    for m in models:
        assert m["bytes"] == (zoo / m["url"].removeprefix("models/")).stat().st_size
    # The committed model states its accuracy; a file written without one has null.
    assert isinstance(cnn["test_accuracy"], float) and 0.9 < cnn["test_accuracy"] <= 1
    assert mlp["test_accuracy"] is None


def test_model_files_download_byte_for_byte(zoo_server, zoo):
    for model in config_of(zoo_server)["models"]:
        # The url is relative to the page, which is served at /.
        status, headers, body = get(zoo_server, "/" + model["url"])
        expected = (zoo / model["url"].removeprefix("models/")).read_bytes()
        assert status == 200 and headers["Content-Type"] == "application/octet-stream"
        assert body == expected and int(headers["Content-Length"]) == len(expected) == model["bytes"]
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"  # loadable by the isolated page
    status, headers, body = get(zoo_server, "/models/mlp.safetensors", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == (zoo / "mlp.safetensors").stat().st_size
    status, _, body = get(zoo_server, "/models/mlp.safetensors?v=2")  # a query string changes nothing
    assert status == 200 and body == (zoo / "mlp.safetensors").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/models/../tasks.py",
        "/models/%2e%2e/tasks.py",
        "/models/../models/model.safetensors",
        "/models/..%2fmodels%2fmodel.safetensors",
        "/models/sub/deep.safetensors",
        "/models/sub%2fdeep.safetensors",
        "/models/metrics.json",
        "/models/.hidden.safetensors",
        "/models/nope.safetensors",
        "/models/",
        "/models",
        "/models/model",
        "/models/MODEL.SAFETENSORS",
        "/models/model.safetensors/",
        "/models//etc/passwd",
        "/models/%00model.safetensors",
    ],
)
def test_only_listed_names_are_served(zoo_server, path):
    for method in ("GET", "HEAD"):
        status, _, _ = get(zoo_server, path, method=method)
        assert status == 404, (method, path)
    assert get(zoo_server, "/models/model.safetensors")[0] == 200


def test_writes_to_model_files_are_refused(zoo_server):
    status, headers, _ = get(zoo_server, "/models/mlp.safetensors", method="PUT")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(zoo_server, "/models/other.safetensors", method="DELETE")[0] == 404


def test_unreadable_files_are_skipped_with_one_warning_each(tmp_path, capfd):
    shutil.copy(WEIGHTS, tmp_path / "model.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"this is not a safetensors file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "truncated.safetensors").write_bytes(WEIGHTS.read_bytes()[:5000])
    save_file({"w": torch.zeros(3)}, str(tmp_path / "no-metadata.safetensors"))  # not one of our models
    save_file(
        {"w": torch.zeros(3)},
        str(tmp_path / "bad-plan.safetensors"),
        metadata={"architecture": "mnist-mlp-v1", "layers": '[{"kind": "teleport"}]'},
    )
    bad = {"garbage", "empty", "truncated", "no-metadata", "bad-plan"}
    server = serve(models_dir=tmp_path, embedded=tmp_path / "model.safetensors")
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        config = config_of(base)
        assert [m["name"] for m in config["models"]] == ["cnn"]
        for name in bad:
            assert get(base, f"/models/{name}.safetensors")[0] == 404
        assert get(base, "/models/model.safetensors")[0] == 200
        assert get(base, "/")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    lines = [line for line in capfd.readouterr().err.splitlines() if "not listed" in line]
    assert len(lines) == len(bad)
    for name in bad:
        assert sum(f"{name}.safetensors" in line for line in lines) == 1, (name, lines)


def test_an_embedded_file_outside_the_folder_is_listed_first(tmp_path):
    save_safetensors(build("mlp"), tmp_path / "mlp.safetensors")
    server = serve(models_dir=tmp_path, embedded=WEIGHTS)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        config = config_of(base)
        assert [(m["name"], m["url"], m["embedded"]) for m in config["models"]] == [
            ("cnn", "models/model.safetensors", True),
            ("mlp", "models/mlp.safetensors", False),
        ]
        assert get(base, "/models/model.safetensors")[2] == WEIGHTS.read_bytes()
    finally:
        server.shutdown()
        server.server_close()


def test_the_embedded_file_keeps_its_stem_when_its_architecture_name_is_taken(tmp_path):
    shutil.copy(WEIGHTS, tmp_path / "model.safetensors")
    shutil.copy(WEIGHTS, tmp_path / "cnn.safetensors")  # e.g. another cnn, trained elsewhere
    server = serve(models_dir=tmp_path, embedded=tmp_path / "model.safetensors")
    try:
        config = config_of(f"http://127.0.0.1:{server.server_port}")
        assert [(m["name"], m["embedded"]) for m in config["models"]] == [("model", True), ("cnn", False)]
        assert config["embedded"] == "model"
    finally:
        server.shutdown()
        server.server_close()


def test_no_embedded_file_and_a_missing_folder(tmp_path, capfd):
    save_safetensors(build("mlp"), tmp_path / "mlp.safetensors")
    server = serve(models_dir=tmp_path, embedded=tmp_path / "gone.safetensors")
    try:
        config = config_of(f"http://127.0.0.1:{server.server_port}")
        assert config["embedded"] is None and [m["name"] for m in config["models"]] == ["mlp"]
    finally:
        server.shutdown()
        server.server_close()
    assert "gone.safetensors" in capfd.readouterr().err
    with pytest.raises(SystemExit, match="not a folder"):
        make_server("127.0.0.1", 0, "flex", ["flex"], models_dir=tmp_path / "nope")


def test_serve_task_refuses_a_models_path_that_is_not_a_folder(tmp_path):
    import subprocess

    from tests.conftest import INVOKE, ROOT

    result = subprocess.run(
        [INVOKE, "serve", "--models", str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "is not one" in result.stderr and "+ cargo" not in result.stdout
