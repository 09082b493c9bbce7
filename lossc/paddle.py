"""Paddle's ``paddle.nn.functional.sigmoid_focal_loss`` over lossc kernels."""
import numpy as np

from .pipeline import REDUCTIONS, Pipeline
from .registry import get


def _focal(logit, label, normalizer, alpha, gamma, reduction, with_grad):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    weight = None
    if normalizer is not None:
        normalizer = np.asarray(normalizer)
        if normalizer.ndim > 1 or normalizer.size != 1:
            raise ValueError(f"Expected zero or one dimension of normalizer with one element, got shape {normalizer.shape}")
        weight = 1.0 / normalizer.reshape(())
    loss = get("sigmoid_focal")
    call = loss.bind((logit, label), {"alpha": alpha, "gamma": gamma})
    return loss.evaluate(call, Pipeline(weight, reduction), with_grad)


def sigmoid_focal_loss(logit, label, normalizer=None, alpha=0.25, gamma=2.0, reduction="sum"):
    """Paddle's sigmoid focal loss: element loss / normalizer, then 'sum' | 'mean' | 'none'."""
    return _focal(logit, label, normalizer, alpha, gamma, reduction, False)


def sigmoid_focal_loss_value_and_grad(logit, label, normalizer=None, alpha=0.25, gamma=2.0, reduction="sum"):
    """(loss, (d logit,)): sigmoid_focal_loss and the gradient of its sum w.r.t. logit."""
    return _focal(logit, label, normalizer, alpha, gamma, reduction, True)


sigmoid_focal_loss.value_and_grad = sigmoid_focal_loss_value_and_grad
