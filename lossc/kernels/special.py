"""Special functions the generated NumPy kernels call where NumPy has no ufunc (the
``lgamma`` and ``digamma`` primitives of ``lossc.compiler.primitives``).

Each takes an array (or a Python float, for parameter-only code) and an optional ``out``
buffer, as a ufunc would; float16/float32 compute in float64 and round once.
"""
import math

import numpy as np



def _lgamma_at(x):
    """math.lgamma, +inf at the poles (where math raises) as C's lgamma."""
    try:
        return math.lgamma(x)
    except ValueError:
        return math.inf


_lgamma = np.frompyfunc(_lgamma_at, 1, 1)
_SHIFT = 10  # ψ(x) = ψ(x + 10) − Σ_{k<10} 1/(x + k): from x + 10 ≥ 10.5 the series below errs < 1e-17
# B_2k / (2k) for the asymptotic series ψ(z) ≈ log z − 1/(2z) − Σ_k B_2k / (2k z^2k)
_SERIES = (1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132, -691 / 32760, 1 / 12)


def _finish(value, x, out):
    if out is None:
        return float(value) if np.ndim(x) == 0 and not isinstance(x, np.ndarray) else value.astype(_dtype(x))
    np.copyto(out, value, casting="unsafe")
    return out


def _dtype(x):
    dtype = np.asarray(x).dtype
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def lgamma(x, out=None):
    """log |Γ(x)| element-wise (+inf at the poles 0, −1, −2, …)."""
    wide = np.asarray(x, dtype=np.float64)
    value = np.asarray(_lgamma(wide), dtype=np.float64)
    return _finish(value, x, out)


def digamma(x, out=None):
    """ψ(x) = d/dx log Γ(x) element-wise: x reflected to x ≥ ½ (ψ(1 − x) − π / tan(πx)),
    shifted by :data:`_SHIFT` with the recurrence, then the asymptotic series; NaN at the
    poles. The same operations in the same order as the C code (``lossc_digamma``)."""
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        reflect = x64 < 0.5
        z = np.where(reflect, 1.0 - x64, x64)
        shift = np.zeros_like(z)
        for k in range(_SHIFT):
            shift = shift + 1.0 / (z + k)
        z = z + _SHIFT
        inverse_square = 1.0 / (z * z)
        series = np.zeros_like(z)
        for coefficient in reversed(_SERIES):
            series = (series + coefficient) * inverse_square
        value = np.log(z) - 0.5 / z - series - shift
        value = np.where(reflect, value - np.pi / np.tan(np.pi * x64), value)
        value = np.where(reflect & (x64 == np.floor(x64)), np.nan, value)
    return _finish(value, x, out)
