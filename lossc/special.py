"""Special functions the generated NumPy kernels need and NumPy lacks (lgamma, digamma)."""
import math

import numpy as np

_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def lgamma(x):
    """log|Γ(x)| element-wise, in x's dtype."""
    x = np.asarray(x)
    return _lgamma(x).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def digamma(x):
    """ψ(x) = d/dx log Γ(x) element-wise: recurrence to x ≥ 6, then the asymptotic series."""
    x = np.asarray(x, dtype=np.result_type(x, np.float32))
    reflect = x < 0.5
    z = np.where(reflect, 1.0 - x, x)
    shift = np.zeros_like(z)
    for _ in range(6):
        small = z < 6
        shift = shift - np.where(small, 1.0 / z, 0)
        z = np.where(small, z + 1, z)
    inv2 = 1.0 / (z * z)
    series = inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (1 / 240 - inv2 / 132))))
    value = np.log(z) - 0.5 / z - series + shift
    with np.errstate(all="ignore"):
        return np.where(reflect, value - np.pi / np.tan(np.pi * x), value)
