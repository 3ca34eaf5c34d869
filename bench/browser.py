"""How the tests and `invoke bench` launch headless Chromium: one set of flags, one place."""

from __future__ import annotations

import os

#: Debian's chromium (`invoke setup` installs it); $CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: Flags that behave on machines without network or GPU. WebGPU is off: no adapter.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: WebGPU without a GPU: Chromium's SwiftShader adapter, a CPU implementation of Vulkan, so its
#: timings are CPU timings. WebGPU needs a secure context: serve from http://127.0.0.1.
WEBGPU_ARGS = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + [
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
]
