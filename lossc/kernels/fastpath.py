"""The public call of a loss without per-call overhead.

Element-wise losses (:class:`FastPath`): ``loss(...)`` and ``loss.value_and_grad(...)`` on
same-shape, C-contiguous float32/float64 NumPy arrays with reduction 'sum' or 'mean' (and
``loss_weight``; no ``weight``, ``avg_factor`` or ``grad_output``) go straight to the native
kernel that reduces the loss in the same pass as it computes the gradients, already scaled by
the reduction's factor (``lossc_sum_*`` in :mod:`lossc.native`): one pass, no element-sized
loss array.

Losses over a class axis (:class:`RowFastPath`): a C-contiguous (rows, classes) float32/float64
prediction with the classes last, row inputs as (rows,) arrays (class indices checked in one
vectorised test), element inputs of the prediction's shape and dtype or single numbers, any
reduction: straight to the native row kernel with the reduction's gradient factor folded into
its pass, then the pipeline's own reduction of the (rows,) loss — the general path's bits.

Argument checks cost a few dictionary lookups (validated parameter values and the kernels of
each variant and dtype are cached). Every other call — and any call these checks are not sure
of — returns None here and takes the general path, which raises the errors.
"""
import ctypes
import math

import numpy as np

from . import native
from .numpy_runtime import compute_dtype
from ..core.call_shapes import in_class_range
from ..core.pipeline import REDUCTIONS, Pipeline

_C_SCALARS = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
MAX_CACHED_VALUES = 4096  # validated (parameter, value) pairs kept per loss


class _CachedCall:
    """What both fast calls keep per loss: its inputs' defaults, validated parameter values,
    kernels and single-value arrays."""

    def __init__(self, loss):
        self.loss = loss
        self.n_inputs = len(loss.inputs)
        self.n_grads = len(loss.differentiable)
        self.input_defaults = [spec.get("default") for spec in loss.inputs]  # None: no default
        self.differentiable = {k for k, spec in enumerate(loss.inputs) if spec["differentiable"]}
        self.variant_defaults = {n: p["default"] for n, p in loss.parameters.items() if p["variant"]}
        self.runtime_defaults = {n: p["default"] for n, p in loss.parameters.items() if not p["variant"]}
        self._valid = {}
        self._kernels = {}
        self._constants = {}
        self._defaults = tuple(sorted(self.variant_defaults.items())), self.runtime_defaults

    def _constant(self, value, dtype):
        """(array, address): a one-element array holding ``value`` and its address, both kept
        (calls repeat the same few constants); the caller holds the array through its call."""
        key = (value, dtype)
        constant = self._constants.get(key)
        if constant is None:
            array = np.full(1, value, dtype)
            constant = array, native.address(array)
            if len(self._constants) < MAX_CACHED_VALUES:
                self._constants[key] = constant
        return constant

    def _parameters(self, kwargs):
        """(variant key, runtime values) with every value validated, or None (the runtime values
        are only read: the defaults' dict is shared)."""
        if not kwargs:
            return self._defaults
        variant, runtime = dict(self.variant_defaults), dict(self.runtime_defaults)
        for name, value in kwargs.items():
            try:
                key = (name, value.__class__, value)
                checked = self._valid.get(key)
            except TypeError:  # an unhashable value
                return None
            if checked is None:
                if name not in self.loss.parameters:
                    return None
                checked = self.loss.check_param(name, value)  # raises for a bad value
                if len(self._valid) < MAX_CACHED_VALUES:
                    self._valid[key] = checked
            (variant if name in variant else runtime)[name] = checked
        return tuple(sorted(variant.items())), runtime


class FastPath(_CachedCall):
    """The fast call of one element-wise loss (see the module docstring)."""

    def one_value_per_row(self, kwargs):
        """Whether reduction 'none' gives one loss per row of a class axis: never here."""
        return False

    def run(self, args, kwargs, reduction, loss_weight, with_grad):
        """(value, grads) — value only without ``with_grad`` — or None for the general path."""
        if reduction not in ("sum", "mean") or len(args) > self.n_inputs or not native.enabled():
            return None
        if type(loss_weight) not in (float, int) or not math.isfinite(loss_weight):
            return None  # the general path says what is wrong
        pred = args[0] if args else None
        if type(pred) is not np.ndarray or pred.dtype not in _C_SCALARS or not pred.flags.c_contiguous:
            return None
        dtype, shape, n = pred.dtype, pred.shape, pred.size
        arrays, pointers = [pred], [native.address(pred), 1]  # each array, then (address, whole array?)
        for k in range(1, self.n_inputs):
            value = args[k] if k < len(args) else self.input_defaults[k]
            if type(value) in (float, int) and k not in self.differentiable:  # one value for every element
                value, address = self._constant(value, dtype)
                pointers += [address, 0]
            elif type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape \
                    or not value.flags.c_contiguous:
                return None
            else:
                pointers += [native.address(value), 1]
            arrays.append(value)
        parameters = self._parameters(kwargs)
        if parameters is None or n == 0:
            return None
        variant, runtime = parameters
        kernel = self._kernel(variant, dtype, with_grad)
        if kernel is None:
            return None
        function, names = kernel
        factor = loss_weight / n if reduction == "mean" else loss_weight
        grads = []
        if with_grad:
            upstream, address = self._constant(factor, dtype)
            arrays.append(upstream)
            pointers += [address, 0]
            grads = [np.empty(shape, dtype) for _ in range(self.n_grads)]
        params = [runtime[name] for name in names]  # the declared argument types convert them
        total = function(n, *pointers, *params, *[native.address(g) for g in grads], native.WORKERS)
        value = np.asarray(total / n * loss_weight if reduction == "mean" else total * loss_weight, dtype)
        return (value, tuple(grads)) if with_grad else value

    def _kernel(self, variant, dtype, with_grad):
        """(ctypes function, its parameters' names in order) of the reducing kernel, or None."""
        key = (variant, dtype, with_grad)
        if key not in self._kernels:
            module = self.loss.kernels_of(np, dict(variant))
            self._kernels[key] = module.sum_kernel("forward_backward" if with_grad else "forward", dtype) \
                if hasattr(module, "sum_kernel") else None
        return self._kernels[key]


class RowFastPath(_CachedCall):
    """The fast call of one loss over a class axis (see the module docstring)."""

    def __init__(self, loss):
        super().__init__(loss)
        self.per_row = [spec["per"] == "row" for spec in loss.inputs]
        self.class_index = [bool(spec.get("class_index")) for spec in loss.inputs]
        self._row_levels = {}  # variant key → whether the loss is one value per row

    def run(self, args, kwargs, reduction, loss_weight, with_grad):
        """(value, grads) — value only without ``with_grad`` — or None for the general path."""
        if reduction not in REDUCTIONS or len(args) > self.n_inputs or not native.enabled():
            return None
        if type(loss_weight) not in (float, int) or not math.isfinite(loss_weight):
            return None
        pred = args[0] if args else None
        if type(pred) is not np.ndarray or pred.dtype not in _C_SCALARS or pred.ndim != 2 \
                or not pred.flags.c_contiguous or not pred.size:
            return None
        parameters = self._row_parameters(kwargs)
        if parameters is None:
            return None
        variant, runtime = parameters
        arrays = self._arrays(args, pred, runtime.get("ignore_index"))
        kernel = None if arrays is None else self._kernel(variant, pred.dtype, with_grad)
        if kernel is None:
            return None
        return self._launch(kernel, arrays, runtime, variant, Pipeline(None, reduction, None, loss_weight), with_grad)

    def one_value_per_row(self, kwargs):
        """Whether a call with these parameters has one loss per row (so, for reduction 'none',
        each row's gradients are the pass's times that row's incoming gradient)."""
        parameters = self._row_parameters(kwargs)
        return parameters is not None and self._row_level(parameters[0])

    def _row_parameters(self, kwargs):
        """(variant key, runtime values) of a call whose class axis is the last one (``axis`` 1 or
        −1 where the loss takes it), validated; None for any other call."""
        if "axis" in kwargs:
            if self.loss.class_axis != "parameter" or type(kwargs["axis"]) is not int or kwargs["axis"] not in (1, -1):
                return None
            kwargs = {name: value for name, value in kwargs.items() if name != "axis"}
        return self._parameters(kwargs)

    def _arrays(self, args, pred, ignore_index):
        """[(array, its address, row stride, class stride)] of every input in spec order, or None."""
        rows, classes = pred.shape
        laid_out = [(pred, native.address(pred), classes, 1)]
        for k in range(1, self.n_inputs):
            value = args[k] if k < len(args) else self.input_defaults[k]
            if self.per_row[k]:
                if type(value) is not np.ndarray or value.shape != (rows,) or value.dtype.kind not in "iuf":
                    return None
                if self.class_index[k] and not _class_indices(value, classes, ignore_index):
                    return None  # the general path names the bad index
                row_values = np.ascontiguousarray(value, pred.dtype)
                laid_out.append((row_values, native.address(row_values), 1, 0))
            elif type(value) in (float, int) and k not in self.differentiable:
                laid_out.append((*self._constant(value, pred.dtype), 0, 0))
            elif type(value) is np.ndarray and value.dtype == pred.dtype and value.shape == pred.shape \
                    and value.flags.c_contiguous:
                laid_out.append((value, native.address(value), classes, 1))
            else:
                return None
        return laid_out

    def _launch(self, kernel, arrays, runtime, variant, pipeline, with_grad):
        """Run the row kernel with the pipeline's gradient factor in its pass; the pipeline's
        reduction of its loss."""
        function, parameter_names = kernel
        pred = arrays[0][0]
        rows, classes = pred.shape
        compute = compute_dtype(pred.dtype)
        loss_shape = (rows,) if self._row_level(variant) else (rows, classes)
        if with_grad:
            factor = pipeline.upstream(np, loss_shape, compute)
            arrays = arrays + [(*self._constant(float(factor), pred.dtype), 0, 0)]
        outputs = [np.empty(loss_shape, pred.dtype)] + [np.empty((rows, classes), pred.dtype)
                                                        for _ in range(self.n_grads if with_grad else 0)]
        pointers = []
        for _, address, row_stride, class_stride in arrays:
            pointers += [address, row_stride, class_stride]
        params = [runtime[name] for name in parameter_names]  # the declared argument types convert them
        function(rows, classes, *pointers, *params, *[native.address(o) for o in outputs], native.WORKERS)
        value = pipeline.apply(np, outputs[0], compute)
        return (value, tuple(outputs[1:])) if with_grad else value

    def _row_level(self, variant):
        if variant not in self._row_levels:
            self._row_levels[variant] = self.loss.loss_level(dict(variant)) == "row"
        return self._row_levels[variant]

    def _kernel(self, variant, dtype, with_grad):
        """(ctypes function, parameter names in its order) of the row kernel, or None — also where
        its arrays are not the spec's inputs in order (and grad_output), as :meth:`_arrays` lays out."""
        key = (variant, dtype, with_grad)
        if key not in self._kernels:
            module = self.loss.kernels_of(np, dict(variant))
            kind = "forward_backward" if with_grad else "forward"
            kernel = module.row_kernel(kind, dtype) if hasattr(module, "row_kernel") else None
            expected = [spec["name"] for spec in self.loss.inputs] + (["grad_output"] if with_grad else [])
            self._kernels[key] = None if kernel is None or list(kernel[1]) != expected else (kernel[0], kernel[2])
        return self._kernels[key]


def _class_indices(labels, classes, ignore_index):
    """Whether every label is a whole class index in [0, classes) or the ignore_index."""
    valid = in_class_range(labels, classes, ignore_index)
    if labels.dtype.kind == "f":
        valid &= np.floor(labels) == labels
    return bool(valid.all())
