"""The kernels' GELU (wasm-infer/mnist-kernels/src/gelu.rs): its constants are the fit that
fit_gelu.py makes, and that fit, evaluated in f32 as the kernels evaluate it, is within the bound
the module documents. (The Rust unit tests hold the compiled GELU itself to the same bound on every
instruction set; this file holds the constants to where they come from.)"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mnist_common.paths import ROOT


@pytest.fixture(scope="module")
def fit_gelu():
    spec = importlib.util.spec_from_file_location("fit_gelu", ROOT / "wasm-infer" / "mnist-kernels" / "fit_gelu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fitted(fit_gelu):
    return fit_gelu.fit()


@pytest.fixture(scope="module")
def rust(fit_gelu):
    return fit_gelu.rust_constants()


def test_the_rust_constants_are_the_fit(fit_gelu, fitted, rust):
    assert rust["CLAMP"] == fit_gelu.CLAMP
    for name, want in zip(("ERF_P", "ERF_Q"), fitted):
        got = rust[name]
        assert got.shape == want.shape, name
        # The same f32 values, but for a last bit that another BLAS may round the other way.
        np.testing.assert_allclose(got, want, rtol=3e-7, err_msg=f"{name}: rerun fit_gelu.py")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_the_fitted_gelu_in_f32_is_within_the_bound(fit_gelu, fitted, rust, fused):
    """Within src/gelu.rs's BOUND, the bound its tests hold the compiled GELU to."""
    error, at = fit_gelu.max_error(*fitted, fused=fused)
    assert error <= rust["BOUND"], f"|error| {error:.3e} at x = {at}"
    # The bound is not loose: rounding makes the error at least half of it somewhere.
    assert error >= rust["BOUND"] / 2


def test_the_check_catches_a_worse_fit(fit_gelu, fitted, rust):
    p, q = fitted
    worse = p.copy()
    worse[1] *= np.float32(1 + 1e-5)  # one coefficient a little off
    assert fit_gelu.max_error(worse, q, fused=True)[0] > rust["BOUND"]
