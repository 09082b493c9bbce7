"""The public call of an element-wise loss without per-call overhead.

``loss(...)`` and ``loss.value_and_grad(...)`` on same-shape, C-contiguous float32/float64
NumPy arrays with reduction 'sum' or 'mean' (and ``loss_weight``; no ``weight``,
``avg_factor`` or ``grad_output``) go straight to the native kernel that reduces the loss in
the same pass as it computes the gradients, already scaled by the reduction's factor
(``lossc_sum_*`` in :mod:`lossc.native`): one pass, no element-sized loss array, and
argument checks that cost a few dictionary lookups (validated parameter values and the
kernels of each variant and dtype are cached). Every other call — and any call these
checks are not sure of — returns None here and takes the general path, which raises the
errors.
"""
import ctypes
import math

import numpy as np

from . import native

_C_SCALARS = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
MAX_CACHED_VALUES = 4096  # validated (parameter, value) pairs kept per loss


class FastPath:
    """The fast call of one element-wise loss (see the module docstring)."""

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
        arrays = [pred]
        for k in range(1, self.n_inputs):
            value = args[k] if k < len(args) else self.input_defaults[k]
            if type(value) in (float, int) and k not in self.differentiable:  # one value for every element
                value = self._constant(value, dtype)
            elif type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape \
                    or not value.flags.c_contiguous:
                return None
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
        pointers = []
        for array in arrays:
            pointers += [array.ctypes.data, array is pred or array.shape == shape]
        grads = []
        if with_grad:
            pointers += [self._constant(factor, dtype).ctypes.data, 0]
            grads = [np.empty(shape, dtype) for _ in range(self.n_grads)]
        params = [runtime[name] for name in names]  # the declared argument types convert them
        total = function(n, *pointers, *params, *[g.ctypes.data for g in grads], native.WORKERS)
        value = np.asarray(total / n * loss_weight if reduction == "mean" else total * loss_weight, dtype)
        return (value, tuple(grads)) if with_grad else value

    def _constant(self, value, dtype):
        """A one-element array holding ``value`` (kept: calls repeat the same few constants)."""
        key = (value, dtype)
        array = self._constants.get(key)
        if array is None:
            array = np.full(1, value, dtype)
            if len(self._constants) < MAX_CACHED_VALUES:
                self._constants[key] = array
        return array

    def _parameters(self, kwargs):
        """(variant key, runtime values) with every value validated, or None."""
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

    def _kernel(self, variant, dtype, with_grad):
        """(ctypes function, its parameters' names in order) of the reducing kernel, or None."""
        key = (variant, dtype, with_grad)
        if key not in self._kernels:
            module = self.loss.kernels_of(np, dict(variant))
            self._kernels[key] = module.sum_kernel("forward_backward" if with_grad else "forward", dtype) \
                if hasattr(module, "sum_kernel") else None
        return self._kernels[key]
