"""Paddle's ``paddle.nn.functional`` losses on lossc kernels, in Paddle's autograd.

Each function takes Paddle 3.3's own signature and returns what Paddle returns, values and
gradients, for paddle Tensors (float16/bfloat16 computed in float32): the forward runs the
fused loss-and-gradient kernel once when the prediction has ``stop_gradient=False`` and the
backward scales the saved gradient (:mod:`lossc.paddle.ops`, one PyLayer per loss variant).
``sigmoid_focal_loss`` also takes NumPy arrays (then returns NumPy, with ``value_and_grad``).
``get(name)`` / ``Loss(name, **params)`` give every lossc loss on Tensors.

Where lossc differs from Paddle, lossc is right: Paddle's BCE-with-logits gradient at a logit
of exactly 0 is off by ½ (−0.5 where σ(0) − y = 0 for y = ½), and its focal loss overflows at
logits near ±1e4; lossc gives the exact values there.

Paddle itself is imported only when a Tensor arrives (or ``get``/``Loss`` are used):
``import lossc.paddle`` works without it.
"""
import math
import sys

import numpy as np

from ..core.pipeline import REDUCTIONS, Pipeline
from ..core.registry import exposed
from ..core.registry import get as _get_loss

__all__ = ["binary_cross_entropy_with_logits", "cross_entropy", "ctc_loss", "get", "kl_div", "l1_loss", "Loss",
           "mse_loss", "sigmoid_focal_loss", "smooth_l1_loss"]
IGNORE_INDEX = -100  # Paddle's sigmoid_cross_entropy_with_logits skips labels equal to this


def _ops():
    from . import ops

    return ops


def get(name):
    """The lossc loss ``name`` on paddle Tensors (see :class:`lossc.paddle.ops.PaddleLoss`)."""
    return _ops().get(name)


def __getattr__(name):
    """``Loss``, and ``lossc.paddle.<Name>`` for a registered loss whose spec says
    ``exposed_as: {paddle: Name}`` (its :func:`get` function)."""
    if name == "Loss":
        return _ops().Loss
    loss_name = exposed("paddle").get(name)
    if loss_name is not None:
        return get(loss_name)
    raise AttributeError(f"module 'lossc.paddle' has no attribute {name!r}")


def _is_tensor(value):
    paddle = sys.modules.get("paddle")
    return paddle is not None and isinstance(value, paddle.Tensor)


def _tensor(value, name, function):
    """``value`` if it is a paddle Tensor, else a TypeError naming the argument."""
    if not _is_tensor(value):
        raise TypeError(f"{function}: '{name}' must be a paddle.Tensor, got {type(value).__name__}")
    return value


def _reduction(reduction, function, choices=REDUCTIONS):
    if reduction not in choices:
        raise ValueError(f"The value of 'reduction' in {function} should be "
                         f"{', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}, but received {reduction!r}, "
                         "which is not allowed.")
    return reduction


def _float_label(label, name, function):
    if not label.is_floating_point():
        raise TypeError(f"{function}: '{name}' must be a float32 or float64 Tensor, got {label.dtype}")
    return label


def _same_shape(input, label, function):
    if list(input.shape) != list(label.shape):
        raise ValueError(f"{function}: input of shape {list(input.shape)} and label of shape {list(label.shape)} "
                         "must have the same shape")


def _float32(value):
    """A float as Paddle holds an op's float attribute (float32), e.g. huber's delta."""
    return float(np.float32(value))


# ------------------------------------------------------------------ sigmoid focal
def _normalizer_weight(normalizer, xp_asarray):
    normalizer = xp_asarray(normalizer)
    shape = tuple(normalizer.shape)
    if len(shape) > 1 or int(np.prod(shape)) != 1:
        raise ValueError(f"Expected zero or one dimension of normalizer with one element, got shape {list(shape)}")
    return normalizer.reshape([])


def _focal_arrays(logit, label, normalizer, alpha, gamma, reduction, with_grad):
    _reduction(reduction, "sigmoid_focal_loss")
    weight = None if normalizer is None else 1.0 / _normalizer_weight(normalizer, np.asarray)
    loss = _get_loss("sigmoid_focal")
    call = loss.bind((logit, label), {"alpha": alpha, "gamma": gamma})
    return loss.evaluate(call, Pipeline(weight, reduction), with_grad)


def sigmoid_focal_loss(logit, label, normalizer=None, alpha=0.25, gamma=2.0, reduction="sum", name=None):
    """Paddle's sigmoid focal loss: −α·y·(1−p)^γ·log p − (1−α)(1−y)·p^γ·log(1−p), p = σ(logit),
    divided by ``normalizer`` (a one-element Tensor), then 'sum' | 'mean' | 'none'. Exact at
    any logit (Paddle overflows near ±1e4). On NumPy arrays it returns NumPy. For binary labels
    this is Paddle's α_t·(1 − p_t)^γ·BCE; for soft labels in (0, 1) lossc keeps the formula
    above, where Paddle mixes p_t = p·y + (1 − p)(1 − y) into one factor."""
    if not _is_tensor(logit):
        return _focal_arrays(logit, label, normalizer, alpha, gamma, reduction, False)
    function = "sigmoid_focal_loss"
    _reduction(reduction, function)
    _float_label(_tensor(label, "label", function), "label", function)
    _same_shape(logit, label, function)
    loss = get("sigmoid_focal")(logit, label, alpha=float(alpha), gamma=float(gamma), reduction=reduction)
    if normalizer is None:
        return loss
    normalizer = _normalizer_weight(_tensor(normalizer, "normalizer", function), lambda n: n)
    return loss / normalizer.astype(loss.dtype)


def sigmoid_focal_loss_value_and_grad(logit, label, normalizer=None, alpha=0.25, gamma=2.0, reduction="sum"):
    """(loss, (d logit,)) on NumPy arrays: sigmoid_focal_loss and the gradient of its sum w.r.t. logit."""
    return _focal_arrays(logit, label, normalizer, alpha, gamma, reduction, True)


sigmoid_focal_loss.value_and_grad = sigmoid_focal_loss_value_and_grad


# ------------------------------------------------------------------ element-wise
def _broadcast(input, label, function):
    """input and label broadcast to one shape (autograd sums the gradient back)."""
    import paddle

    _tensor(input, "input", function)
    _tensor(label, "label", function)
    if list(input.shape) == list(label.shape):
        return input, label
    try:
        shape = np.broadcast_shapes(tuple(input.shape), tuple(label.shape))
    except ValueError:
        raise ValueError(f"{function}: input of shape {list(input.shape)} and label of shape "
                         f"{list(label.shape)} do not broadcast") from None
    return [t if tuple(t.shape) == shape else paddle.broadcast_to(t, list(shape)) for t in (input, label)]

def binary_cross_entropy_with_logits(logit, label, weight=None, reduction="mean", pos_weight=None, name=None):
    """Paddle's BCE with logits: −w·[pos_weight·y·log σ(x) + (1 − y)·log(1 − σ(x))] in the
    overflow-free softplus form; labels equal to −100 give 0 (Paddle's ignore_index)."""
    function = "binary_cross_entropy_with_logits"
    _reduction(reduction, function)
    _float_label(_tensor(label, "label", function), "label", function)
    _same_shape(_tensor(logit, "logit", function), label, function)
    ignored = label == IGNORE_INDEX
    if bool(ignored.any()):
        kept = (~ignored).astype(logit.dtype)
        weight = kept if weight is None else weight * kept
    return get("sigmoid_bce")(logit, label, 1.0 if pos_weight is None else pos_weight, weight=weight,
                              reduction=reduction)


def smooth_l1_loss(input, label, reduction="mean", delta=1.0, is_huber=True, name=None):
    """Paddle's smooth L1 (Huber) loss: ½d² where |d| < δ, else δ·|d| − ½δ²; divided by δ when
    ``is_huber`` is False. δ is rounded to float32 first, as Paddle's op attribute is."""
    function = "smooth_l1_loss"
    _reduction(reduction, function)
    _same_shape(_tensor(input, "input", function), _tensor(label, "label", function), function)
    if not delta > 0:
        raise ValueError(f"{function}: delta must be positive, got {delta!r}")
    rho = _float32(delta)  # then is_huber=False divides by the float64 delta, as Paddle
    return get("huber")(input, label, rho=rho, reduction=reduction, loss_weight=rho if is_huber else rho / delta)


def l1_loss(input, label, reduction="mean", name=None):
    """Paddle's L1 loss |input − label| (the two broadcast, as Paddle's subtraction does)."""
    _reduction(reduction, "l1_loss")
    return get("l1")(*_broadcast(input, label, "l1_loss"), reduction=reduction)


def mse_loss(input, label, reduction="mean", name=None):
    """Paddle's mean squared error (input − label)² (the two broadcast, as Paddle's subtraction does)."""
    _reduction(reduction, "mse_loss")
    return get("mse")(*_broadcast(input, label, "mse_loss"), reduction=reduction)


def kl_div(input, label, reduction="mean", log_target=False, name=None):
    """Paddle's KL divergence: input holds log-probabilities; label·(log label − input), 0 where
    label is 0 (label holds log-probabilities with ``log_target``); 'batchmean' divides the
    sum by input.shape[0]."""
    function = "kl_div"
    _reduction(reduction, function, REDUCTIONS + ("batchmean",))
    _same_shape(_tensor(input, "input", function), _tensor(label, "label", function), function)
    target = label.exp() if log_target else label
    loss = get("kl_div")(input, target, from_logits=True, reduction="sum" if reduction == "batchmean" else reduction)
    if reduction == "batchmean" and input.ndim:
        return loss / input.shape[0]
    return loss


# ------------------------------------------------------------------ cross-entropy
def cross_entropy(input, label, weight=None, ignore_index=-100, reduction="mean", soft_label=False, axis=-1,
                  use_softmax=True, label_smoothing=0.0, name=None):
    """Paddle's softmax cross-entropy along ``axis``: class indices (with ``ignore_index``) or,
    with ``soft_label`` or ``label_smoothing`` > 0, class probabilities (indices become the
    smoothed one-hot (1 − ε)·y + ε/C, Paddle's ``label_smooth``); class ``weight`` weighs an
    index target by weight[label] and a probability target by Σ_c label_c·weight_c; 'mean'
    divides by the summed weights (or the count of labels not equal to a non-negative
    ignore_index, or every label). ``use_softmax=False`` takes probabilities as input."""
    function = "cross_entropy"
    _reduction(reduction, function)
    _tensor(input, "input", function)
    _tensor(label, "label", function)
    if ignore_index > 0 and soft_label:
        raise ValueError(f"When soft_label == True, the value of 'ignore_index' in softmax_cross_entropy should be "
                         f"'-100', but received {ignore_index}, which is not allowed.")
    if input.ndim == 0:
        raise ValueError("The dimension of input should be larger than zero!")
    axis = axis % input.ndim
    if label.ndim not in (input.ndim - 1, input.ndim):
        raise ValueError(f"Expected input_dims - 1 = label_dims or input_dims == label_dims (got input_dims "
                         f"{input.ndim}, label_dims {label.ndim})")
    scores = input if use_softmax else input.log()
    if soft_label or label_smoothing > 0:
        return _soft_cross_entropy(scores, label, weight, reduction, soft_label, axis, label_smoothing, use_softmax)
    return _hard_cross_entropy(scores, label, weight, ignore_index, reduction, axis, use_softmax)


def _hard_cross_entropy(scores, label, weight, ignore_index, reduction, axis, use_softmax):
    import paddle

    kept_dim = label.ndim == scores.ndim
    labels = label.squeeze(axis) if kept_dim else label
    classes = scores.shape[axis]
    class_weight = 1.0
    if weight is not None:
        if weight.shape[-1] != classes:
            raise ValueError(f"input's class_dimension({classes}) must equal to weight's class_dimension"
                             f"({weight.shape[-1]}) when weight is provided")
        class_weight = weight.astype(scores.dtype).reshape([-1] + [1] * (scores.ndim - axis - 1))
    loss = get("softmax_ce")(scores, labels, class_weight, class_weighted=weight is not None,
                             from_logits=not use_softmax, ignore_index=int(ignore_index), axis=axis,
                             reduction="none" if reduction == "none" else "sum")
    if reduction == "none":
        return loss.unsqueeze(axis) if kept_dim else loss
    if reduction == "sum":
        return loss
    kept = labels != ignore_index
    if weight is not None:
        index = paddle.where(kept, labels, paddle.zeros_like(labels)).flatten()
        gathered = paddle.gather(weight.astype(loss.dtype), index).reshape(labels.shape)
        total = (gathered * kept.astype(loss.dtype)).sum()
    elif ignore_index >= 0:
        total = kept.astype(loss.dtype).sum()
    else:
        return loss / float(math.prod(labels.shape))
    return loss / (total + (total == 0).astype(total.dtype))


def _soft_cross_entropy(scores, label, weight, reduction, soft_label, axis, label_smoothing, use_softmax):
    import paddle

    classes = scores.shape[axis]
    if label.ndim == scores.ndim - 1 or not label.is_floating_point():  # indices: Paddle's (float32) one-hot
        indices = label.squeeze(axis) if label.ndim == scores.ndim else label
        label = paddle.moveaxis(paddle.nn.functional.one_hot(indices.astype("int64"), classes), -1, axis)
    if label_smoothing > 0:  # label_smooth: its epsilon a float32 attribute, 1 − ε and ε/C in float32
        epsilon = np.float32(label_smoothing)
        label = label * float(np.float32(1) - epsilon) + float(epsilon / np.float32(classes))
    label = label.astype(scores.dtype)
    row_weight = None
    if weight is not None:
        row_weight = paddle.tensordot(paddle.moveaxis(label, axis, -1), weight.astype(scores.dtype), axes=1)
    loss = get("softmax_ce_dense")(scores, label, from_logits=not use_softmax, axis=axis, weight=row_weight,
                                   reduction="none" if reduction == "none" else "sum")
    if reduction == "none":
        return loss.unsqueeze(axis)
    if reduction == "sum":
        return loss
    if row_weight is None:
        return loss / float(math.prod(label.shape) // classes)
    total = row_weight.sum()
    return loss / (total + (total == 0).astype(total.dtype))


# ------------------------------------------------------------------ CTC
def ctc_loss(log_probs, labels, input_lengths, label_lengths, blank=0, reduction="mean", norm_by_times=False,
             zero_infinity=False):
    """Paddle's CTC (warp-ctc semantics): ``log_probs`` (T, N, C) are unnormalised scores
    (softmax applied inside), ``labels`` (N, S) padded past ``label_lengths``; 'mean' averages
    loss / label_length; ``norm_by_times`` divides each sequence's gradient (not its loss) by
    its input length; ``zero_infinity`` gives 0 loss and gradient to impossible alignments."""
    function = "ctc_loss"
    _reduction(reduction, function)
    for value, name in ((log_probs, "log_probs"), (labels, "labels"), (input_lengths, "input_lengths"),
                        (label_lengths, "label_lengths")):
        _tensor(value, name, function)
    if labels.is_floating_point():
        raise TypeError(f"{function}: 'labels' must be an int32 Tensor, got {labels.dtype}")
    losses = _ops().ctc(log_probs, labels, input_lengths, label_lengths, int(blank), bool(norm_by_times),
                        bool(zero_infinity))
    if reduction == "mean":
        return (losses / label_lengths.astype(losses.dtype)).mean()
    if reduction == "sum":
        return losses.sum()
    return losses
