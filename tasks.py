"""Invoke tasks: the orchestration of trainer/ -> models/model.safetensors -> wasm-infer/ -> web/.

    invoke train                      train and write models/model.safetensors (+ metrics.json)
    invoke evaluate                   report: clean / augmented / redrawn-MNIST accuracy, plots
    invoke personalize                teaching a hand, measured: style writers before/after
    invoke build-wasm --backend all   compile the Rust crate to wasm: our kernels (fast-relaxed,
                                      fast-simd128), burn's flex, ndarray and wgpu
    invoke serve                      build what is stale, serve web/ on http://127.0.0.1:8000
                                      (our kernels: relaxed SIMD where the browser has it)
    invoke predict IMAGE...           classify image files with the native Rust model
    invoke test                       every test: lint, Rust parity, no_std proof, Python, browser
    invoke test --quick               lint + the Python tests without native module, wasm, browser
    invoke test-kernels               the SIMD kernels' property tests, natively and in wasm (Node)
    invoke lint                       ruff (lint, format), rustfmt, clippy on mnist-kernels
    invoke bench                      in-browser speed against ONNX Runtime Web
    invoke bench-api                  /api/predict throughput; native Rust vs PyTorch per image
    invoke bench-train                train with 3 seeds: mean ± std accuracy and wall time
    invoke samples --export F.npz     the collected drawings (data/samples.db) to a file; --import F.npz

Every task installs what it needs first (idempotently: what is there is not fetched again).
The work itself lives in trainer/ (training, evaluation), mnist_common/ (what training and
serving share), server/ (the API), bench/, wasm-infer/ (Rust) and web/ (the static page);
this file only calls it.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from invoke import Exit, task

from mnist_common.paths import DEFAULT_WEIGHTS as WEIGHTS
from mnist_common.paths import MODELS_DIR as MODEL_DIR
from mnist_common.paths import PKG_DIR as PKG
from mnist_common.paths import (
    ROOT,
    SAMPLES_DB,  # the drawings collected through POST /api/samples
)
from mnist_common.paths import TARGET_DIR as TARGET
from mnist_common.paths import WEB_DIR as WEB

T = TypeVar("T")
#: Where the builds' compiler output goes when the console shows only their progress.
LOGS = TARGET / "logs"

WASM_TARGET = "wasm32-unknown-unknown"
NOSTD_TARGET = "thumbv7em-none-eabihf"
#: Backends proven no_std on NOSTD_TARGET (without SIMD: see wasm-infer/mnist-model/Cargo.toml);
#: `fast` builds this project's kernels with their scalar fallback.
NOSTD_BACKENDS = ("flex", "ndarray", "fast")

#: This project's own kernels (wasm-infer/mnist-kernels) as wasm builds -> mnist-wasm's
#: cargo feature. fast-relaxed needs relaxed SIMD (the page checks before loading it).
FAST_BACKENDS = {"fast-relaxed": "fast-relaxed", "fast-simd128": "fast"}
#: burn's CPU backends: run everywhere, natively too (the Rust tests and the Python module use them).
CPU_BACKENDS = ("ndarray", "flex")
#: GPU backends: wasm only here (WebGPU in the browser; this machine has no GPU to test natively).
GPU_BACKENDS = ("wgpu",)
BACKENDS = (*FAST_BACKENDS, *CPU_BACKENDS, *GPU_BACKENDS)
#: The build every browser with wasm SIMD runs, and so the page's fallback: our kernels
#: (`invoke bench`: the fastest build without relaxed SIMD, see docs/benchmarks.md).
DEFAULT_BACKEND = "fast-simd128"
#: What `invoke serve` builds besides the fallback: the relaxed-SIMD build the page prefers,
#: and burn's flex for comparison (?backend=flex). The two fast builds share every compiled
#: dependency; flex compiles its backend and the burn crates above it.
SERVED_BACKENDS = ("fast-relaxed", "fast-simd128", "flex")
#: Of SERVED_BACKENDS, what `invoke serve` builds before or beside the native module: the page's
#: fallback and its first choice; the builds offered for comparison come after the module.
SERVED_FIRST = ("fast-relaxed", "fast-simd128")

#: Cargo profile (Cargo.toml) of the native module and the native Rust tests: one profile, so the
#: tests link the dependencies the module's build compiled.
NATIVE_PROFILE = "native"

DEBIAN_RUST_PACKAGES = ("rustc-web", "cargo-web", "rust-web-src", "lld-19")
WASM_OPT_FLAGS = (
    "-O3",
    "--enable-reference-types",  # wasm-bindgen's externref table
    "--enable-simd",
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    # -O3 alone inlines every function that has one caller, whatever its size: the kernels of
    # all instruction sets became one 132 KB function and the loading code one of 74 KB. A
    # browser compiles a wasm function the first time it is called, on the calling thread, so
    # the first prediction waited for all of it (docs/benchmarks.md, "Page load → first
    # prediction"). Larger single-caller functions (in binaryen's expression count) stay apart.
    "--one-caller-inline-max-function-size",
    "200",
)


def log(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(
    cmd: list[str], env: dict | None = None, cwd: Path = ROOT, check: bool = True, log_file: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a command, streaming its output (appended to ``log_file`` instead when given: its
    last lines are printed if it fails); raise Exit with its status when it fails."""
    print(
        "+ " + " ".join(str(c) for c in cmd) + (f"  (output: {log_file.relative_to(ROOT)})" if log_file else ""),
        flush=True,
    )
    start = time.monotonic()
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as out:
            out.write("+ " + " ".join(str(c) for c in cmd) + "\n")
            out.flush()
            result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    else:
        result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd)
    seconds = time.monotonic() - start
    if seconds >= 10:  # where a cold build or a test run spends its time, in the log
        print(
            f"    ({seconds / 60:.1f} min: {Path(str(cmd[0])).name} {' '.join(str(c) for c in cmd[1:3])})", flush=True
        )
    if check and result.returncode != 0:
        if log_file:
            tail = log_file.read_text(errors="replace").splitlines()[-40:]
            print("\n".join(["    | " + line for line in tail]), flush=True)
        raise Exit(f"command failed ({result.returncode}): {' '.join(str(c) for c in cmd)}", code=result.returncode)
    return result


def output(cmd: list[str], env: dict | None = None) -> str:
    """stdout of a command, or '' when it is missing or fails."""
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --- system packages --------------------------------------------------------------------


def apt_install(packages: tuple[str, ...], why: str) -> None:
    """Install the Debian packages not yet installed (nothing when all are there)."""
    missing = [p for p in packages if "install ok installed" not in output(["dpkg-query", "-W", "-f=${Status}", p])]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Exit(f"{why} needs the Debian packages {' '.join(missing)}, and this system has no apt-get.")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(f"installing {' '.join(missing)} ({why})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(sudo + ["apt-get", "update", "-qq"], env=env)
    run(sudo + ["apt-get", "install", "-y", "-qq", *missing], env=env)


# --- the wasm toolchain -----------------------------------------------------------------


def cross_toolchain(target: str, std_crates: str) -> dict:
    """How to compile for `target` here: rustup's target if it is (or can be) installed,
    otherwise Debian's rustc-web with the standard library rebuilt from source
    (`-Zbuild-std=<std_crates>`), the offline route.

    Returns {"route", "why", "cargo", "env", "build_std"}. The decision is cached in
    target/toolchain-<target>.json (delete it to decide again); MNIST_RUST_ROUTE=rustup|debian
    forces one. Build outputs go to target/<target>-<route>/: the two toolchains would
    otherwise rebuild each other's files.
    """
    cache = TARGET / f"toolchain-{target}.json"
    forced = os.environ.get("MNIST_RUST_ROUTE")
    if forced in ("rustup", "debian"):
        choice = {"route": forced, "why": "chosen with MNIST_RUST_ROUTE"}
    elif cache.exists():
        choice = json.loads(cache.read_text())
    else:
        if target in output(["rustup", "target", "list", "--installed"]).split():
            choice = {"route": "rustup", "why": f"rustup has the {target} target installed"}
        elif shutil.which("rustup") and run(["rustup", "target", "add", target], check=False).returncode == 0:
            choice = {"route": "rustup", "why": f"`rustup target add {target}` succeeded"}
        else:
            choice = {
                "route": "debian",
                "why": f"rustup's {target} target is not installed and cannot be downloaded; "
                f"using Debian's rustc-web with -Zbuild-std={std_crates}",
            }
        TARGET.mkdir(exist_ok=True)
        cache.write_text(json.dumps(choice, indent=2))
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET / f"{target}-{choice['route']}"))
    if choice["route"] == "rustup":
        return {**choice, "cargo": "cargo", "env": env, "build_std": []}
    apt_install(DEBIAN_RUST_PACKAGES, "the offline Rust cross toolchain")
    env.update(
        PATH="/usr/bin:" + env.get("PATH", ""),
        RUSTC="/usr/bin/rustc",
        RUSTDOC="/usr/bin/rustdoc",
        RUSTC_BOOTSTRAP="1",  # lets a stable rustc take -Zbuild-std
    )
    env.pop("RUSTUP_TOOLCHAIN", None)
    return {**choice, "cargo": "/usr/bin/cargo", "env": env, "build_std": [f"-Zbuild-std={std_crates}"]}


def wasm_toolchain() -> dict:
    """`cross_toolchain` for wasm32, with SIMD (simd128) and, on the Debian route, its linker."""
    toolchain = cross_toolchain(WASM_TARGET, "std,panic_abort")
    prefix = WASM_TARGET.upper().replace("-", "_")
    toolchain["env"][f"CARGO_TARGET_{prefix}_RUSTFLAGS"] = "-C target-feature=+simd128"
    if toolchain["route"] == "debian":
        toolchain["env"][f"CARGO_TARGET_{prefix}_LINKER"] = "wasm-ld-19"  # Debian's rustc has no rust-lld
    return toolchain


def locked_version(crate: str) -> str:
    """Version of `crate` in Cargo.lock."""
    lines = (ROOT / "Cargo.lock").read_text().splitlines()
    for i, line in enumerate(lines):
        if line == f'name = "{crate}"':
            return lines[i + 1].split('"')[1]
    raise Exit(f"{crate} is not in Cargo.lock")


def wasm_bindgen_cli(log_file: Path | None = None) -> str:
    """Path of a wasm-bindgen CLI of exactly the version in Cargo.lock (installed if needed,
    cargo's output to ``log_file`` when one is given)."""
    version = locked_version("wasm-bindgen")
    installed = str(cargo_bin() / "wasm-bindgen")
    candidates = [shutil.which("wasm-bindgen"), installed]
    for path in filter(None, candidates):
        if output([path, "--version"]).split()[-1:] == [version]:
            return path
    log(f"installing wasm-bindgen-cli {version} (must match the wasm-bindgen crate)")
    # No --locked: the CLI's own lock file pins a crate version the registry no longer serves.
    run(["cargo", "install", "wasm-bindgen-cli", "--version", version], log_file=log_file)
    return installed


def cargo_bin() -> Path:
    """Where `cargo install` puts binaries: $CARGO_HOME/bin, by default ~/.cargo/bin."""
    return Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo") / "bin"


def npm_tools() -> Path:
    """web/node_modules/.bin with the npm tools pinned in web/package.json (esbuild for the
    page's bundles, wasm-opt from binaryen, onnxruntime-web for the benchmark); `npm ci` only
    when one is missing."""
    bin_dir = WEB / "node_modules" / ".bin"
    tools = [bin_dir / "esbuild", bin_dir / "wasm-opt", WEB / "node_modules" / "onnxruntime-web"]
    if not all(tool.exists() for tool in tools):
        if shutil.which("npm") is None:
            raise Exit("npm is needed for esbuild, wasm-opt (binaryen) and the benchmark: install Node.js")
        log("installing web/package.json's tools with npm")
        run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB)
    return bin_dir


def wasm_opt() -> str:
    """binaryen's wasm-opt from npm: Debian's (version 108) breaks wasm-bindgen's externref table."""
    return str(npm_tools() / "wasm-opt")


def weights_path() -> Path:
    """The weights the bindings embed: $MNIST_WEIGHTS if set (as wasm-infer/embed_weights.rs reads it)."""
    return Path(os.environ.get("MNIST_WEIGHTS", WEIGHTS))


#: How the page's builds (our kernels: fast-simd128, fast-relaxed) store the weights they
#: embed, unless --weights-dtype says otherwise: int8 with per-channel scales, a quarter of f32's
#: bytes, and on the committed model the same 10,000 MNIST test predictions as f32 (docs/build.md).
#: burn's builds and the native module always embed the f32 file itself: burn-store would keep
#: f16 parameters as f16 and has no int8 with scales; native code is not downloaded.
DEFAULT_WEIGHTS_DTYPE = "int8"
_weights_dtype = DEFAULT_WEIGHTS_DTYPE  # set by use_weights_dtype (a task's --weights-dtype)


def use_weights_dtype(dtype: str) -> None:
    """Store the weights the page's builds embed as ``dtype`` (one of
    ``mnist_common.weights.WEIGHTS_DTYPES``) from now on; raises Exit naming the choices."""
    from mnist_common.weights import WEIGHTS_DTYPES

    global _weights_dtype
    if dtype not in WEIGHTS_DTYPES:
        raise Exit(f"unknown --weights-dtype {dtype!r}: choose one of {', '.join(WEIGHTS_DTYPES)}")
    _weights_dtype = dtype


def embedded_weights(backend: str) -> Path:
    """The weights file the wasm build ``backend`` embeds: for our kernels' builds the weights
    (``weights_path()``) stored in the chosen dtype, a copy converted under target/weights/
    (again only when the source is newer); for burn's builds the source itself."""
    from mnist_common.weights import convert_weights

    source, dtype = weights_path(), _weights_dtype
    if backend not in FAST_BACKENDS or dtype == "f32":
        return source
    converted = TARGET / "weights" / f"{source.stem}-{dtype}.safetensors"
    if not converted.exists() or converted.stat().st_mtime < source.stat().st_mtime:
        convert_weights(source, converted, dtype)
        log(f"wrote {converted.relative_to(ROOT)} ({converted.stat().st_size / 1e6:.2f} MB, from {source.name})")
    return converted


def files_digest(prefix: str, files: list[Path]) -> str:
    """sha256 of `prefix`, then each file's path (relative to the repo) and contents."""
    digest = hashlib.sha256(prefix.encode())
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def rust_inputs(weights: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """What a build of wasm-infer/ depends on: the Cargo files, the ``weights`` it embeds, and
    the crates' .rs/.toml files outside tests/ and examples/ (the kernels' property tests) and
    outside the folders named in `skip`."""
    files = [ROOT / "Cargo.toml", ROOT / "Cargo.lock", weights]
    return files + sorted(
        p
        for p in (ROOT / "wasm-infer").rglob("*")
        if p.suffix in {".rs", ".toml"} and not {"tests", "examples", *skip} & set(p.parts)
    )


def wasm_opt_flags(backend: str) -> tuple[str, ...]:
    """wasm-opt's flags for a build: the relaxed-SIMD build's instructions must be allowed."""
    return WASM_OPT_FLAGS + (("--enable-relaxed-simd",) if backend == "fast-relaxed" else ())


def source_digest(backend: str, route: str) -> str:
    """Hash of everything a wasm build depends on: sources, lock files, weights, toolchain route."""
    return files_digest(
        f"{backend}\n{route}\n{wasm_opt_flags(backend)}\n",
        [WEB / "package-lock.json", *rust_inputs(embedded_weights(backend), skip=("mnist-infer",))],
    )


def requested_backends(backend: str) -> tuple[str, ...]:
    """`all` or one name -> backend names; refuses unknown ones clearly."""
    if backend == "all":
        return BACKENDS
    if backend in BACKENDS:
        return (backend,)
    raise Exit(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS + ('all',))}")


def wasm_up_to_date(backend: str) -> bool:
    """web/pkg/<backend>/ was built from today's sources, weights and toolchain route."""
    stamp = PKG / backend / ".build-stamp"
    wasm = PKG / backend / "mnist_wasm_bg.wasm"
    return wasm.exists() and stamp.exists() and stamp.read_text() == source_digest(backend, wasm_toolchain()["route"])


def cargo_wasm_release(toolchain: dict, args: list[str], env: dict | None = None, log_file: Path | None = None) -> Path:
    """``cargo build --release`` for wasm32 with ``args`` (package, features), on ``toolchain``'s
    route (``wasm_toolchain()``: its cargo, build-std flags and environment, or ``env``); returns
    the folder of the release outputs."""
    run(
        [toolchain["cargo"], "build", "--release", "--target", WASM_TARGET, *toolchain["build_std"], *args],
        env=env or toolchain["env"],
        log_file=log_file,
    )
    return Path(toolchain["env"]["CARGO_TARGET_DIR"]) / WASM_TARGET / "release"


def build_one(backend: str, force: bool = False, log_file: Path | None = None) -> Path:
    """Build web/pkg/<backend>/ (wasm-bindgen output, wasm-opt'd) unless it is up to date; the
    compiler's output goes to ``log_file`` when one is given (the console otherwise)."""
    toolchain = wasm_toolchain()
    out_dir = PKG / backend
    stamp = out_dir / ".build-stamp"
    digest = source_digest(backend, toolchain["route"])
    wasm = out_dir / "mnist_wasm_bg.wasm"
    if not force and wasm_up_to_date(backend):
        log(f"wasm for {backend} is up to date ({wasm.relative_to(ROOT)})")
        return wasm
    shown = f"; output: {log_file.relative_to(ROOT)}" if log_file else ""
    log(f"building wasm for {backend} ({toolchain['route']} route: {toolchain['why']}{shown})")
    fresh_log(log_file)
    # The wasm-bindgen CLI is needed only after cargo: installing it (minutes, once) overlaps.
    bindgen_log = log_file.with_name("wasm-bindgen-cli.log") if log_file else None
    bindgen_ready = in_background("wasm-bindgen-cli", lambda: wasm_bindgen_cli(log_file=bindgen_log))
    optimizer = wasm_opt()
    try:
        release = cargo_wasm_release(
            toolchain,
            ["-p", "mnist-wasm", "--features", FAST_BACKENDS.get(backend, backend)],
            env={**toolchain["env"], "MNIST_WEIGHTS": str(embedded_weights(backend))},
            log_file=log_file,
        )
    finally:
        bindgen = bindgen_ready()
    raw = release / "mnist_wasm.wasm"
    # Assemble beside the old build and swap at the end: a failed build leaves the last good one.
    staging = PKG / f".{backend}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    run(
        [bindgen, "--target", "web", "--no-typescript", "--out-dir", staging, "--out-name", "mnist_wasm", raw],
        log_file=log_file,
    )
    staged = staging / wasm.name
    if backend in GPU_BACKENDS:
        # -O3 on the 15 MB wgpu module took over 3 minutes of every cold build (and test run) for
        # a module whose time goes to the GPU; it is opt-in (`invoke serve --webgpu`) anyway.
        log(f"wasm-opt skipped for {backend}")
    else:
        run([optimizer, *wasm_opt_flags(backend), staged, "-o", staged], log_file=log_file)
    (staging / stamp.name).write_text(digest)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    size = wasm.stat().st_size
    gz = len(gzip.compress(wasm.read_bytes(), 9))
    weights = embedded_weights(backend)
    log(
        f"{wasm.relative_to(ROOT)}: {size / 1e6:.2f} MB ({gz / 1e6:.2f} MB gzip), of which weights "
        f"{weights.stat().st_size / 1e6:.2f} MB ({weights.name})"
    )
    return wasm


#: How long the last build of the native module took (written after each build), for the API's
#: "about N min left" while `invoke serve` builds it; a cold build when there is none yet.
NATIVE_BUILD_SECONDS = TARGET / "native-build-seconds"
#: A cold build of the module `invoke serve` builds (no burn backend) on 2 cores: 2.0 min
#: measured beside fast-relaxed (927f9aa; docs/build.md, "A cold ./dev serve, timed"), with room
#: for VMs a third slower.
NATIVE_COLD_BUILD_SECONDS = 3 * 60


#: The native module's cargo features for the tests and the benchmarks that compare backends:
#: burn's flex and ndarray (wasm-infer/mnist-infer/Cargo.toml). Serving builds it without
#: features: our kernels only.
NATIVE_TEST_FEATURES = ("flex", "ndarray")
#: What the installed native module was built from: {"digest": ..., "features": [...]}.
NATIVE_STAMP = TARGET / "native-build-stamp"


def native_digest() -> str:
    """Hash of what the native module is built from: this Python, the Rust sources, the weights."""
    return files_digest(sys.executable, rust_inputs(weights_path(), skip=("mnist-wasm",)))


def native_module_up_to_date(features: tuple[str, ...] = ()) -> bool:
    """mnist_infer is importable, was built from today's Rust sources and weights, and has
    (at least) the cargo ``features``."""
    from importlib.util import find_spec

    try:
        stamp = json.loads(NATIVE_STAMP.read_text())
        built = stamp["digest"] == native_digest() and set(features) <= set(stamp["features"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or an older stamp's format
        return False
    return built and find_spec("mnist_infer") is not None


def fresh_log(log_file: Path | None) -> None:
    """Start ``log_file`` empty (``run`` appends to it)."""
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")


def native_module(log_file: Path | None = None, features: tuple[str, ...] = ()) -> None:
    """Build wasm-infer/mnist-infer with maturin and install it into this Python as `mnist_infer`
    (the same Rust model natively), unless the installed one is up to date and has the cargo
    ``features`` (a module built with more is kept). The build's output goes to ``log_file``
    when one is given."""
    if native_module_up_to_date(features):
        return
    digest = native_digest()  # what this build starts from (a file edited meanwhile: stale after)
    log(
        "building the native Python module mnist_infer (wasm-infer/mnist-infer) with maturin"
        + (f", features: {', '.join(features)}" if features else "")
        + (f" (output: {log_file.relative_to(ROOT)})" if log_file else "")
    )
    fresh_log(log_file)
    start = time.monotonic()
    maturin = Path(sys.executable).parent / "maturin"
    run(
        [
            maturin,
            "develop",
            "--profile",
            NATIVE_PROFILE,
            "--manifest-path",
            ROOT / "wasm-infer" / "mnist-infer" / "Cargo.toml",
            *(["--features", ",".join(features)] if features else []),
        ],
        log_file=log_file,
    )
    TARGET.mkdir(exist_ok=True)
    NATIVE_STAMP.write_text(json.dumps({"digest": digest, "features": sorted(features)}))
    NATIVE_BUILD_SECONDS.write_text(f"{time.monotonic() - start:.0f}\n")


def built_backends() -> list[str]:
    return [b for b in BACKENDS if (PKG / b / "mnist_wasm_bg.wasm").exists()]


#: The page's two scripts as the browser loads them (index.html): web/app.js and web/worker.js,
#: each bundled by esbuild with every module it imports into one file beside it (a build output,
#: ignored by git). One file each instead of a module graph of 10 and 5: with at most six
#: requests at a time over HTTP/1.1, the worker's script no longer waits behind the page's modules,
#: and page load → first prediction took 30-60 ms less (docs/benchmarks.md).
PAGE_BUNDLES = {"app.js": "app.bundle.js", "worker.js": "worker.bundle.js"}


def page_modules() -> list[Path]:
    """The page's JavaScript modules: web/*.js but the bundles."""
    bundles = set(PAGE_BUNDLES.values())
    return sorted(p for p in WEB.glob("*.js") if p.name not in bundles)


def bundles_up_to_date() -> bool:
    """Each of ``PAGE_BUNDLES`` exists and is newer than every module of the page."""
    bundles = [WEB / name for name in PAGE_BUNDLES.values()]
    if not all(b.exists() for b in bundles):
        return False
    newest = max(p.stat().st_mtime_ns for p in page_modules())
    return all(b.stat().st_mtime_ns >= newest for b in bundles)


def bundle_page(force: bool = False) -> None:
    """Write web/app.bundle.js and web/worker.bundle.js (``PAGE_BUNDLES``), each with a source
    map, so that the browser's developer tools show the modules as written; unless they are
    up to date (``force``: even then). Milliseconds.

    Raises:
        Exit: esbuild refused a module (its message says where).
    """
    if not force and bundles_up_to_date():
        return
    esbuild = npm_tools() / "esbuild"
    # One writer at a time (the test suite starts a server per process, each bundling if stale).
    TARGET.mkdir(exist_ok=True)
    with open(TARGET / "bundle.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or not bundles_up_to_date():
            run(
                [esbuild, *PAGE_BUNDLES, "--bundle", "--format=esm", "--entry-names=[name].bundle"]
                + ["--outdir=.", "--sourcemap", "--log-level=warning"],
                cwd=WEB,
            )


def rebundle_on_change(every: float = 1.0) -> None:
    """While ``invoke serve`` runs: bundle the page again whenever one of its modules changes
    (looked at every ``every`` seconds), so that an edit shows at the next reload. A module that
    does not bundle is reported and the last good bundles are served."""

    def stamp() -> list[tuple[str, int]]:
        return [(p.name, p.stat().st_mtime_ns) for p in page_modules()]

    def watch() -> None:
        seen = stamp()
        while True:
            time.sleep(every)
            now = stamp()
            if now != seen:
                seen = now
                try:
                    bundle_page(force=True)
                    log("a module of web/ changed: bundled the page again")
                except Exit as e:
                    log(f"a module of web/ changed and does not bundle, serving the last bundles: {e}")

    threading.Thread(target=watch, name="rebundle", daemon=True).start()


def write_static_site(models_dir: Path = MODEL_DIR) -> None:
    """web/config.json and web/models/: what `invoke serve` answers for /config.json and
    /models/, written as files, and the page's bundles (``bundle_page``), so that any static
    server of web/ (`python -m http.server` in web/, a static host) serves a page that predicts
    and switches models. All are build outputs (ignored by git); the CPU builds are offered,
    wgpu only by `invoke serve --webgpu`."""
    from server.static import list_models, page_config

    bundle_page()

    listing = list_models(models_dir, weights_path())
    folder = WEB / "models"
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.safetensors"):
        if stale.name not in listing.files:
            stale.unlink()
    for name, source in listing.files.items():
        copy = folder / name
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)
    offered = [b for b in built_backends() if b not in GPU_BACKENDS]
    config = page_config(DEFAULT_BACKEND, offered, listing)
    (WEB / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    log(f"wrote web/config.json (builds: {', '.join(offered) or 'none'}) and web/models/ ({len(listing.files)} models)")


# --- tasks ------------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    help={
        "arch": "architecture: cnn (default), mlp, lenet5, resnet or capsnet (mnist_common/plan.py)",
        "epochs": "passes over the 55,000 training images (default 16)",
        "seed": "random seed (default 0); same seed, same machine, same threads: same model",
        "augment": "augmentation preset: draw (default: affine + stroke width, slant, elastic), affine or none",
        "clean_epochs": "the last N epochs train on unaugmented images (default 3)",
        "ema_decay": "decay of the weights' moving average, per step (default 0.9995; 0: off)",
        "label_smoothing": "cross-entropy label smoothing (default 0)",
        "resume": "continue the run killed in --out-dir from its last epoch checkpoint",
        "limit": "train on the first N images only (quick runs)",
        "test_limit": "score each epoch on the first N test images only (quick runs; default: all 10,000)",
        "extra_samples": "a sample database (e.g. data/samples.db): its drawings join training, but for one "
        "writer in 5, held out; `invoke evaluate --samples` then scores the model on those",
        "extra_repeat": "times each collected drawing is seen per epoch (default 10)",
        "writers": "add the digits of N synthetic writers written from MNIST's training digits "
        "(trainer/synthetic/writers.py; default 0: none)",
        "writers_per_class": "digits per class of each synthetic writer (default 5)",
        "styles": "add N digits in styles MNIST lacks (trainer/synthetic/styles.py; default 15000, measured best; 0: none)",
        "redrawn": "add N MNIST training digits redrawn with the page's kind of pen (trainer/synthetic/redraw.py; "
        "default 0: none)",
        "outliers": "outlier exposure: N non-digits (trainer/synthetic/nondigits.py) trained toward a "
        "uniform softmax (default 20000; 0: off)",
        "outlier_weight": "weight of the outlier-exposure loss (default 0.5, as Hendrycks et al. 2019)",
        "outlier_batch": "non-digits per training step (default 64)",
        "holdout": "MNIST training images 55,000-59,999 held out for calibrating the thresholds "
        "(default 5000; 0: train on all 60,000)",
        "init": "fine-tune: start from this weights file of the same architecture (default: random init)",
        "nproc": "data-parallel processes (torchrun + DistributedDataParallel; gloo on CPU, NCCL on "
        "GPUs; default 1). --resume needs the same N",
        "threads": "torch threads (default: all cores)",
        "device": "cpu (default), cuda, cuda:N or auto",
        "data_dir": "MNIST folder (default data/); fetched and md5-checked when missing",
        "out_dir": "where model.safetensors, metrics.json and checkpoint.pt go (default models/)",
    },
)
def train(
    c,
    arch=None,
    epochs=None,
    seed=None,
    augment=None,
    clean_epochs=None,
    ema_decay=None,
    label_smoothing=None,
    resume=False,
    limit=None,
    test_limit=None,
    threads=None,
    device=None,
    data_dir=None,
    out_dir=None,
    extra_samples=None,
    extra_repeat=None,
    writers=None,
    writers_per_class=None,
    styles=None,
    redrawn=None,
    outliers=None,
    outlier_weight=None,
    outlier_batch=None,
    holdout=None,
    init=None,
    nproc=None,
):
    """Train a model; write its weights + metrics to models/ (and, for the default cnn, the Rust fixture).

    --arch cnn (default) writes model.safetensors + metrics.json; mlp, lenet5, resnet and capsnet
    write <arch>.safetensors + <arch>.metrics.json beside it (trainer.model.ARCHITECTURES).
    --nproc N trains data-parallel in N processes (torchrun, DistributedDataParallel).
    """
    from trainer import data
    from trainer.fixtures import write_fixture
    from trainer.model import DEFAULT_ARCHITECTURE
    from trainer.train import DEFAULT_OUT_DIR, Config, default_out_dir, launch
    from trainer.train import train as run_training

    data_path = Path(data_dir) if data_dir else data.DEFAULT_DATA_DIR
    out = Path(out_dir) if out_dir else DEFAULT_OUT_DIR
    try:
        config = Config.from_options(
            arch=arch,
            epochs=epochs,
            seed=seed,
            augment=augment,
            clean_epochs=clean_epochs,
            ema_decay=ema_decay,
            label_smoothing=label_smoothing,
            limit=limit,
            test_limit=test_limit,
            threads=threads,
            device=device,
            extra_samples=extra_samples,
            extra_repeat=extra_repeat,
            writers=writers,
            writers_per_class=writers_per_class,
            styles=styles,
            redrawn=redrawn,
            outliers=outliers,
            outlier_weight=outlier_weight,
            outlier_batch=outlier_batch,
            holdout=holdout,
            init=init,
            nproc=nproc,
        )
        out = Path(out_dir) if out_dir else default_out_dir(config.arch)
        if config.nproc > 1:
            status = launch(config, data_dir=data_path, out_dir=out, resume=resume)
            if status:
                raise Exit(
                    f"training failed in one of its {config.nproc} processes (exit status {status})", code=status
                )
        else:
            run_training(config, data_dir=data_path, out_dir=out, resume=resume)
    except KeyboardInterrupt:
        raise Exit(
            f"training interrupted; {out} keeps its model; `invoke train --resume` continues", code=130
        ) from None
    except (data.DataError, ValueError, FileNotFoundError) as e:
        raise Exit(f"error: {e}") from None
    if out.resolve() == DEFAULT_OUT_DIR and config.arch == DEFAULT_ARCHITECTURE:
        log(f"regenerated the Rust parity fixture: {write_fixture(out / 'model.safetensors', data_dir=data_path)}")


@task(
    help={
        "seeds": "comma-separated seeds (default 0,1,2)",
        "out_dir": "where each seed's run and summary.json go (default runs/bench-train)",
    }
)
def bench_train(c, seeds="0,1,2", out_dir=None):
    """Train with the defaults once per seed; print mean ± std test accuracy and wall time."""
    from bench.train import main as run_benchmark

    run_benchmark(["--seeds", seeds] + (["--out-dir", out_dir] if out_dir else []))


@task(
    help={
        "weights": "the model to evaluate (default models/model.safetensors)",
        "out_dir": "report folder (default reports/<weights file name>; with --all: reports/models)",
        "limit": "the first N test digits only (default 0: all 10,000); with --all also N scribbles",
        "data_dir": "MNIST folder (default data/)",
        "samples": "also score the drawings saved from the page, from this database (e.g. data/samples.db)",
        "writers": "synthetic writers in the writer-separated test set (trainer/synthetic/writers.py; default 20, 0: none)",
        "all": "compare every models/*.safetensors: comparison.json/.md/.png in reports/models/ "
        "(accuracy, calibration, out-of-distribution detection, wasm predict time) and each "
        "model's report in reports/<name>/",
    }
)
def evaluate(c, weights=None, out_dir=None, limit=0, data_dir=None, all_=False, samples=None, writers=None):
    """Accuracy on clean, augmented and redrawn MNIST test digits; plots; a markdown summary.

    --all: one comparison of every model in models/ (trainer/evaluation/compare.py).
    --samples DB: also the drawings saved from the page (mnist_common/samples.py), per writer too.
    """
    from trainer import data
    from trainer.evaluation.evaluate import DEFAULT_WEIGHTS
    from trainer.evaluation.evaluate import evaluate as run_evaluation
    from trainer.export import WeightsError

    collected = None
    if samples:
        from mnist_common.samples import StoreError, open_store

        if not Path(samples).is_file():
            raise Exit(f"error: --samples: no sample database at {samples}")
        try:
            collected = open_store(Path(samples), create=False).arrays()
        except StoreError as e:
            raise Exit(f"error: --samples: {e}") from None
    if all_:
        from trainer.evaluation.compare import CompareError, compare

        if weights:
            raise Exit("error: --all compares every model in models/; leave out --weights")
        try:
            compare(
                out_dir=Path(out_dir) if out_dir else None,
                data_dir=Path(data_dir) if data_dir else None,
                limit=int(limit),
                samples=collected,
            )
        except (CompareError, WeightsError, data.DataError, ValueError) as e:
            raise Exit(f"error: {e}") from None
        return
    try:
        run_evaluation(
            Path(weights) if weights else DEFAULT_WEIGHTS,
            Path(out_dir) if out_dir else None,
            Path(data_dir) if data_dir else None,
            limit=int(limit),
            samples=collected,
            **({"writers": int(writers)} if writers is not None else {}),
        )
    except (WeightsError, data.DataError, ValueError) as e:
        raise Exit(f"error: {e}") from None


@task(
    help={
        "weights": "the model to teach (default models/model.safetensors)",
        "writer-set": "styles (default: trainer/synthetic/styles.py, the digit styles MNIST lacks) or "
        "synthetic (trainer/synthetic/writers.py, from MNIST's test digits)",
        "writers": "writers (default 60 styles, 50 synthetic)",
        "shots": "digits per class taught (default 3); the writer's other digits are the test",
        "tune": "try the grid of teach settings on other writers of the set instead (prints it)",
    }
)
def personalize(c, weights=None, writer_set="styles", writers=None, shots=3, tune=False):
    """Teach the model each writer's hand (the page's "Teach it", natively): accuracy on that
    writer's other digits before and after, for all writers and the weak ones, MNIST accuracy
    after; reports/teach/."""
    native_module()
    from trainer.evaluation.personalize import main

    main(
        [
            *(["--weights", weights] if weights else []),
            "--writer-set",
            writer_set,
            *(["--writers", str(writers)] if writers else []),
            "--shots",
            str(shots),
            *(["--tune"] if tune else []),
        ]
    )


@task
def fixtures(c):
    """Rewrite the Rust parity fixture from models/model.safetensors."""
    from trainer.fixtures import write_fixture

    log(f"wrote {write_fixture()}")


WEIGHTS_DTYPE_HELP = (
    f"how the page's builds (fast-simd128, fast-relaxed) store their embedded weights (default "
    f"{DEFAULT_WEIGHTS_DTYPE}): int8 (per-channel scales, a quarter of f32's size), f16 (half) or "
    "f32, all widened to f32 at load; burn's builds embed f32. Given explicitly (with the dev "
    "extras), build-wasm prints the MNIST test accuracy with f32 and with this dtype"
)


@task(
    help={
        "backend": f"{', '.join(BACKENDS)} or all (default all)",
        "force": "rebuild even when up to date",
        "weights-dtype": WEIGHTS_DTYPE_HELP,
    }
)
def build_wasm(c, backend="all", force=False, weights_dtype=None):
    """Compile wasm-infer to wasm (wasm-bindgen, wasm-opt) into web/pkg/<backend>/."""
    use_weights_dtype(weights_dtype or DEFAULT_WEIGHTS_DTYPE)
    for name in requested_backends(backend):
        build_one(name, force=force)
    write_static_site()
    if weights_dtype and weights_dtype != "f32":
        from importlib.util import find_spec

        if find_spec("torch") is None:
            log("the accuracy of each weights dtype needs PyTorch: `./dev evaluate` installs it")
            return
        from trainer.evaluation.evaluate import accuracy_by_dtype

        for dtype, result in accuracy_by_dtype(weights_path(), ("f32", weights_dtype)).items():
            log(
                f"MNIST test accuracy with {dtype} weights: {result['accuracy']:.2%} "
                f"({result['errors']} errors, {result['changed']} predictions changed)"
            )


#: Builds that run in every browser with wasm SIMD: what --backend may name.
FALLBACK_BACKENDS = ("fast-simd128", *CPU_BACKENDS)


@task(
    help={
        "host": "address to bind (default 127.0.0.1: this machine only)",
        "port": "TCP port (default 8000)",
        "backend": f"the build the page falls back to when it cannot run relaxed SIMD (default "
        f"{DEFAULT_BACKEND}; or flex, ndarray); ?backend=NAME in the URL picks any built one",
        "webgpu": "also build and offer the WebGPU build (burn wgpu), for ?backend=wgpu; its first "
        "compile takes minutes, and for one small image it is slower than the CPU kernels",
        "weights-dtype": WEIGHTS_DTYPE_HELP,
        "models": "folder whose *.safetensors models the page offers (default models/), listed in "
        "/config.json and served under /models/ (read once, at start)",
        "samples-db": "SQLite file where POST /api/samples stores drawn digits (default data/samples.db; "
        "created on the first sample)",
        "workers": "uvicorn worker processes (default 1); with more, what is stale is built before serving "
        "starts, as a build in the background can only be followed by one process",
    }
)
def serve(
    c,
    host="127.0.0.1",
    port=8000,
    backend=DEFAULT_BACKEND,
    webgpu=False,
    weights_dtype=DEFAULT_WEIGHTS_DTYPE,
    models=None,
    samples_db=None,
    workers=1,
):
    """Serve web/ at http://<host>:<port> as soon as the page's fallback build is ready; the
    other stale builds (the other wasm builds, the native module behind POST /api/predict) are
    built while it is served, their output in target/logs/, their progress on the console
    (with --workers N > 1: before it is served)."""
    workers = int(workers)
    if workers < 1:
        raise Exit(f"--workers is a number of processes, at least 1, not {workers}")
    embedded = weights_path()  # the model the builds embed (the page's in --weights-dtype)
    models_dir = Path(models) if models else MODEL_DIR
    if not models_dir.is_dir():
        raise Exit(f"--models names a folder of *.safetensors files; {models_dir} is not one")
    use_weights_dtype(weights_dtype)
    if backend not in FALLBACK_BACKENDS:
        raise Exit(
            f"--backend names the fallback build: {', '.join(FALLBACK_BACKENDS)}, not {backend!r}. "
            "The page prefers fast-relaxed where the browser has relaxed SIMD; --webgpu adds wgpu."
        )
    offered = [b for b in BACKENDS if webgpu or b not in GPU_BACKENDS]
    # The fallback, the page's first choice, and any build made before (kept fresh).
    wanted = [
        name
        for name in offered
        if name == backend or name in SERVED_BACKENDS or (webgpu and name in GPU_BACKENDS) or (PKG / name).exists()
    ]
    stale = [name for name in wanted if not wasm_up_to_date(name)]
    progress = Progress()
    if backend in stale:  # the page first: every browser with wasm SIMD runs the fallback
        progress.run(f"wasm {backend}", lambda: build_one(backend, log_file=LOGS / f"wasm-{backend}.log"))
        stale.remove(backend)
    write_static_site()
    native_stale = not native_module_up_to_date()
    if native_stale:
        seconds = NATIVE_BUILD_SECONDS.read_text() if NATIVE_BUILD_SECONDS.exists() else NATIVE_COLD_BUILD_SECONDS
        progress.expect(NATIVE_JOB, float(seconds))

    def build_the_rest(server) -> None:
        """In the background, while the page is served (``server``; None: before serving):
        each build, then what it changes."""

        def wasm_builds(names: list[str]) -> None:
            for name in names:
                if progress.run(f"wasm {name}", lambda name=name: build_one(name, log_file=LOGS / f"wasm-{name}.log")):
                    write_static_site()
                    if server is not None:
                        server.config["backends"] = [b for b in built_backends() if b in offered]

        # Beside the native module: the build the page prefers (seconds: it shares every
        # compiled crate with the fallback). The builds only offered for comparison wait for
        # it, so that the API answers sooner: the 2 cores have no room to spare there.
        preferred = [name for name in stale if name in SERVED_FIRST]
        waiting = in_background("wasm builds", lambda: wasm_builds(preferred))
        if native_stale:
            progress.run(NATIVE_JOB, lambda: native_module(log_file=LOGS / "native-build.log"))
        waiting()
        wasm_builds([name for name in stale if name not in preferred])

    build_while_serving = bool(stale or native_stale)
    if workers > 1 and build_while_serving:
        # The worker processes cannot see a build this process follows (the API's 503 "being
        # built", /config.json's backends as they finish): build first, then serve.
        what = [f"wasm {name}" for name in stale] + ([NATIVE_JOB] if native_stale else [])
        log(f"--workers {workers}: building {', '.join(what)} before serving")
        build_the_rest(None)
        if native_stale and not native_module_up_to_date():
            raise Exit(
                f"--workers {workers} serves once the native module is built, and its build failed "
                "(see target/logs/native-build.log); `invoke serve` with one worker serves the page without it"
            )
        build_while_serving = False

    from server.app import serve as serve_web

    rebundle_on_change()
    serve_web(
        host=host,
        port=int(port),
        default_backend=backend,
        backends=[b for b in built_backends() if b in offered],
        models_dir=models_dir,
        embedded=embedded,
        samples_db=Path(samples_db) if samples_db else SAMPLES_DB,
        building=progress.native_status if native_stale and build_while_serving else None,
        background=build_the_rest if build_while_serving else None,
        workers=workers,
    )


#: The job name of the native module's build in ``Progress`` (and in the API's 503 answers).
NATIVE_JOB = "the native classifier mnist_infer (POST /api/predict)"


class Progress:
    """Builds that run while the page is served: one console line a minute saying what is
    still building and for how long, a line when each ends, and ``native_status`` for the
    API's 503 answers (``server.native.Building``)."""

    def __init__(self, every: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, float] = {}  # job -> time.monotonic() at its start
        self._expected: dict[str, float] = {}  # job -> seconds it is expected to take
        self._failed: dict[str, str] = {}  # job -> why
        self._every = every
        threading.Thread(target=self._tick, name="progress", daemon=True).start()

    def expect(self, job: str, seconds: float) -> None:
        """``job`` will run and takes about ``seconds`` (it counts as running from now)."""
        with self._lock:
            self._expected[job] = seconds
            self._running[job] = time.monotonic()

    def run(self, job: str, work: Callable[[], object]) -> bool:
        """Run ``work()``, timed; True when it succeeded. A failed command (Exit) is reported
        and False returned: the server keeps serving what is built."""
        with self._lock:
            start = self._running.setdefault(job, time.monotonic())
        try:
            work()
        except Exit as e:
            with self._lock:
                self._failed[job] = str(e.message)
            log(f"{job}: FAILED after {(time.monotonic() - start) / 60:.1f} min: {e.message}")
            return False
        finally:
            with self._lock:
                self._running.pop(job, None)
        seconds = time.monotonic() - start
        if seconds >= 1:
            log(f"{job}: built in {seconds / 60:.1f} min")
        return True

    def native_status(self) -> tuple[str, float | None] | None:
        """``server.native.Building`` for the native module: what and about how many seconds are left."""
        with self._lock:
            if NATIVE_JOB in self._failed:
                return f"the build of {NATIVE_JOB} failed (see target/logs/native-build.log)", None
            if NATIVE_JOB not in self._running:
                return None
            elapsed = time.monotonic() - self._running[NATIVE_JOB]
            left = max(60.0, self._expected.get(NATIVE_JOB, NATIVE_COLD_BUILD_SECONDS) - elapsed)
            return f"{NATIVE_JOB} is being built by `invoke serve` ({elapsed / 60:.0f} min so far)", left

    def _tick(self) -> None:
        while True:
            time.sleep(self._every)
            with self._lock:
                now = time.monotonic()
                running = [f"{job} ({(now - start) / 60:.0f} min)" for job, start in self._running.items()]
            if running:
                log("still building: " + ", ".join(running))


@task(
    name="samples",
    help={
        "export": "write every sample to this .npz file (pixels (N, 28, 28) uint8, labels (N,) int64, "
        "metadata: UTF-8 JSON; see mnist_common/samples.py)",
        "import": "add the samples of such a .npz file (exact duplicates are skipped)",
        "db": "the SQLite sample database (default data/samples.db)",
    },
)
def samples_task(c, export=None, import_=None, db=None):
    """The collected drawings: counts per label; --export F.npz, --import F.npz."""
    from mnist_common.samples import StoreError, open_store

    path = Path(db) if db else SAMPLES_DB
    if export and import_:
        raise Exit("give --export or --import, not both")
    try:
        if import_:
            if not Path(import_).is_file():
                raise Exit(f"--import: no such file: {import_}")
            store = open_store(path)  # created when missing: importing fills a new database
            try:
                result = store.import_npz(import_)
            except (ValueError, FileNotFoundError) as e:
                raise Exit(f"--import: nothing imported: {e}") from None
            print(f"{import_}: {result.added} samples added, {result.duplicates} duplicates skipped")
        elif not path.is_file():
            raise Exit(f"no sample database at {path} (it is made by the first POST /api/samples or --import)")
        else:
            store = open_store(path, create=False)
        if export:
            target = Path(export)
            if not target.parent.is_dir():
                raise Exit(f"--export: the folder {target.parent} does not exist")
            if target.is_dir():
                raise Exit(f"--export names a file; {target} is a folder")
            print(f"{target}: {store.export_npz(target)} samples exported")
        counts = store.label_counts()
        per_label = ", ".join(f"{label}: {n}" for label, n in counts.items())
        print(f"{path}: {sum(counts.values())} samples ({per_label})")
    except StoreError as e:
        raise Exit(str(e)) from None


def install_tools(bindgen: bool = True) -> None:
    """The tools and data the builds and the tests need: the wasm toolchain, wasm-bindgen
    (unless ``bindgen`` is false: each wasm build installs it beside cargo when it is missing),
    wasm-opt, Chromium and MNIST (what is there is left alone)."""
    wasm_toolchain()
    if bindgen:
        wasm_bindgen_cli()
    wasm_opt()
    apt_install(("chromium",), "browser tests")
    from trainer.data import ensure_mnist

    ensure_mnist()


def in_background(what: str, work: Callable[[], T]) -> Callable[[], T]:
    """Start ``work()`` in a thread; returns a function that waits for it and returns what it
    returned, or raises what it raised (an Exit from a failed command keeps its message)."""
    failure: list[BaseException] = []
    result: list = []

    def target() -> None:
        try:
            result.append(work())
        except BaseException as e:  # handed to the caller by wait()
            failure.append(e)

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()

    def wait() -> T:
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    return wait


@task
def setup(c):
    """Install everything the build and the tests need (what is there is left alone)."""
    install_tools()
    native_module(features=NATIVE_TEST_FEATURES)


@task
def nostd(c):
    """Prove the model crate is no_std: compile it for bare-metal Cortex-M4F (thumbv7em)."""
    toolchain = cross_toolchain(NOSTD_TARGET, "core,alloc")
    # One check with every backend: burn's crates are compiled once for the target, not once per
    # backend. `cargo check` is the proof: the target has no std, so any use of it in this crate
    # or a dependency fails name resolution, and a library (rlib) is never linked anyway. It
    # skips LLVM's code generation, which took ~4 of the ~5 minutes of a cold `cargo build --release`.
    log(f"no_std check of mnist-model ({', '.join(NOSTD_BACKENDS)}) for {NOSTD_TARGET} ({toolchain['route']} route)")
    run(
        [
            toolchain["cargo"],
            "check",
            "--release",
            "--target",
            NOSTD_TARGET,
            *toolchain["build_std"],
            "-p",
            "mnist-model",
            "--features",
            ",".join(NOSTD_BACKENDS),
        ],
        env=toolchain["env"],
    )


#: Cases per property and instruction set in the kernels' wasm property tests (about 1 s per
#: 100 on this 2-core machine, for 3 instruction sets and 6 properties).
KERNEL_WASM_CASES = 200


def kernel_wasm_tests(seed: int = 2026, cases: int = KERNEL_WASM_CASES) -> None:
    """The kernels' property tests (wasm-infer/mnist-kernels/tests/property) on the wasm
    instruction sets: the crate's `wasm_properties` example built for wasm32 with simd128 and
    relaxed SIMD (seconds: no burn), run in Node."""
    if shutil.which("node") is None:
        raise Exit("the kernels' wasm property tests run in Node.js: install it")
    toolchain = wasm_toolchain()
    log(f"the kernels' property tests in wasm: scalar, simd128, relaxed SIMD ({toolchain['route']} route)")
    release = cargo_wasm_release(
        toolchain, ["-p", "mnist-kernels", "--example", "wasm_properties", "--features", "relaxed-simd"]
    )
    module = release / "examples" / "wasm_properties.wasm"
    script = ROOT / "wasm-infer" / "mnist-kernels" / "examples" / "wasm_properties.mjs"
    from bench.node import node_wasm_flags

    run(["node", *node_wasm_flags(), script, module, str(seed), str(cases)])


@task(
    help={
        "seed": "draws other cases (default 2026, as `invoke test`)",
        "cases": f"cases per property and instruction set in wasm (default {KERNEL_WASM_CASES}); natively "
        "each test has its own count (MNIST_KERNELS_CASES overrides it)",
    }
)
def test_kernels(c, seed=2026, cases=KERNEL_WASM_CASES):
    """The SIMD kernels' property tests against an f64 reference: natively on every instruction
    set this CPU has (`cargo test -p mnist-kernels`), then in wasm on simd128 and relaxed SIMD
    (Node). No burn: about a minute cold."""
    run(
        ["cargo", "test", "--profile", NATIVE_PROFILE, "-p", "mnist-kernels", "--features", "std"],
        env={**os.environ, "MNIST_KERNELS_SEED": str(seed)},
    )
    kernel_wasm_tests(seed=int(seed), cases=int(cases))


#: The tests `invoke test --quick` runs: no native module, no wasm, no browser, no training.
QUICK_TESTS = "not native and not browser and not slow"


@task
def lint(c):
    """ruff (lint and format) on the Python, rustfmt on the Rust, clippy on the kernels crate:
    checks only, changes nothing (`ruff check --fix . && ruff format . && cargo fmt` fix what
    they can)."""
    ruff = [sys.executable, "-m", "ruff"]
    run([*ruff, "check", "."])
    run([*ruff, "format", "--check", "."])
    run(["cargo", "fmt", "--all", "--check"])
    # Clippy on mnist-kernels only: it has no dependency, so this takes seconds (the other
    # crates would compile burn first). Its own target dir, so that it never waits on a build.
    if not output(["cargo", "clippy", "--version"]):
        log("cargo clippy is not installed: the kernels crate is not linted")
        return
    run(
        [
            "cargo",
            "clippy",
            "-p",
            "mnist-kernels",
            "--all-targets",
            "--features",
            "std",
            "--",
            "-D",
            "warnings",
        ],
        env={**os.environ, "CARGO_TARGET_DIR": str(TARGET / "clippy")},
    )


@task(
    help={
        "quick": "lint and the Python tests that need no native module, no wasm, no browser "
        "and no training run (a few minutes)"
    }
)
def test(c, quick=False):
    """The whole suite: lint, Rust parity tests, the no_std proof, Python and browser tests."""
    if quick:
        lint(c)
        log(f"Python tests: -m '{QUICK_TESTS}'")
        run([sys.executable, "-m", "pytest", "-n", "auto", "--dist", "loadfile", "-m", QUICK_TESTS])
        return
    lint(c)
    # The native module (burn compiled for this CPU) builds beside everything else, from the
    # start: it needs only cargo and maturin, shares no compiled crate with the wasm builds (burn
    # for wasm32), and each alone leaves a core idle for long stretches (chains of crates that
    # wait for each other, one-unit LTO links, wasm-opt, downloads). The wasm-bindgen CLI is
    # compiled beside the first wasm build's cargo (`build_one`), not before it.
    native = in_background(
        "native module", lambda: native_module(log_file=LOGS / "native-build.log", features=NATIVE_TEST_FEATURES)
    )
    try:
        install_tools(bindgen=False)
        build_wasm(c, backend="all")
    finally:
        native()
    log(
        "Rust: model vs PyTorch on real MNIST digits, burn's CPU backends and our kernels on every "
        "instruction set this CPU has (wgpu: in the browser tests); the kernels' property tests"
    )
    # The native module's profile, and mnist-infer named for its features (it has no Rust tests
    # of its own): the tests then reuse every dependency `native_module` compiled. mnist-kernels
    # gets `std` from mnist-model's, so its property tests run on AVX2 + FMA where the CPU has it.
    features = [f"mnist-model/{f}" for f in CPU_BACKENDS + ("simd", "fast", "std")]
    features += [f"mnist-infer/{f}" for f in NATIVE_TEST_FEATURES]
    run(
        [
            "cargo",
            "test",
            "--profile",
            NATIVE_PROFILE,
            "-p",
            "mnist-model",
            "-p",
            "mnist-infer",
            "-p",
            "mnist-kernels",
            "--features",
            ",".join(features),
        ]
    )
    kernel_wasm_tests()
    nostd(c)
    log("Python and browser tests")
    # One worker per core, a test file per worker at a time (its module fixtures built once):
    # one process alone keeps one of 2 cores busy, as the tests wait on Chromium and servers.
    # The native module is there now: a test that cannot import it fails instead of skipping.
    run(
        [sys.executable, "-m", "pytest", "-n", "auto", "--dist", "loadfile"],
        env={**os.environ, "MNIST_REQUIRE_NATIVE": "1"},
    )


@task(
    positional=["images"],
    help={
        "images": "image files (PNG, JPEG, ...; any size, either polarity): one path, a comma-separated "
        "list, or a quoted glob such as 'digits/*.png'",
        "json": "print one JSON document instead of a line per file",
        "top": "show the K likeliest digits per file (1-10, default 1)",
    },
)
def predict(c, images, json=False, top=1):
    """Classify image files with the native Rust model and the page's MNIST preprocessing."""
    import glob

    native_module()
    from server.classify import main as classify_main

    paths = []
    for item in filter(None, images.split(",")):
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        paths += matches or [item]  # a pattern matching nothing is reported as a missing file
    code = classify_main([*paths, "--top", str(top)] + (["--json"] if json else []))
    if code:
        raise Exit(code=code)


@task(help={"images": "MNIST test digits per backend (default 1000)"})
def bench(c, images=1000):
    """Median in-browser predict time per backend vs ONNX Runtime Web; wasm sizes; first prediction."""
    setup(c)
    build_wasm(c, backend="all")
    from bench.page import main as run_bench

    run_bench(images=int(images))


@task(
    help={
        "requests": "requests per measurement (default 1000)",
        "concurrency": "client threads for the concurrent runs (default 8)",
    }
)
def bench_api(c, requests=1000, concurrency=8):
    """POST /api/predict requests/s and latency; native Rust vs PyTorch predict time per image."""
    native_module(features=("flex",))  # burn's flex, compared with our kernels
    from bench.api import main as run_api_bench

    run_api_bench(requests=int(requests), concurrency=int(concurrency))
