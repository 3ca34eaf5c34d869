"""server/app.py: MIME types, /config.json, what it refuses to serve; the backend options of
`invoke serve` and `invoke build-wasm`."""

import http.client
import json
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from server.app import make_server


@pytest.fixture()
def local_server():
    server = make_server("127.0.0.1", 0, "flex", ["flex", "ndarray"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def fetch(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_config_lists_built_backends(local_server):
    status, headers, body = fetch(local_server + "config.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    config = json.loads(body)
    assert set(config) == {"default", "backends", "embedded", "models"}  # models: tests/test_models_api.py
    assert config["default"] == "flex" and config["backends"] == ["flex", "ndarray"]
    # By default the repo's models/ is listed, and the embedded models/model.safetensors comes first.
    assert config["embedded"] == "cnn" and config["models"][0]["name"] == "cnn"
    assert config["models"][0]["url"] == "models/model.safetensors" and config["models"][0]["embedded"] is True


def test_page_and_modules_are_served(local_server):
    status, headers, body = fetch(local_server)
    assert status == 200 and b'data-testid="draw"' in body
    status, headers, _ = fetch(local_server + "app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


def test_wasm_is_application_wasm(local_server):
    from server.static import content_type
    from tests.conftest import ROOT

    assert content_type(ROOT / "web" / "pkg" / "flex" / "mnist_wasm_bg.wasm") == "application/wasm"
    built = sorted((ROOT / "web" / "pkg").glob("*/mnist_wasm_bg.wasm"))
    if not built:
        pytest.skip("no wasm built yet (invoke build-wasm)")
    backend = built[0].parent.name
    status, headers, body = fetch(f"{local_server}pkg/{backend}/mnist_wasm_bg.wasm")
    assert status == 200 and headers["Content-Type"] == "application/wasm"
    assert body[:4] == b"\0asm"


@pytest.mark.parametrize("path", ["", "index.html", "app.js", "worker.js", "config.json", "nope.html"])
def test_every_response_makes_the_pages_cross_origin_isolated(local_server, path):
    """COOP + COEP on every response, the worker script's too: without them performance.now()
    steps 100 us in Chromium, too coarse for a predict of ~0.3 ms."""
    _, headers, _ = fetch(local_server + path)
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.parametrize(
    "path", ["server/app.py", "server/", "server", "server/samples.py", "__init__.py", "nope.html", "../tasks.py"]
)
def test_sources_and_missing_files_are_404(local_server, path):
    status, _, _ = fetch(local_server + path)
    assert status == 404


def test_other_methods_are_refused(local_server):
    status, headers, _ = fetch(local_server, method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, _ = fetch(local_server + "nope.html", method="DELETE")
    assert status == 404
    status, _, _ = fetch(local_server, method="FROB")
    assert status == 501


def test_openapi_describes_the_api(local_server):
    """/openapi.json lists every endpoint with its bodies, parameters and answers (docs/api.md
    stays the full description); /docs is Swagger UI over it."""
    status, headers, body = fetch(local_server + "openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    paths = json.loads(body)["paths"]
    assert set(paths["/api/predict"]) == set(paths["/api/mnist"]) == {"post"}
    assert set(paths["/api/samples"]) == {"get", "post"} and set(paths["/config.json"]) == {"get"}
    predict = paths["/api/predict"]["post"]
    content = predict["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert content["application/json"]["schema"]["properties"]["pixels"]["minItems"] == 784
    assert [p["name"] for p in predict["parameters"]] == ["samples"]
    assert {"200", "400", "405", "413", "500", "503"} <= set(predict["responses"])
    assert paths["/api/mnist"]["post"]["requestBody"] == predict["requestBody"]
    # Every answer says whether the image is a digit: true, false or null, at the top and in MC dropout's.
    schemas = json.loads(body)["components"]["schemas"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictionOut")
    for name in ("PredictionOut", "UncertaintyOut"):
        flag = schemas[name]["properties"]["not_a_digit"]
        assert "not_a_digit" in schemas[name]["required"], name
        assert {t.get("type") for t in flag["anyOf"]} == {"boolean", "null"} and flag["description"], name
    sample = paths["/api/samples"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(sample["required"]) == {"label", "pixels", "strokes", "pen_width", "canvas"}
    assert sample["additionalProperties"] is False
    assert [p["name"] for p in paths["/api/samples"]["get"]["parameters"]] == ["after", "limit"]
    status, headers, body = fetch(local_server + "docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"swagger-ui" in body and b"/openapi.json" in body


def test_static_files_answer_head_and_conditional_requests(local_server):
    status, headers, body = fetch(local_server + "app.js", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    etag = headers["ETag"]
    request = urllib.request.Request(local_server + "app.js", headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=5)
    assert answer.value.code == 304  # no-cache: the browser asks, and a fresh copy costs no bytes
    assert answer.value.headers["Cache-Control"] == "no-cache"


def test_port_in_use_is_a_clear_error(local_server):
    port = int(local_server.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(SystemExit, match="already in use"):
        make_server("127.0.0.1", port, "flex", ["flex"])


def test_kept_alive_connections_are_answered_without_a_delayed_ack_wait(local_server):
    """Each response on a kept-alive connection, as a browser fetches the page's files. With
    Nagle's algorithm on (TCP_NODELAY unset on the accepted socket), a response's body waited
    for the client's delayed ACK of its headers, 40 ms at least on Linux: every request but a
    connection's first took 44 ms here. Without it they take about 1 ms."""
    port = int(local_server.rsplit(":", 1)[1].strip("/"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        seconds = []
        for _ in range(8):
            start = time.perf_counter()
            connection.request("GET", "/app.js")
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            seconds.append(time.perf_counter() - start)
        assert connection.sock is not None  # one connection throughout, kept alive
    finally:
        connection.close()
    assert statistics.median(seconds[1:]) < 0.030, [round(s * 1000, 1) for s in seconds]
    server = make_server("127.0.0.1", 0, "flex", ["flex"])
    try:  # what makes asyncio set TCP_NODELAY on each connection it accepts
        assert server.socket.proto == socket.IPPROTO_TCP
    finally:
        server.server_close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--backend", "wgpu"], "--backend names the fallback build: fast-simd128, ndarray, flex, not 'wgpu'"),
        (["serve", "--backend", "fast-relaxed"], "not 'fast-relaxed'"),  # not every browser runs it
        (["serve", "--workers", "0"], "--workers is a number of processes, at least 1, not 0"),
        (
            ["build-wasm", "--backend", "cuda"],
            "unknown backend 'cuda': choose one of fast-relaxed, fast-simd128, ndarray, flex, wgpu, all",
        ),
    ],
)
def test_backend_options_refuse_what_they_cannot_do_before_building_anything(args, message):
    from tests.conftest import INVOKE, ROOT

    result = subprocess.run([INVOKE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr and "+ cargo" not in result.stdout


def test_serve_builds_the_page_first_and_the_comparison_builds_after_the_native_module(monkeypatch):
    """A cold `invoke serve`: the fallback build before serving, the page's first choice beside
    the native module, burn's flex (offered for comparison) once the module is built: the
    2 cores go to what the page and the API need first."""
    from invoke import Context

    import server.app
    import tasks

    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def event(kind, what):
        with lock:
            events.append((kind, what))

    def build_one(name, log_file=None):
        event("start", name)
        time.sleep(0.2)
        event("end", name)

    def native_module(log_file=None, features=()):
        event("start", "native")
        time.sleep(0.5)
        event("end", "native")

    def serve_web(*, background, building, **kwargs):
        event("serve", "page")
        assert building() is not None  # the API says the module is being built
        background(type("Server", (), {"config": {}})())

    monkeypatch.setattr(tasks, "wasm_up_to_date", lambda name: False)
    monkeypatch.setattr(tasks, "native_module_up_to_date", lambda features=(): False)
    monkeypatch.setattr(tasks, "build_one", build_one)
    monkeypatch.setattr(tasks, "native_module", native_module)
    monkeypatch.setattr(tasks, "write_static_site", lambda: None)
    monkeypatch.setattr(tasks, "rebundle_on_change", lambda: None)
    monkeypatch.setattr(server.app, "serve", serve_web)
    tasks.serve.body(Context())
    at = {f"{kind} {what}": i for i, (kind, what) in enumerate(events)}
    assert at["end fast-simd128"] < at["serve page"] < at["start native"]
    assert at["start fast-relaxed"] < at["end native"]  # beside it
    assert at["end native"] < at["start flex"]
    started = [what for kind, what in events if kind == "start"]
    assert len(started) == len(set(started)), events  # each built once
