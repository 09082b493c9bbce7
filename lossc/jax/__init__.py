"""lossc in JAX: every loss a ``jax.custom_vjp`` over its generated jax.numpy kernels.

``lossc.jax.get(name)`` (also ``lossc.jax.<name>``) returns a function with the inputs,
parameters and pipeline arguments of ``lossc.get(name)`` (``weight``, ``reduction``,
``avg_factor``, ``loss_weight``, and ``axis`` for the losses over a class axis) on JAX
arrays. Its forward runs the fused loss-and-gradient program once and keeps the gradients
(already scaled by the pipeline's factor) as residuals; the backward multiplies them by the
cotangent — so ``jax.grad`` of a lossc loss is lossc's own exact gradient, never an
autodiff of the formula. For reduction='none' where one loss value depends on several
elements (an element loss over a class axis) the backward runs the fused program once more
with the cotangent as the element weight. It works under ``jax.jit``, ``jax.grad``,
``jax.vmap`` and with sharded inputs (the programs are plain jax.numpy; XLA partitions them).
float16 and bfloat16 compute in float32 and return the input's dtype; the element weight is
a constant (it gets no gradient). Losses over pair inputs (SDML), CTC and SSD are not in
the JAX target.

Importing this module needs JAX (``pip install -e ".[jax]"``); ``import lossc`` does not.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..core import bridge
from ..core.pipeline import AVG_FACTOR_EPS, REDUCTIONS
from ..core.registry import get as _get_loss

__all__ = ["get", "JaxLoss"]
LOW_PRECISION = (jnp.float16, jnp.bfloat16)


class JaxLoss:
    """A lossc loss on JAX arrays (what ``get`` returns)."""

    def __init__(self, loss):
        if loss.pair_inputs:
            raise NotImplementedError(f"{loss.name}: losses over pair inputs are not in the JAX target")
        self.loss = loss
        self.name = loss.name
        self.__doc__ = f"{loss.summary}\n\n{loss.doc}"

    def __repr__(self):
        return f"<lossc.jax loss {self.name}>"

    def __call__(self, *args, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0, **kwargs):
        """The loss after the pipeline, in the prediction's dtype (element-wise for 'none')."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
        if avg_factor is not None and reduction == "sum":
            raise ValueError("avg_factor can not be used with reduction='sum'")
        values, variant, runtime, axis = self.loss.split_arguments(args, kwargs)
        module = self.loss.target_module("jax", variant)
        out_dtype = jnp.asarray(values[0]).dtype
        arrays = self._arrays(values)
        layout = _Layout(self.loss, variant, arrays, axis)
        call = _Call(self.loss, variant, module, runtime, layout, reduction, avg_factor, float(loss_weight))
        operands = layout.kernel_inputs(arrays) + ([] if weight is None else [layout.weight(weight)])
        return call.function(len(operands) - len(arrays))(*operands).astype(out_dtype)

    def _arrays(self, values):
        """The inputs as JAX arrays: the prediction floating point (float16/bfloat16 → float32),
        every other input cast to the computing dtype."""
        pred = jnp.asarray(values[0])
        if not jnp.issubdtype(pred.dtype, jnp.floating):
            raise TypeError(f"{self.name}: the prediction must be a floating-point array, got {pred.dtype}")
        compute = jnp.float32 if pred.dtype in LOW_PRECISION else pred.dtype
        arrays = [pred.astype(compute)]
        for spec, value in zip(self.loss.inputs[1:], values[1:]):
            array = jnp.asarray(value)
            if jnp.issubdtype(array.dtype, jnp.complexfloating):
                raise TypeError(f"{self.name}: input '{spec['name']}' must be real, got {array.dtype}")
            arrays.append(array.astype(compute))
        return arrays


class _Layout:
    """Where the kernels' (rows, classes) layout comes from: the class axis moved last, the
    other axes flattened into rows; element-wise losses keep the broadcast shape."""

    def __init__(self, loss, variant, arrays, axis):
        self.loss, self.variant = loss, variant
        pred = arrays[0]
        self.rows_layout = loss.class_axis is not None
        self.element_level = loss.loss_level(variant) == "element"
        if not self.rows_layout:
            self.shape = tuple(np.broadcast_shapes(*(a.shape for a in arrays)))
            return
        if pred.ndim == 0:
            raise ValueError(f"{loss.name}: a loss over a class axis needs at least a 1-D prediction")
        self.axis = bridge.class_axis(loss, pred.ndim, axis)
        self.pred_shape = pred.shape
        self.moved = pred.shape if self.axis is None else tuple(np.moveaxis(np.empty(pred.shape, bool), self.axis, -1).shape)
        self.classes = math.prod(pred.shape[1:]) if self.axis is None else pred.shape[self.axis]
        self.rows = math.prod(pred.shape) // max(self.classes, 1)
        self.row_shape = pred.shape[:1] if self.axis is None else pred.shape[:self.axis] + pred.shape[self.axis + 1:]
        self.shape = pred.shape if self.element_level else self.row_shape

    def to_rows(self, array):
        """An element array ((…) broadcast to the prediction's shape) as (rows, classes)."""
        array = jnp.broadcast_to(array, self.pred_shape)
        if self.axis is not None:
            array = jnp.moveaxis(array, self.axis, -1)
        return array.reshape(self.rows, self.classes)

    def from_rows(self, array):
        """(rows, classes) back to the prediction's layout."""
        array = array.reshape(self.moved)
        return array if self.axis is None else jnp.moveaxis(array, -1, self.axis)

    def kernel_inputs(self, arrays):
        """The loss's inputs as its kernels take them."""
        if not self.rows_layout:  # one shape for all (autodiff sums a broadcast input's gradient back)
            return [jnp.broadcast_to(a, self.shape) for a in arrays]
        laid_out = []
        for spec, array in zip(self.loss.inputs, arrays):
            if spec["per"] == "row":
                if tuple(array.shape) not in ((), self.row_shape):
                    raise ValueError(f"{self.loss.name}: '{spec['name']}' has shape {array.shape}; expected "
                                     f"{self.row_shape} (the prediction's shape without the class axis)")
                laid_out.append(jnp.broadcast_to(array, self.row_shape).reshape(self.rows, 1))
            else:
                laid_out.append(self.to_rows(array))
        return laid_out

    def weight(self, weight):
        """The element weight, broadcast to the unreduced loss, in the kernels' layout."""
        weight = jnp.broadcast_to(jnp.asarray(weight), self.shape)
        return self.loss_to_kernel(weight)

    def loss_to_kernel(self, values):
        """An array of the unreduced loss's shape in the kernels' layout (rows, 1) / (rows, classes)."""
        if not self.rows_layout:
            return values
        return self.to_rows(values) if self.element_level else values.reshape(self.rows, 1)

    def loss_from_kernel(self, values):
        """The kernels' loss back to the unreduced loss's shape."""
        if not self.rows_layout:
            return values
        return self.from_rows(values) if self.element_level else values.reshape(self.row_shape)


class _Call:
    """One call's custom_vjp: the pipeline around the kernels of one variant."""

    def __init__(self, loss, variant, module, runtime, layout, reduction, avg_factor, loss_weight):
        self.loss, self.variant, self.module, self.runtime = loss, variant, module, runtime
        self.layout, self.reduction, self.avg_factor, self.loss_weight = layout, reduction, avg_factor, loss_weight
        self.differentiable = set(bridge.differentiable(loss))

    def scale(self):
        """d output / d (weighted element loss) for a reduced loss."""
        if self.reduction == "sum":
            return self.loss_weight
        if self.avg_factor is not None:
            return self.loss_weight / (float(self.avg_factor) + AVG_FACTOR_EPS)
        count = math.prod(self.layout.shape)
        return self.loss_weight / count if count else math.nan

    def reduce(self, elements, weight):
        """The pipeline on the kernels' element loss."""
        loss = self.layout.loss_from_kernel(elements)
        if weight is not None:
            loss = loss * self.layout.loss_from_kernel(weight)
        if self.reduction == "none":
            return loss * self.loss_weight if self.loss_weight != 1 else loss
        return loss.sum() * self.scale()

    def upstream(self, dtype, weight, cotangent=None):
        """The kernels' grad_output: the pipeline's factor per element (times a cotangent)."""
        factor = self.loss_weight if self.reduction == "none" else self.scale()
        upstream = jnp.asarray(factor, dtype=dtype)
        if cotangent is not None:
            upstream = upstream * self.layout.loss_to_kernel(jnp.broadcast_to(cotangent, self.layout.shape))
        if weight is not None:
            upstream = upstream * weight
        return upstream

    def function(self, n_weight):
        """The custom_vjp function of (kernel inputs…, [weight])."""
        n_inputs = len(self.loss.inputs)

        @jax.custom_vjp
        def value(*operands):
            inputs, weight = operands[:n_inputs], (operands[n_inputs] if n_weight else None)
            return self.reduce(self.module.forward(*inputs, **self.runtime), weight)

        def forward(*operands):
            inputs, weight = operands[:n_inputs], (operands[n_inputs] if n_weight else None)
            elements, grads = self.module.forward_backward(*inputs, **self.runtime,
                                                           grad_output=self.upstream(inputs[0].dtype, weight))
            return self.reduce(elements, weight), (grads, operands)

        def backward(residuals, cotangent):
            grads, operands = residuals
            inputs, weight = operands[:n_inputs], (operands[n_inputs] if n_weight else None)
            if self.reduction != "none":
                grads = [g * cotangent for g in grads]
            elif self._saved_gradient_suffices(inputs):
                factor = self.layout.loss_to_kernel(cotangent)
                grads = [g * factor for g in grads]
            else:
                _, grads = self.module.forward_backward(*inputs, **self.runtime,
                                                        grad_output=self.upstream(inputs[0].dtype, weight, cotangent))
            result = [None] * len(operands)
            for k, gradient in zip(sorted(self.differentiable), grads):
                result[k] = jnp.broadcast_to(gradient, inputs[k].shape).astype(inputs[k].dtype)
            return tuple(result)

        value.defvjp(forward, backward)
        return value

    def _saved_gradient_suffices(self, inputs):
        """For 'none': each loss value depends on its own element (or row) only."""
        if self.layout.rows_layout:
            return not self.layout.element_level
        return all(tuple(inputs[k].shape) == self.layout.shape for k in self.differentiable)


def get(name):
    """The lossc loss ``name`` (built-in or registered with ``lossc.register_generated``) on JAX arrays."""
    return JaxLoss(_get_loss(name))


def __getattr__(name):
    """``lossc.jax.<loss name>`` for every registered loss."""
    try:
        return get(name)
    except KeyError:
        raise AttributeError(f"module 'lossc.jax' has no attribute {name!r}") from None
