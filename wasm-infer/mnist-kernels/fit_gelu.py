"""Fit the rational approximation of erf that the kernels' GELU uses (src/gelu.rs), and check it.

    python wasm-infer/mnist-kernels/fit_gelu.py            # print the Rust constants and their errors
    python wasm-infer/mnist-kernels/fit_gelu.py --every    # also every f32 in ±[2^-2, 12) (a minute)

The kernels compute GELU as `x/2 + x * e(x)` with `e(x) = erf(x / √2) / 2 ≈ x P(x²) / Q(x²)` for
|x| <= CLAMP, and ±1/2 beyond it (where |gelu(x) - max(x, 0)| < 3e-8). P and Q (6 coefficients each,
Q's constant 1) minimise the largest |x| * |error of e| on [0, CLAMP], |x| weighing the error as the
GELU carries it: a linearised least-squares fit, reweighted by Lawson's rule towards the minimax
(C. L. Lawson, "Contributions to the theory of linear least maximum approximation", 1961; as in
Cheney, "Introduction to approximation theory", §2.7). The fit's own error, its coefficients
rounded to f32, is below 6e-8 in e and 1e-7 in the GELU; the rest of the GELU's error is f32
rounding, which this script measures by evaluating the kernels' operations in the kernels' order
with numpy's float32, the multiply-adds fused (AVX2, relaxed SIMD) or not (SSE2, simd128, the
scalar fallback).

`tests/test_gelu_fit.py` reruns the fit and holds src/gelu.rs's constants to it.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np

#: Where the rational form ends: erf(CLAMP / √2) / 2 rounds to 1/2 in f32, and beyond it the GELU is
#: x or 0 to within CLAMP * Φ(-CLAMP) = 2.6e-8.
CLAMP = 5.75
#: Coefficients of P and of Q (each a polynomial in x²).
TERMS = 6
#: Lawson's reweighting steps: the largest error stops falling after about 40.
STEPS = 80
GELU_RS = Path(__file__).resolve().parent / "src" / "gelu.rs"


def fit(clamp: float = CLAMP, terms: int = TERMS, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """P and Q as float32 arrays of `terms` coefficients of x², constant first (Q[0] = 1).

    Unknowns p_0.., q_1..: the residual x P(x²) - e(x) Q(x²) is linear in them; each step solves the
    least-squares problem weighted by |x| / |Q_previous| (so that it approximates the error of
    x P / Q, weighted by |x|) times Lawson's weights, which grow where the error is largest.
    """
    x = np.unique(np.concatenate([clamp * (1 - np.cos(np.linspace(0, np.pi, 8000))) / 2, np.linspace(0, clamp, 8000)]))
    x = x[x > 0]
    e = np.array([math.erf(v / math.sqrt(2)) / 2 for v in x])
    t = (x / clamp) ** 2  # the fit runs on [0, 1], converted back below
    weight = np.maximum(x, 1.0)
    lawson, q_previous = np.ones_like(x), np.ones_like(x)
    best = (math.inf, None, None)
    for _ in range(steps):
        powers = t[:, None] ** np.arange(terms)
        a = np.concatenate([x[:, None] * powers, -e[:, None] * powers[:, 1:]], axis=1)
        row_weight = lawson * weight / np.abs(q_previous)
        solution, *_ = np.linalg.lstsq(a * row_weight[:, None], e * row_weight, rcond=None)
        p, q = solution[:terms], np.concatenate([[1.0], solution[terms:]])
        q_previous = powers @ q
        error = (x * (powers @ p) / q_previous - e) * weight
        if np.abs(error).max() < best[0]:
            best = (np.abs(error).max(), p, q)
        lawson = lawson * np.abs(error)
        lawson /= lawson.mean()
    _, p, q = best
    scale = clamp ** (-2.0 * np.arange(terms))  # t^k = x^(2k) / clamp^(2k)
    return (p * scale).astype(np.float32), (q * scale).astype(np.float32)


def gelu_f32(x: np.ndarray, p: np.ndarray, q: np.ndarray, fused: bool, clamp: float = CLAMP) -> np.ndarray:
    """src/gelu.rs's `gelu` on float32 `x`, operation by operation (a fused multiply-add as one
    rounding: the exact product of two f32 is an f64, and the sum rounds once more to f32)."""
    f32 = np.float32

    def mul_add(a, b, c):
        if fused:
            return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(f32)
        return (a * b).astype(f32) + c

    x = x.astype(f32)
    xc = np.minimum(np.maximum(x, f32(-clamp)), f32(clamp))
    x2 = xc * xc
    num, den = np.full_like(x, p[-1]), np.full_like(x, q[-1])
    for c in p[-2::-1]:
        num = mul_add(num, x2, np.full_like(x, c))
    for c in q[-2::-1]:
        den = mul_add(den, x2, np.full_like(x, c))
    half_erf = np.minimum(np.maximum((xc * num) / den, f32(-0.5)), f32(0.5))
    return mul_add(x, half_erf, x * f32(0.5))


def gelu_f64(x: np.ndarray) -> np.ndarray:
    """PyTorch's exact GELU `x Φ(x)` in f64 (torch.special.erfc: no cancellation for x < 0)."""
    import torch

    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    return (0.5 * t * torch.special.erfc(-t / math.sqrt(2))).numpy()


def max_error(p: np.ndarray, q: np.ndarray, fused: bool, every: bool = False) -> tuple[float, float]:
    """Largest |gelu_f32 - gelu_f64| and where: on [-12, 12] in steps of 2^-12 (what src/gelu.rs's
    unit test samples), or with `every`, on every f32 of ±[2^-2, 12) as well (where the error is
    largest: below 1/4 the GELU is about x/2 and rounding is proportionally smaller)."""
    points = [np.arange(-12 * 4096, 12 * 4096 + 1, dtype=np.float64) / 4096]
    if every:
        bits = np.arange(*np.array([0.25, 12.0], dtype=np.float32).view(np.uint32), dtype=np.uint32)
        points += [bits.view(np.float32), -bits.view(np.float32)]
    worst = (0.0, 0.0)
    for chunk in (c for x in points for c in np.array_split(x, max(1, len(x) // 2_000_000))):
        x = chunk.astype(np.float32)
        error = np.abs(gelu_f32(x, p, q, fused).astype(np.float64) - gelu_f64(x))
        i = int(error.argmax())
        worst = max(worst, (float(error[i]), float(x[i])))
    return worst


def rust_constants(path: Path = GELU_RS) -> dict[str, np.ndarray | float]:
    """What src/gelu.rs writes down of this fit: the arrays `ERF_P` and `ERF_Q` (float32), `CLAMP`,
    and `BOUND`, the error its tests allow (float)."""
    source = path.read_text()
    number = r"-?[\d_.]+(?:e-?\d+)?"

    def scalar(name: str) -> float:
        return float(re.search(rf"const {name}: f\d\d = ({number});", source)[1].replace("_", ""))

    def array(name: str) -> np.ndarray:
        body = re.search(rf"const {name}: \[f32; \d+\] = \[(.*?)\];", source, re.S)[1]
        return np.array([float(v.replace("_", "")) for v in re.findall(number, body)], np.float32)

    return {"ERF_P": array("ERF_P"), "ERF_Q": array("ERF_Q"), "CLAMP": scalar("CLAMP"), "BOUND": scalar("BOUND")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", action="store_true", help="check every f32 in ±[2^-2, 12) too")
    args = parser.parse_args()
    p, q = fit()
    for name, values in (("ERF_P", p), ("ERF_Q", q)):
        print(f"const {name}: [f32; {len(values)}] = [{', '.join(repr(float(v)) for v in values)}];")
    for fused in (True, False):
        error, at = max_error(p, q, fused, every=args.every)
        print(f"{'fused' if fused else 'unfused'} multiply-adds: max |error| {error:.3e} at x = {at}")


if __name__ == "__main__":
    main()
