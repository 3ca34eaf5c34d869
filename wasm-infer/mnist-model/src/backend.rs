//! The backends a build can run on: burn's (ndarray, flex, wgpu) and this project's kernels
//! on each instruction set, chosen at run time by name.

use alloc::format;
use alloc::string::{String, ToString};

use burn::prelude::*;

#[cfg(feature = "fast")]
use crate::kernels::Isa;
use crate::weights::LoadError;

/// A backend compiled into this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// burn-ndarray (deprecated by burn 0.22 in favour of flex; built without SIMD, which
    /// does not compile without std in 0.22.1).
    #[cfg(feature = "ndarray")]
    NdArray,
    /// burn-flex: burn's pure-Rust CPU backend (SIMD kernels with the `simd` feature).
    #[cfg(feature = "flex")]
    Flex,
    /// burn-wgpu: compute shaders on the GPU through wgpu (WebGPU in a browser).
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// This project's own SIMD kernels on the given instruction set (the weights are read into
    /// a [`Network`] without burn: [`LoadNetwork::from_safetensors`]).
    #[cfg(feature = "fast")]
    Fast(Isa),
}

impl Backend {
    /// Every backend compiled into this build (the fast kernels once per instruction set
    /// compiled in, whether this CPU has it or not: see [`Backend::available`]).
    pub const ALL: &'static [Backend] = &[
        #[cfg(feature = "ndarray")]
        Backend::NdArray,
        #[cfg(feature = "flex")]
        Backend::Flex,
        #[cfg(feature = "wgpu")]
        Backend::Wgpu,
        #[cfg(feature = "fast")]
        Backend::Fast(Isa::Scalar),
        #[cfg(all(feature = "fast", target_arch = "x86_64"))]
        Backend::Fast(Isa::Sse2),
        #[cfg(all(feature = "fast", target_arch = "x86_64"))]
        Backend::Fast(Isa::Avx2Fma),
        #[cfg(all(feature = "fast", target_arch = "wasm32", target_feature = "simd128"))]
        Backend::Fast(Isa::Simd128),
        #[cfg(all(
            feature = "fast",
            target_arch = "wasm32",
            target_feature = "simd128",
            feature = "relaxed-simd"
        ))]
        Backend::Fast(Isa::Relaxed),
    ];

    /// The name used on the command line, in URLs and in `window.mnist.backend`: `ndarray`,
    /// `flex`, `wgpu`, or `fast-<instruction set>` (`fast-simd128`, `fast-relaxed`,
    /// `fast-avx2`, `fast-sse2`, `fast-scalar`).
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "ndarray")]
            Backend::NdArray => "ndarray",
            #[cfg(feature = "flex")]
            Backend::Flex => "flex",
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => "wgpu",
            #[cfg(feature = "fast")]
            Backend::Fast(isa) => isa.backend_name(),
        }
    }

    /// Whether this machine can run it (only the fast kernels' AVX2 build can be missing).
    pub fn available(self) -> bool {
        match self {
            #[cfg(feature = "fast")]
            Backend::Fast(isa) => isa.available(),
            #[allow(unreachable_patterns)]
            _ => true,
        }
    }

    /// The backend called `name`, if it is compiled in and this machine can run it. `fast`
    /// names the fast kernels on the best instruction set here ([`Isa::best`]).
    pub fn from_name(name: &str) -> Option<Backend> {
        #[cfg(feature = "fast")]
        if name == "fast" {
            return Some(Backend::Fast(Isa::best()));
        }
        Self::ALL
            .iter()
            .copied()
            .find(|b| b.name() == name && b.available())
    }

    /// The burn device that runs this backend, or `None` for the fast kernels, which run
    /// without one (a build with only `fast` compiles none of burn's backends, so it has no
    /// device at all). The wgpu device is created lazily, on first use, which only works
    /// natively: in a browser use [`Backend::start`].
    pub fn device(self) -> Option<Device> {
        match self {
            #[cfg(feature = "ndarray")]
            // The design names ndarray; flex is its successor, built too.
            #[allow(deprecated)]
            Backend::NdArray => Some(Device::ndarray()),
            #[cfg(feature = "flex")]
            Backend::Flex => Some(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Some(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "fast")]
            Backend::Fast(_) => None,
        }
    }

    /// Start this backend's burn device (`None` for the fast kernels, as [`Backend::device`]).
    /// The CPU backends are ready at once; wgpu requests a GPU adapter and device (in a
    /// browser: `navigator.gpu`), which only completes asynchronously.
    ///
    /// # Errors
    /// [`LoadError::Device`] when there is no usable adapter or the device request fails.
    pub async fn start(self) -> Result<Option<Device>, LoadError> {
        match self {
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => {
                // burn registers one runtime per device: a second model (loaded at run time)
                // shares the device the first one started.
                use core::sync::atomic::{AtomicBool, Ordering};
                static STARTED: AtomicBool = AtomicBool::new(false);
                if STARTED.load(Ordering::Acquire) {
                    return Ok(self.device());
                }
                let device =
                    Device::wgpu_options()
                        .init_async()
                        .await
                        .map_err(|e| LoadError::Device {
                            backend: self.name(),
                            problem: without_js_stack(&e.to_string()),
                        })?;
                STARTED.store(true, Ordering::Release);
                Ok(Some(device))
            }
            #[allow(unreachable_patterns)] // every backend is wgpu in a wgpu-only build
            cpu => Ok(cpu.device()),
        }
    }
}

/// wgpu wraps a browser exception as `JsValue(<name>: <message>\n<stack>)`: keep
/// `<name>: <message>`, which is what a user can act on.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn without_js_stack(message: &str) -> String {
    let Some(start) = message.find("JsValue(") else {
        return message.to_string();
    };
    let inner = &message[start + "JsValue(".len()..];
    let end = inner
        .find('\n')
        .or_else(|| inner.rfind(')'))
        .unwrap_or(inner.len());
    format!("{}{}", &message[..start], &inner[..end])
}

#[cfg(test)]
mod tests {
    use super::without_js_stack;

    #[test]
    fn browser_exceptions_lose_their_stack_and_wrapper() {
        assert_eq!(
            without_js_stack(
                "Unable to request a wgpu device: JsValue(OperationError: refused\nat f (x.js:1))"
            ),
            "Unable to request a wgpu device: OperationError: refused"
        );
        assert_eq!(
            without_js_stack("JsValue(TypeError: bad)"),
            "TypeError: bad"
        );
        assert_eq!(
            without_js_stack("No adapter available"),
            "No adapter available"
        );
    }
}
