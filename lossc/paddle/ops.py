"""lossc losses in Paddle's autograd: one ``paddle.autograd.PyLayer`` per loss variant.

``get(name)`` returns a function with the inputs, parameters and pipeline arguments of
``lossc.get(name)`` (``weight``, ``reduction``, ``avg_factor``, ``loss_weight``) on paddle
Tensors. When a differentiable input has ``stop_gradient=False`` (and gradients are enabled)
the forward runs the fused loss-and-gradient kernel once and saves the gradients; the
backward scales them by the incoming gradient (see :mod:`lossc.core.bridge`). CPU tensors reach
the kernels as zero-copy NumPy views (DLPack both ways); GPU tensors reach the CuPy kernels
through DLPack on Paddle's current stream. float32 and float64 compute in their own
precision, float16 and bfloat16 in float32 (returned in the input's dtype). Inputs are never
modified.

Importing this module needs Paddle (``pip install paddlepaddle``); ``import lossc`` and
``import lossc.paddle`` do not.
"""
from typing import NamedTuple

import numpy as np
import paddle
from paddle.autograd import PyLayer

from ..core import bridge
from ..core.registry import get as _get_loss

LOW_PRECISION = (paddle.float16, paddle.bfloat16)
_layers = {}


class Call(NamedTuple):
    """The non-tensor arguments of one op call (a PyLayer's forward takes them as one value)."""

    params: tuple
    reduction: str
    avg_factor: float | None
    loss_weight: float
    axis: int
    inputs: int  # how many of the tensors are the loss's inputs; a last one, if any, is the weight


class PaddleLoss:
    """A lossc loss on paddle Tensors (what ``get`` returns)."""

    def __init__(self, loss):
        self.loss = loss
        self.name = loss.name
        self.__doc__ = f"{loss.summary}\n\n{loss.doc}"
        self._specs = loss.pair_inputs or loss.inputs

    def __repr__(self):
        return f"<lossc.paddle loss {self.name}>"

    def __call__(self, *args, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0, **kwargs):
        """The loss after the pipeline, a Tensor in the prediction's dtype (element-wise for 'none')."""
        values, variant, runtime, axis = self.loss.split_arguments(args, kwargs)
        tensors = self._tensors(values)
        out_dtype = tensors[0].dtype
        if out_dtype in LOW_PRECISION:
            tensors = [t.astype(paddle.float32) if t.is_floating_point() else t for t in tensors]
        if weight is not None:
            weight = self._weight(weight, tensors[0])
        call = Call(tuple(float(v) for v in runtime.values()), str(reduction),
                    None if avg_factor is None else float(avg_factor), float(loss_weight), int(axis), len(tensors))
        operands = tensors + ([weight] if weight is not None else [])
        with_grad = paddle.is_grad_enabled() and any(
            not t.stop_gradient for t, spec in zip(tensors, self._specs) if spec["differentiable"])
        if with_grad:
            result = op(self.loss, variant).apply(call, *operands)
        else:
            result = run(self.loss, variant, call, operands, False)[0]
        return result.astype(out_dtype) if result.dtype != out_dtype else result

    def _tensors(self, values):
        """Every input as a Tensor on the prediction's place; a clear error for what does not fit."""
        pred = values[0]
        if not isinstance(pred, paddle.Tensor):
            raise TypeError(f"{self.name}: the prediction '{self._specs[0]['name']}' must be a paddle.Tensor, "
                            f"got {type(pred).__name__}")
        if not pred.is_floating_point():
            raise TypeError(f"{self.name}: the prediction must be a floating-point Tensor, got {pred.dtype}")
        tensors = []
        for spec, value in zip(self._specs, values):
            name = spec["name"]
            tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(
                value, dtype=pred.dtype if isinstance(value, float) else None, place=pred.place)
            if str(tensor.place) != str(pred.place):
                raise ValueError(f"{self.name}: input '{name}' is on {tensor.place} but the prediction is on "
                                 f"{pred.place}")
            if not tensor.stop_gradient and not spec["differentiable"]:
                raise ValueError(f"{self.name}: input '{name}' has stop_gradient=False but the loss is not "
                                 f"differentiable with respect to it (detach it)")
            if tensor.is_complex():
                raise TypeError(f"{self.name}: input '{name}' must be real, got {tensor.dtype}")
            if tensor.is_floating_point() and tensor.dtype != pred.dtype and pred.dtype not in LOW_PRECISION:
                tensor = tensor.astype(pred.dtype)
            tensors.append(tensor)
        return tensors

    def _weight(self, weight, pred):
        """The element weight as a Tensor of the computing dtype (it gets no gradient)."""
        weight = weight if isinstance(weight, paddle.Tensor) else paddle.to_tensor(weight, place=pred.place)
        if not weight.stop_gradient:
            raise ValueError(f"{self.name}: weight has stop_gradient=False; lossc treats the element weight as a "
                             "constant (detach it, or multiply a reduction='none' loss by it)")
        return weight.astype(pred.dtype)


def get(name):
    """The lossc loss ``name`` (built-in or registered with ``lossc.register_generated``) on paddle Tensors."""
    return PaddleLoss(_get_loss(name))


def op(loss, variant):
    """The PyLayer of ``loss``'s build-time ``variant``, defined on first use."""
    module = loss.variant_module(variant)
    if module not in _layers:
        _layers[module] = _define(loss.name, module, dict(variant))
    return _layers[module]


def _define(name, module, variant):
    """A PyLayer class computing loss ``name``'s ``variant`` with its fused gradient."""

    def forward(ctx, call, *operands):
        loss = _get_loss(name)
        outputs = run(loss, variant, call, operands, True)
        ctx.call, ctx.operands = call, operands
        ctx.save_for_backward(*outputs[1:])
        return outputs[0]

    def backward(ctx, upstream):
        loss = _get_loss(name)
        call, operands = ctx.call, ctx.operands
        inputs = operands[:call.inputs]
        shapes = [tuple(t.shape) for t in inputs]
        if call.reduction == "none" and not bridge.saved_gradient_suffices(loss, variant, shapes, call.axis):
            weight = upstream if call.inputs == len(operands) else upstream * operands[-1]
            grads = run(loss, variant, call._replace(reduction="sum", avg_factor=None), [*inputs, weight], True)[1:]
        else:
            factor = upstream if call.reduction != "none" else upstream.reshape(
                list(bridge.upstream_shape(loss, variant, upstream.shape, len(shapes[0]), call.axis)))
            grads = [g * factor for g in ctx.saved_tensor()]
        result = [None] * len(operands)
        for k, gradient in zip(bridge.differentiable(loss), grads):
            result[k] = gradient
        return tuple(result)

    return type(f"lossc_{module}", (PyLayer,), {"forward": staticmethod(forward), "backward": staticmethod(backward),
                                                "__doc__": f"lossc loss {name!r}, generated module {module}"})


def run(loss, variant, call, operands, with_grad):
    """[loss] or [loss, *gradients] of the kernels on the tensors' memory, as new Tensors."""
    arrays = [_array(t) for t in operands]
    inputs, weight = arrays[:call.inputs], (arrays[call.inputs] if len(arrays) > call.inputs else None)
    kwargs = bridge.kernel_kwargs(loss, variant, call.params, weight, call.reduction, call.avg_factor,
                                  call.loss_weight, call.axis)
    if not operands[0].place.is_cpu_place():
        import cupy

        with cupy.cuda.ExternalStream(paddle.device.current_stream().stream_base.cuda_stream):
            results = [cupy.ascontiguousarray(r) for r in bridge.fused(loss, inputs, kwargs, with_grad)]
        return [paddle.utils.dlpack.from_dlpack(r) for r in results]
    return [_from_host(r) for r in bridge.host_results(bridge.fused(loss, inputs, kwargs, with_grad), inputs)]


def _from_host(array):
    """A new CPU Tensor owning a NumPy result (DLPack, no copy)."""
    return paddle.utils.dlpack.from_dlpack(array)


def _array(tensor):
    """A zero-copy NumPy (CPU) or CuPy (GPU) view of a Tensor, made contiguous once."""
    if tensor.dtype == paddle.bool:  # DLPack's bool is not NumPy's on every version
        tensor = tensor.astype(paddle.uint8)
    if tensor.place.is_cpu_place():
        return np.require(np.from_dlpack(tensor.detach()), requirements="C")
    import cupy

    return cupy.ascontiguousarray(cupy.from_dlpack(tensor.detach()))


class Loss(paddle.nn.Layer):
    """``paddle.nn.Layer`` around ``get(name)``; constructor keywords are fixed parameters and
    pipeline arguments, call keywords override them."""

    def __init__(self, name, **params):
        super().__init__()
        self.loss_name, self.params = name, params
        self.fn = get(name)

    def forward(self, *args, **kwargs):
        """The loss of the inputs (see :class:`PaddleLoss`)."""
        return self.fn(*args, **{**self.params, **kwargs})

    def extra_repr(self):
        return ", ".join([repr(self.loss_name)] + [f"{k}={v!r}" for k, v in self.params.items()])


class _CTC(PyLayer):
    """lossc's CTC on (T, N, C) scores (log_softmax inside) and (N, S) labels: per-sequence losses."""

    @staticmethod
    def forward(ctx, log_probs, labels, input_lengths, label_lengths, blank, norm_by_times, zero_infinity):
        losses, grad = _ctc(log_probs, labels, input_lengths, label_lengths, blank, zero_infinity, True)
        if norm_by_times:  # warp-ctc's option: each sequence's gradient divided by its length
            steps = input_lengths.astype(grad.dtype).clip(min=1)
            grad = grad / steps.reshape([1, -1, 1])
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensor()
        return grad * upstream.reshape([1, -1, 1]), None, None, None


def ctc(log_probs, labels, input_lengths, label_lengths, blank, norm_by_times, zero_infinity):
    """Per-sequence CTC losses (N,) in Paddle's autograd (see ``lossc.paddle.ctc_loss``)."""
    if paddle.is_grad_enabled() and not log_probs.stop_gradient:
        return _CTC.apply(log_probs, labels, input_lengths, label_lengths, blank, norm_by_times, zero_infinity)
    return _ctc(log_probs, labels, input_lengths, label_lengths, blank, zero_infinity, False)[0]


def _ctc(log_probs, labels, input_lengths, label_lengths, blank, zero_infinity, with_grad):
    """[losses] or [losses, d Σ losses / d log_probs] as new Tensors."""
    from ..algorithms.ctc import ctc_loss

    if log_probs.ndim != 3:
        raise ValueError(f"ctc_loss: log_probs must be 3-D (max_logit_length, batch, classes), got shape "
                         f"{list(log_probs.shape)}")
    dtype = log_probs.dtype
    scores = log_probs.astype(paddle.float32) if dtype in LOW_PRECISION else log_probs
    labels = labels.astype("int64")
    width = labels.shape[1] if labels.ndim == 2 else 0
    padding = paddle.arange(width).reshape([1, -1]) >= label_lengths.astype("int64").reshape([-1, 1])
    padded = paddle.where(padding, paddle.full_like(labels, -1), labels)
    arrays = [_array(t) for t in (scores, padded, input_lengths, label_lengths)]
    kwargs = dict(blank=blank, layout="TNC", zero_infinity=zero_infinity, reduction="none")
    results = bridge.host_results(bridge.fused(ctc_loss, arrays, kwargs, with_grad), arrays)
    return [_from_host(r).astype(dtype) if dtype in LOW_PRECISION else _from_host(r) for r in results]
