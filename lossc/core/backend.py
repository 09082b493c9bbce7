"""Array dispatch: NumPy arrays run the NumPy kernels, CuPy arrays the CuPy kernels."""
import sys

import numpy as np


def _cupy_ndarray():
    """CuPy's array type when CuPy is imported (no CuPy array can exist before that), else None:
    never an import attempt per call (a failed import searches the file system every time)."""
    cupy = sys.modules.get("cupy")
    return None if cupy is None else cupy.ndarray


def array_module(*arrays):
    """``numpy`` or ``cupy`` for the given arrays; a mix of the two is a TypeError naming both."""
    cupy_type = _cupy_ndarray()
    kinds = {}
    for a in arrays:
        if a is None:
            continue
        if cupy_type is not None and isinstance(a, cupy_type):
            kinds.setdefault("cupy", type(a))
        elif isinstance(a, np.ndarray):
            kinds.setdefault("numpy", type(a))
    if len(kinds) > 1:
        raise TypeError(
            f"arrays of different libraries: {kinds['numpy'].__module__}.{kinds['numpy'].__name__} and "
            f"{kinds['cupy'].__module__}.{kinds['cupy'].__name__}; move them to one device first"
        )
    if "cupy" in kinds:
        import cupy

        return cupy
    return np


def as_arrays(*values):
    """The values as arrays of one module (NumPy or CuPy, from the arrays among them); None stays None."""
    xp = array_module(*values)
    return [None if v is None else xp.asarray(v) for v in values]


def broadcasts_to(shape, target):
    """True when an array of ``shape`` broadcasts to ``target`` without enlarging it."""
    try:
        return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


def sum_to_shape(xp, array, shape):
    """Sum ``array`` over the axes along which ``shape`` was broadcast to reach it."""
    if array.shape == tuple(shape):
        return array
    extra = array.ndim - len(shape)
    summed = array.sum(axis=tuple(range(extra))) if extra > 0 else array
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and summed.shape[i] != 1)
    return summed.sum(axis=axes, keepdims=True).reshape(shape) if axes else summed.reshape(shape)
