//! The kernels' property tests (`tests/property/`) as a wasm module, for the wasm instruction
//! sets: scalar, simd128 and, built with `--features relaxed-simd`, relaxed SIMD.
//!
//! A plain module, no wasm-bindgen: it imports `env.report(ptr, len)` (one UTF-8 line of the
//! report, in the module's memory) and exports
//! `run_property_tests(seed: u64, cases: u32) -> u32`, which runs `cases` cases of every
//! property on every instruction set compiled in and returns how many failed.
//! `examples/wasm_properties.mjs` runs it in Node; `invoke test` builds and runs both:
//!
//! ```text
//! cargo build --release --target wasm32-unknown-unknown -p mnist-kernels \
//!     --example wasm_properties --features relaxed-simd     # RUSTFLAGS: -C target-feature=+simd128
//! node --experimental-wasm-relaxed-simd wasm-infer/mnist-kernels/examples/wasm_properties.mjs \
//!     target/.../wasm32-unknown-unknown/release/examples/wasm_properties.wasm
//! ```
//!
//! Natively this example is an empty library (the native tests are `tests/properties.rs`).
#![cfg(target_arch = "wasm32")]

#[path = "../tests/property/mod.rs"]
mod property;

use mnist_kernels::Isa;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    /// Print one line: `len` bytes of UTF-8 at `ptr`.
    fn report(ptr: *const u8, len: usize);
}

fn say(line: &str) {
    // SAFETY: the host reads `line.len()` bytes at `line.as_ptr()`, inside this module's
    // memory, before returning.
    unsafe { report(line.as_ptr(), line.len()) }
}

/// Run `cases` cases of every property on every instruction set this module has; reports a
/// line per property and instruction set, the first failures of each, and a last line
/// `kernels: N passed, M failed` (cases); returns the number of failed cases.
#[unsafe(no_mangle)]
pub extern "C" fn run_property_tests(seed: u64, cases: u32) -> u32 {
    // A panic (a kernel's assertion) traps the module: say why first.
    std::panic::set_hook(Box::new(|info| say(&format!("panic: {info}"))));
    let (mut passed, mut failed) = (0, 0);
    for property in property::PROPERTIES {
        for &isa in Isa::ALL.iter().filter(|isa| isa.available()) {
            let failures = property::run(property, isa, seed, cases as usize);
            say(&format!(
                "{} on {}: {cases} cases, {} failed",
                property.name,
                isa.name(),
                failures.len()
            ));
            failures.iter().take(5).for_each(|f| say(f));
            passed += cases as usize - failures.len();
            failed += failures.len();
        }
    }
    say(&format!(
        "seed {seed}, {cases} cases per property and instruction set"
    ));
    say(&format!("kernels: {passed} passed, {failed} failed"));
    failed as u32
}
