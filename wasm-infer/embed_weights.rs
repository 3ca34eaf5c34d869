//! Build script of both bindings (wasm-infer/mnist-wasm and wasm-infer/mnist-infer): points their
//! `include_bytes!` at the weights file: `$MNIST_WEIGHTS` when set, else the committed
//! `models/model.safetensors`, and rebuilds when either changes.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=MNIST_WEIGHTS");
    let path = match std::env::var_os("MNIST_WEIGHTS") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/model.safetensors"),
    };
    let path = path.canonicalize().unwrap_or_else(|e| {
        panic!(
            "weights file {} not found ({e}): run `invoke train` or set MNIST_WEIGHTS",
            path.display()
        )
    });
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-env=MNIST_WEIGHTS_PATH={}", path.display());
}
