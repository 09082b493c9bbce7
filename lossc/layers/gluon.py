"""MXNet Gluon's ``gluon.loss`` API over lossc kernels (NumPy arrays in and out).

Each class takes gluon's exact constructor arguments and defaults and returns gluon's
output: the element loss times ``sample_weight`` (broadcastable to it) and the scalar
``weight``, averaged over every axis but ``batch_axis`` — shape (batch,) — except where
gluon's code does otherwise (PoissonNLLLoss averages everything into shape (1,), as
MXNet's ``nd.mean``). The label is reshaped to pred's shape when the sizes agree, as
gluon's ``_reshape_like`` does. Unlike MXNet, a sample_weight that would *enlarge* the
loss by broadcasting is an error. ``value_and_grad`` returns the output and the
gradients of its sum w.r.t. each differentiable input. All of them run through the
shared pipeline (:class:`lossc.Pipeline`). A spec of one's own that says
``exposed_as: {gluon: Name}`` is ``lossc.gluon.<Name>`` once registered.
"""
import functools

import numpy as np

from ..core.backend import array_module, as_arrays
from ..core.pipeline import Pipeline
from ..core.registry import exposed, get

__all__ = [
    "L2Loss", "L1Loss", "SigmoidBinaryCrossEntropyLoss", "SigmoidBCELoss", "HuberLoss", "HingeLoss",
    "SquaredHingeLoss", "LogisticLoss", "PoissonNLLLoss", "SoftmaxCrossEntropyLoss", "SoftmaxCELoss",
    "KLDivLoss", "TripletLoss", "CosineEmbeddingLoss", "FocalLoss", "SDMLLoss", "CTCLoss",
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
        xp = array_module(pred, label, sample_weight)  # NumPy or CuPy, never an implicit copy
        pred = xp.asarray(pred)
        label = _reshape_like(xp.asarray(label), pred)
        params = {**self._params, **{k: v for k, v in inputs.items() if v is not None}}
        return self._element_run(self._spec, (pred, label), params, sample_weight, with_grad)

    def _element_run(self, spec, inputs, params, sample_weight, with_grad):
        """gluon's output for the element-wise ``spec``'s ``inputs`` (pred first)."""
        loss = get(spec)
        call = loss.bind(tuple(inputs), params)
        ndim = inputs[0].ndim
        batch = _batch_axis_of(self._batch_axis, ndim)
        axes = None if self._whole_batch_mean else tuple(a for a in range(ndim) if a != batch)
        pipeline = Pipeline(sample_weight, "mean", None, 1.0 if self._weight is None else self._weight, axes)
        result = loss.evaluate(call, pipeline, with_grad)
        if not self._whole_batch_mean:
            return result
        if with_grad:
            return result[0].reshape(1), result[1]
        return result.reshape(1)


def _batch_axis_of(batch_axis, ndim):
    """``batch_axis`` as an index into ``ndim`` axes; out of range is an error (not a wrap-around)."""
    if isinstance(batch_axis, bool) or not isinstance(batch_axis, (int, np.integer)):
        raise TypeError(f"batch_axis must be an integer, got {batch_axis!r}")
    if not -max(ndim, 1) <= batch_axis < max(ndim, 1):
        raise ValueError(f"batch_axis {batch_axis} is out of range for an input with {ndim} dimension(s)")
    return batch_axis % max(ndim, 1)


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


class _GluonAxisLoss(_GluonLoss):
    """A gluon loss over a spec that reduces along a class axis.

    ``_batch_reduce`` is gluon's reduction over the non-batch axes of the element (or
    row) loss: 'mean' (``_batch_mean``), 'sum', or 'none' (Triplet, CosineEmbedding).
    A sample_weight given in gluon's keepdims shape (size 1 on the class axis) is squeezed.
    """

    _batch_reduce = "mean"

    def _axis_run(self, spec, inputs, params, sample_weight, with_grad):
        loss = get(spec)
        pred = inputs[0]
        call = loss.bind(tuple(inputs), params)
        layout = call.layout
        row_level = call.module.LOSS_LEVEL == "row"
        out_shape = layout.row_shape if row_level else layout.pred_shape
        batch = _batch_axis_of(self._batch_axis, pred.ndim)
        if row_level and layout.axis is not None and layout.axis < batch:
            batch -= 1
        if sample_weight is not None and row_level and np.ndim(sample_weight) == pred.ndim and layout.axis is not None:
            sample_weight = as_arrays(sample_weight, pred)[0].squeeze(axis=layout.axis)
        axes = tuple(a for a in range(len(out_shape)) if a != batch)
        reduction = "none" if self._batch_reduce == "none" else self._batch_reduce
        pipeline = Pipeline(sample_weight, reduction, None, 1.0 if self._weight is None else self._weight,
                            axes if reduction != "none" else None)
        return loss.evaluate(call, pipeline, with_grad)


class SoftmaxCrossEntropyLoss(_GluonAxisLoss):
    """Softmax cross-entropy; sparse (integer) or dense (distribution) labels along axis."""

    def __init__(self, axis=-1, sparse_label=True, from_logits=False, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis)
        self._axis, self._sparse_label, self._from_logits = axis, sparse_label, from_logits

    def __call__(self, pred, label, sample_weight=None):
        return self._run_ce(pred, label, sample_weight, False)

    def value_and_grad(self, pred, label, sample_weight=None):
        """(output, (d pred,)) for output.sum()."""
        return self._run_ce(pred, label, sample_weight, True)

    def _run_ce(self, pred, label, sample_weight, with_grad):
        spec = "softmax_ce" if self._sparse_label else "softmax_ce_dense"
        pred, label = as_arrays(pred, label)
        if not self._sparse_label:
            label = _reshape_like(label, pred)
        params = {"axis": self._axis, "from_logits": bool(self._from_logits)}
        return self._axis_run(spec, (pred, label), params, sample_weight, with_grad)


SoftmaxCELoss = SoftmaxCrossEntropyLoss


class KLDivLoss(_GluonAxisLoss):
    """label·(log label − log p), **summed** over the non-batch axes as released MXNet 1.9.1
    does (``F.sum(loss, axis=batch_axis, exclude=True)``); MXNet 2.0's unreleased master
    averages instead (``_batch_mean``)."""

    _batch_reduce = "sum"

    def __init__(self, from_logits=True, axis=-1, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis)
        self._from_logits, self._axis = from_logits, axis

    def __call__(self, pred, label, sample_weight=None):
        return self._run_kl(pred, label, sample_weight, False)

    def value_and_grad(self, pred, label, sample_weight=None):
        """(output, (d pred,)) for output.sum()."""
        return self._run_kl(pred, label, sample_weight, True)

    def _run_kl(self, pred, label, sample_weight, with_grad):
        pred, label = as_arrays(pred, label)
        label = _reshape_like(label, pred)
        params = {"axis": self._axis, "from_logits": bool(self._from_logits)}
        return self._axis_run("kl_div", (pred, label), params, sample_weight, with_grad)


class TripletLoss(_GluonAxisLoss):
    """max(‖positive − pred‖² − ‖negative − pred‖² + margin, 0), shape (batch,)."""

    _batch_reduce = "none"

    def __init__(self, margin=1, weight=None, batch_axis=0):
        super().__init__(weight, batch_axis)
        self._margin = margin

    def __call__(self, pred, positive, negative, sample_weight=None):
        return self._run_triplet(pred, positive, negative, sample_weight, False)

    def value_and_grad(self, pred, positive, negative, sample_weight=None):
        """(output, (d pred, d positive, d negative)) for output.sum()."""
        return self._run_triplet(pred, positive, negative, sample_weight, True)

    def _run_triplet(self, pred, positive, negative, sample_weight, with_grad):
        pred, positive, negative = as_arrays(pred, positive, negative)
        positive, negative = _reshape_like(positive, pred), _reshape_like(negative, pred)
        axis = _batch_axis_of(self._batch_axis, pred.ndim)
        pred, positive, negative = (a.swapaxes(axis, 0) if a.ndim else a for a in (pred, positive, negative))
        batch_axis, self._batch_axis = self._batch_axis, 0
        try:
            result = self._axis_run("triplet", (pred, positive, negative), {"margin": self._margin}, sample_weight, with_grad)
        finally:
            self._batch_axis = batch_axis
        if with_grad:
            return result[0], tuple(g.swapaxes(0, batch_axis) for g in result[1])
        return result


class CosineEmbeddingLoss(_GluonAxisLoss):
    """1 − cos for label 1, max(0, cos − margin) for label −1; gluon returns shape (batch, 1)."""

    _batch_reduce = "none"

    def __init__(self, weight=None, batch_axis=0, margin=0):
        super().__init__(weight, batch_axis)
        self._margin = margin

    def __call__(self, input1, input2, label, sample_weight=None):
        return self._run_cos(input1, input2, label, sample_weight, False)

    def value_and_grad(self, input1, input2, label, sample_weight=None):
        """(output of shape (batch, 1), (d input1, d input2)) for output.sum()."""
        return self._run_cos(input1, input2, label, sample_weight, True)

    def _run_cos(self, input1, input2, label, sample_weight, with_grad):
        input1, input2, label, sample_weight = as_arrays(input1, input2, label, sample_weight)
        input1 = _reshape_like(input1, input2)
        label = label.reshape(-1)
        if sample_weight is not None:
            sample_weight = sample_weight.reshape(-1)
        result = self._axis_run("cosine_embedding", (input1, input2, label), {"margin": self._margin}, sample_weight, with_grad)
        if with_grad:
            return result[0].reshape(-1, 1), result[1]
        return result.reshape(-1, 1)


class FocalLoss(_GluonAxisLoss):
    """GluonCV's FocalLoss: a sigmoid per class against one-hot sparse labels or dense labels
    (positive where > 0); mode 'gluoncv' by default here, reproducing its eps clipping
    (pass mode='exact' for the stable form)."""

    def __init__(self, axis=-1, alpha=0.25, gamma=2, sparse_label=True, from_logits=False, batch_axis=0,
                 weight=None, num_class=None, eps=1e-12, size_average=True, mode="gluoncv"):
        super().__init__(weight, batch_axis)
        self._sparse_label = sparse_label
        self._axis, self._num_class, self._size_average = axis, num_class, size_average
        self._batch_reduce = "mean" if size_average else "sum"
        self._focal = {"alpha": alpha, "gamma": gamma, "from_logits": bool(from_logits), "eps": eps, "mode": mode}

    def __call__(self, pred, label, sample_weight=None):
        return self._run_focal(pred, label, sample_weight, False)

    def value_and_grad(self, pred, label, sample_weight=None):
        """(output, (d pred,)) for output.sum()."""
        return self._run_focal(pred, label, sample_weight, True)

    def _run_focal(self, pred, label, sample_weight, with_grad):
        pred, label = as_arrays(pred, label)
        if not self._sparse_label:  # dense labels: positive where label > 0, an element-wise spec
            label = _reshape_like(label, pred)
            axes = tuple(a for a in range(pred.ndim) if a != _batch_axis_of(self._batch_axis, pred.ndim))
            loss = get("focal_dense")
            pipeline = Pipeline(sample_weight, self._batch_reduce, None, 1.0 if self._weight is None else self._weight, axes)
            return loss.evaluate(loss.bind((pred, label), dict(self._focal)), pipeline, with_grad)
        if self._num_class is not None and pred.shape[self._axis] != self._num_class:
            raise ValueError(f"num_class={self._num_class} but pred has {pred.shape[self._axis]} classes on axis {self._axis}")
        return self._axis_run("focal", (pred, label), {"axis": self._axis, **self._focal}, sample_weight, with_grad)


class SDMLLoss(_GluonLoss):
    """Smoothed deep metric learning over a batch of pairs, output shape (batch,).

    As released MXNet 1.9.1: KLDivLoss(from_logits=True) of log_softmax(−distances) against
    the smoothed identity, which 1.9.1's KLDivLoss **sums** over the row (2.0's master would
    average); like MXNet's, this layer does not apply ``weight`` (SDMLLoss never passes it on).
    """

    def __init__(self, smoothing_parameter=0.3, weight=1.0, batch_axis=0):
        super().__init__(weight, batch_axis)
        self._smoothing = smoothing_parameter

    def __call__(self, x1, x2):
        return self._run_sdml(x1, x2, False)

    def value_and_grad(self, x1, x2):
        """(output, (d x1, d x2)) for output.sum()."""
        return self._run_sdml(x1, x2, True)

    def _run_sdml(self, x1, x2, with_grad):
        x1, x2 = as_arrays(x1, x2)
        if x1.ndim != 2 or x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must be (batch, features) of one shape, got {x1.shape} and {x2.shape}")
        loss = get("sdml")  # its spec builds the distance matrix from the pairs of x1 and x2
        call = loss.bind((x1, x2), {"smoothing_parameter": self._smoothing})
        return loss.evaluate(call, Pipeline(None, "sum", None, 1.0, (1,)), with_grad)


class CTCLoss(_GluonLoss):
    """MXNet's CTCLoss: blank is the last class, labels padded with -1, output (batch,).

    Unlike MXNet, an impossible alignment gives +inf (not 0 with an uninitialised gradient),
    and sample_weight of shape (batch,) or (batch, 1) gives (batch,), never (batch, batch).
    """

    def __init__(self, layout="NTC", label_layout="NT", weight=None):
        from ..algorithms.ctc import LABEL_LAYOUTS, LAYOUTS

        if layout not in LAYOUTS:
            raise ValueError(f"Only 'NTC' and 'TNC' layouts for pred are supported. Got: {layout!r}")
        if label_layout not in LABEL_LAYOUTS:
            raise ValueError(f"Only 'NT' and 'TN' layouts for label are supported. Got: {label_layout!r}")
        super().__init__(weight, label_layout.find("N"))
        self._layout, self._label_layout = layout, label_layout

    def __call__(self, pred, label, pred_lengths=None, label_lengths=None, sample_weight=None):
        return self._run_ctc(pred, label, pred_lengths, label_lengths, sample_weight, False)

    def value_and_grad(self, pred, label, pred_lengths=None, label_lengths=None, sample_weight=None):
        """(output, (d pred,)) for output.sum()."""
        return self._run_ctc(pred, label, pred_lengths, label_lengths, sample_weight, True)

    def _run_ctc(self, pred, label, pred_lengths, label_lengths, sample_weight, with_grad):
        from ..algorithms.ctc import ctc_loss

        if sample_weight is not None:
            sample_weight = as_arrays(sample_weight, pred)[0].reshape(-1)
        run = ctc_loss.value_and_grad if with_grad else ctc_loss
        return run(pred, label, pred_lengths, label_lengths, blank="last", layout=self._layout,
                   label_layout=self._label_layout, weight=sample_weight, reduction="none",
                   loss_weight=1.0 if self._weight is None else self._weight)


class _ExposedLoss(_GluonAxisLoss):
    """The gluon loss of a spec that says ``exposed_as: {gluon: Name}``: its inputs in the
    spec's order (later inputs reshaped like pred where the sizes agree, as gluon does for
    labels), its parameters as constructor keywords, gluon's mean over the non-batch axes."""

    def __init__(self, weight=None, batch_axis=0, **params):
        get(self._spec).check_parameters(params, type(self).__name__, ("weight", "batch_axis"))
        super().__init__(weight, batch_axis, **params)

    def __call__(self, *inputs, sample_weight=None):
        return self._run_exposed(inputs, sample_weight, False)

    def value_and_grad(self, *inputs, sample_weight=None):
        """(output, grads): grads of output.sum() w.r.t. the differentiable inputs."""
        return self._run_exposed(inputs, sample_weight, True)

    def _run_exposed(self, inputs, sample_weight, with_grad):
        pred, *rest = as_arrays(*inputs)
        rest = [_reshape_like(x, pred) if x.size == pred.size else x for x in rest]
        run = self._axis_run if get(self._spec).class_axis else self._element_run
        return run(self._spec, (pred, *rest), self._params, sample_weight, with_grad)


@functools.lru_cache(maxsize=None)
def _exposed_class(name, loss_name):
    """The gluon class ``name`` over the registered loss ``loss_name`` (one class per pair)."""
    return type(name, (_ExposedLoss,), {"_spec": loss_name, "__doc__": f"gluon loss over lossc's '{loss_name}'."})


def __getattr__(name):
    """``lossc.gluon.<Name>`` for a registered loss whose spec says ``exposed_as: {gluon: Name}``."""
    loss_name = exposed("gluon").get(name)
    if loss_name is None:
        raise AttributeError(f"module 'lossc.gluon' has no attribute {name!r}")
    return _exposed_class(name, loss_name)
