"""Native CPU kernels for the losses over a class axis: a generated native module's row kernels
(``KERNELS``), which follow the loss's launch plan (one reduction per row statistic, then the
fused loss-and-gradient stage) row by row on the host, from the same CUDA ``__device__``
functions the GPU runs (their loops: :func:`lossc.compiler.emit.native_emitter.row_wrapper`).

Rows are split over the library's threads; each row is read once per group of statistics
that do not depend on each other (e.g. the row max, then every sum after it) while it is in
cache (a row block per thread at most, never a rows × classes temporary), its statistics
kept in registers, then the final stage writes the loss and every gradient of the row.
Every statistic is reduced over the classes in a fixed order (GROUP lanes, then pairwise),
and every element goes through the same vector code (a last partial group padded), so a
row's bits depend on nothing but the row. Arrays reach the kernel as (pointer, row stride,
class stride) with class stride 0 or 1: a row input or a class-broadcast array is filled
into a per-thread row buffer. float16, or anything the kernel cannot take, runs the
module's NumPy kernels.
"""
import ctypes

import numpy as np

from . import native
from .native import _DTYPES, kernel_counts


def _arrays(native_module, kind):
    """Names of the array arguments of ``kind``'s kernel, in its argument order."""
    return list(native_module.INPUTS) + (["grad_output"] if kind == "forward_backward" else [])


class NativeRowModule(native.NativeKernels):
    """A module with reductions on the native row kernels where they can run (float32/float64
    (rows, classes) predictions)."""

    def _run(self, kind, args, kwargs):
        """The native kernel's outputs, or None where the NumPy kernels must run."""
        if not native.enabled():
            return None
        bound = self._binders[kind].bind(args, kwargs)
        if bound is None:
            return None
        arrays, params = bound
        pred = arrays[0]
        if pred.dtype not in _DTYPES or pred.ndim != 2 or self._native_functions() is None:
            return None
        rows, classes = pred.shape
        names = _arrays(self._native, kind)
        laid_out = [_strided(a, name in self.ROW_INPUTS or (name == "grad_output" and self.LOSS_LEVEL == "row"),
                             rows, classes, pred.dtype) for name, a in zip(names, arrays)]
        if any(a is None for a in laid_out):
            return None
        function, n_outputs = self._functions[kind, pred.dtype]
        loss_shape = (rows,) if self.LOSS_LEVEL == "row" else (rows, classes)
        outputs = [np.empty(loss_shape, pred.dtype)] + [np.empty((rows, classes), pred.dtype)
                                                        for _ in range(n_outputs - 1)]
        if not pred.size:
            return outputs
        pointers = []
        for array, row_stride, class_stride in laid_out:
            pointers += [native.address(array), row_stride, class_stride]
        function(rows, classes, *pointers, *params, *[native.address(o) for o in outputs], native.WORKERS)
        return outputs

    def row_kernel(self, kind, dtype):
        """(ctypes function, its array arguments' names in order, parameter names in order) of
        ``kind``'s row kernel for ``dtype`` (native_emitter.row_wrapper), or None where it cannot run."""
        functions = self._native_functions()
        if functions is None or dtype not in _DTYPES:
            return None
        return functions[kind, dtype][0], _arrays(self._native, kind), self._native.PARAMETERS

    def _native_functions(self):
        """{(kind, dtype): (ctypes function, outputs)}, built on first use; None if unavailable."""
        if self._functions is None:
            try:
                self._native = self._load_native_module()
            except (ImportError, OSError, NotImplementedError) as error:
                native._failures.append(f"{self.numpy_module.__name__}: {error}")
                self._functions = False
                return None
            compiled = native.library(self._native)
            self._functions = False if compiled is None else {
                (kind, dtype): (_declared(compiled, self._native, kind, dtype), kernel_counts(self._native, kind)[2])
                for kind in self._native.KERNELS for dtype in _DTYPES}
        return self._functions or None


def _declared(compiled, native_module, kind, dtype):
    """The row kernel's ctypes function with its argument types declared."""
    function = getattr(compiled, native_module.KERNELS[kind][dtype.name])
    scalar = _DTYPES[dtype]
    outputs = kernel_counts(native_module, kind)[2]
    function.restype = None
    function.argtypes = ([ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
                         * len(_arrays(native_module, kind)) + [scalar] * len(native_module.PARAMETERS)
                         + [ctypes.c_void_p] * outputs + [ctypes.c_int])
    return function


def _strided(array, per_row, rows, classes, dtype):
    """(array in ``dtype``, row stride, class stride) in elements, the class stride 0 or 1;
    None for a shape that does not fit (the NumPy kernels then say why)."""
    array = np.asarray(array)
    if array.ndim:  # a broadcast axis (stride 0) is one value along it: cast that, not the whole view
        array = array[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in array.strides)]
    if array.dtype != dtype:
        array = array.astype(dtype)
    if per_row and array.ndim:
        if array.size == 1:
            return array.reshape(1), 0, 0
        if array.shape not in ((rows,), (rows, 1)):
            return None
        return np.ascontiguousarray(array.reshape(rows)), 1, 0
    if array.ndim == 0:
        return array.reshape(1), 0, 0
    if array.ndim > 2:
        return None
    array = array.reshape((1,) * (2 - array.ndim) + array.shape)
    if array.shape[0] not in (1, rows) or array.shape[1] not in (1, classes):
        return None
    itemsize = array.itemsize
    row_stride = array.strides[0] // itemsize if array.shape[0] != 1 else 0
    class_stride = array.strides[1] // itemsize if array.shape[1] != 1 else 0
    if class_stride not in (0, 1) or array.strides[0] % itemsize:
        array = np.ascontiguousarray(array)
        row_stride = array.shape[1] if array.shape[0] != 1 else 0
        class_stride = 1 if array.shape[1] != 1 else 0
    return array, row_stride, class_stride
