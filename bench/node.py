"""How `invoke test-kernels` and the benchmarks launch Node.js on our wasm: one place for its flags."""

from __future__ import annotations

import subprocess


def node_wasm_flags() -> list[str]:
    """Node's flag for relaxed SIMD: Node 20 validates it only with
    --experimental-wasm-relaxed-simd; a Node that has dropped the flag has it on by default."""
    flag = "--experimental-wasm-relaxed-simd"
    return [flag] if subprocess.run(["node", flag, "-e", ""], capture_output=True).returncode == 0 else []
