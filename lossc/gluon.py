"""MXNet Gluon's ``gluon.loss`` API over lossc kernels (NumPy arrays in and out).

Each class takes gluon's exact constructor arguments and defaults and returns gluon's
output: the element loss times ``sample_weight`` (broadcastable to it) and the scalar
``weight``, averaged over every axis but ``batch_axis`` — shape (batch,) — except where
gluon's code does otherwise (PoissonNLLLoss averages everything into shape (1,), as
MXNet's ``nd.mean``). The label is reshaped to pred's shape when the sizes agree, as
gluon's ``_reshape_like`` does. Unlike MXNet, a sample_weight that would *enlarge* the
loss by broadcasting is an error. ``value_and_grad`` returns the output and the
gradients of its sum w.r.t. each differentiable input. All of them run through the
shared pipeline (:class:`lossc.Pipeline`).
"""
import numpy as np

from .pipeline import Pipeline
from .registry import get

__all__ = [
    "L2Loss", "L1Loss", "SigmoidBinaryCrossEntropyLoss", "SigmoidBCELoss", "HuberLoss", "HingeLoss",
    "SquaredHingeLoss", "LogisticLoss", "PoissonNLLLoss",
]


class _GluonLoss:
    """A gluon loss over one lossc spec; subclasses set the spec and their parameters."""

    _spec = None
    _whole_batch_mean = False

    def __init__(self, weight=None, batch_axis=0, **params):
        if weight is not None and (isinstance(weight, bool) or not np.isscalar(weight)):
            raise TypeError(f"weight must be a number or None, got {type(weight).__name__}")
        self._weight = weight
        self._batch_axis = batch_axis
        self._params = params

    def __repr__(self):
        return f"{type(self).__name__}(batch_axis={self._batch_axis}, w={self._weight})"

    def __call__(self, pred, label, sample_weight=None, **inputs):
        """gluon's forward: the per-sample loss."""
        return self._run(pred, label, sample_weight, inputs, with_grad=False)

    def value_and_grad(self, pred, label, sample_weight=None, **inputs):
        """(output, grads): grads of output.sum() w.r.t. the differentiable inputs."""
        return self._run(pred, label, sample_weight, inputs, with_grad=True)

    def _run(self, pred, label, sample_weight, inputs, with_grad):
        loss = get(self._spec)
        pred = np.asarray(pred)
        label = _reshape_like(np.asarray(label), pred)
        call = loss.bind((pred, label), {**self._params, **{k: v for k, v in inputs.items() if v is not None}})
        ndim = pred.ndim
        axes = None if self._whole_batch_mean else tuple(a for a in range(ndim) if a != self._batch_axis % max(ndim, 1))
        pipeline = Pipeline(sample_weight, "mean", None, 1.0 if self._weight is None else self._weight, axes)
        result = loss.evaluate(call, pipeline, with_grad)
        if not self._whole_batch_mean:
            return result
        if with_grad:
            return result[0].reshape(1), result[1]
        return result.reshape(1)


def _reshape_like(label, pred):
    if label.shape == pred.shape:
        return label
    if label.size != pred.size:
        raise ValueError(f"label of shape {label.shape} does not match pred of shape {pred.shape}")
    return label.reshape(pred.shape)


class L2Loss(_GluonLoss):
    """½(label − pred)², averaged over the non-batch axes."""

    _spec = "l2"

    def __init__(self, weight=1.0, batch_axis=0):
        super().__init__(weight, batch_axis)


class L1Loss(_GluonLoss):
    """|label − pred|, averaged over the non-batch axes."""

    _spec = "l1"

    def __init__(self, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis)


class SigmoidBinaryCrossEntropyLoss(_GluonLoss):
    """Binary cross-entropy from logits (stable) or probabilities (from_sigmoid)."""

    _spec = "sigmoid_bce"

    def __init__(self, from_sigmoid=False, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis, from_sigmoid=bool(from_sigmoid))

    def __call__(self, pred, label, sample_weight=None, pos_weight=None):
        return self._run(pred, label, sample_weight, {"pos_weight": pos_weight}, with_grad=False)

    def value_and_grad(self, pred, label, sample_weight=None, pos_weight=None):
        """(output, (d pred,)) for output.sum()."""
        return self._run(pred, label, sample_weight, {"pos_weight": pos_weight}, with_grad=True)


SigmoidBCELoss = SigmoidBinaryCrossEntropyLoss


class HuberLoss(_GluonLoss):
    """Huber / smoothed L1 with threshold rho."""

    _spec = "huber"

    def __init__(self, rho=1, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis, rho=rho)


class HingeLoss(_GluonLoss):
    """max(0, margin − pred·label) for labels −1/1."""

    _spec = "hinge"

    def __init__(self, margin=1, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis, margin=margin)


class SquaredHingeLoss(_GluonLoss):
    """max(0, margin − pred·label)² for labels −1/1."""

    _spec = "squared_hinge"

    def __init__(self, margin=1, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis, margin=margin)


class LogisticLoss(_GluonLoss):
    """log(1 + exp(−pred·label)); label_format 'signed' (−1/1) or 'binary' (0/1)."""

    _spec = "logistic"

    def __init__(self, weight=None, batch_axis=0, label_format="signed"):
        if label_format not in ("signed", "binary"):
            raise ValueError(f"label_format can only be signed or binary, received {label_format!r}")
        super().__init__(weight, batch_axis, label_format=label_format)


class PoissonNLLLoss(_GluonLoss):
    """Poisson NLL; gluon returns the mean over the whole batch, shape (1,)."""

    _spec = "poisson_nll"
    _whole_batch_mean = True

    def __init__(self, weight=None, from_logits=True, batch_axis=0, compute_full=False):
        super().__init__(weight, batch_axis, from_logits=bool(from_logits), compute_full=bool(compute_full))

    def __call__(self, pred, target, sample_weight=None, epsilon=1e-08):
        return self._run(pred, target, sample_weight, {"epsilon": epsilon}, with_grad=False)

    def value_and_grad(self, pred, target, sample_weight=None, epsilon=1e-08):
        """(output of shape (1,), (d pred,))."""
        return self._run(pred, target, sample_weight, {"epsilon": epsilon}, with_grad=True)
