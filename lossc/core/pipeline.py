"""The one weighting/reduction pipeline every loss goes through (MMDetection's order).

element loss → × element weight → reduction ('none' | 'mean' | 'sum', optionally over some
axes only, 'mean' optionally divided by avg_factor + eps instead) → × loss_weight.

The same object also gives the factor by which the element gradients are scaled, so the
kernels fold weighting and reduction into their fused backward pass.
"""
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .backend import broadcasts_to

REDUCTIONS = ("none", "mean", "sum")
AVG_FACTOR_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Pipeline:
    """Weighting and reduction applied after the element loss.

    ``weight`` broadcasts to the element loss; ``axes`` limits the reduction to those
    axes (None: all); with ``avg_factor``, 'mean' is sum / (avg_factor + eps) where eps is
    float32's machine epsilon, as in MMDetection; 'mean' of an empty loss is NaN, as NumPy.
    """

    weight: object = None
    reduction: str = "mean"
    avg_factor: object = None
    loss_weight: float = 1.0
    axes: tuple | None = None

    def check(self, elem_shape):
        """Raise ValueError/TypeError for arguments that do not fit an element loss shape."""
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {self.reduction!r}")
        if self.avg_factor is not None:
            if self.reduction == "sum":
                raise ValueError("avg_factor can not be used with reduction='sum'")
            value = _scalar(self.avg_factor, "avg_factor")
            if not value > 0:
                raise ValueError(f"avg_factor must be positive, got {value}")
        _scalar(self.loss_weight, "loss_weight")
        if self.weight is not None:
            dtype = self.weight.dtype if hasattr(self.weight, "dtype") else np.asarray(self.weight).dtype
            if dtype.kind not in "biuf":
                raise TypeError(f"weight must be real numbers (an array or a number), got dtype {dtype}")
            shape = np.shape(self.weight)
            if not broadcasts_to(shape, elem_shape):
                raise ValueError(f"weight of shape {shape} does not broadcast to the element loss shape {tuple(elem_shape)}")

    def output_shape(self, elem_shape):
        """Shape of the reduced loss."""
        if self.reduction == "none":
            return tuple(elem_shape)
        axes = self._axes(len(elem_shape))
        return tuple(n for i, n in enumerate(elem_shape) if i not in axes)

    def apply(self, xp, elem, compute):
        """Reduce an element loss (any float dtype) into the output, in elem's dtype."""
        loss = elem.astype(compute, copy=False)
        if self.weight is not None:
            loss = loss * xp.asarray(self.weight, dtype=compute)
        if self.reduction != "none":
            axes = self._axes(elem.ndim)
            if self.reduction == "sum":
                loss = loss.sum(axis=axes, dtype=compute)
            elif self.avg_factor is not None:
                loss = loss.sum(axis=axes, dtype=compute) / (_scalar(self.avg_factor, "avg_factor") + AVG_FACTOR_EPS)
            else:
                loss = loss.mean(axis=axes, dtype=compute)
        if self.loss_weight != 1:
            loss = loss * float(self.loss_weight)
        return xp.asarray(loss, dtype=elem.dtype)

    def upstream(self, xp, elem_shape, compute, grad_output=None):
        """d(output · grad_output)/d(element loss): what the kernels multiply gradients by."""
        scale = float(self.loss_weight)
        axes = self._axes(len(elem_shape))
        if self.reduction == "mean":
            if self.avg_factor is not None:
                scale /= _scalar(self.avg_factor, "avg_factor") + AVG_FACTOR_EPS
            else:
                count = math.prod(elem_shape[i] for i in axes)
                scale = scale / count if count else math.nan
        factor = xp.asarray(scale, dtype=compute)
        if grad_output is not None:
            out_shape = self.output_shape(elem_shape)
            g = xp.asarray(grad_output, dtype=compute)
            if not broadcasts_to(g.shape, out_shape):
                raise ValueError(f"grad_output of shape {g.shape} does not broadcast to the loss shape {out_shape}")
            if self.reduction != "none":
                g = xp.broadcast_to(g, out_shape).reshape(
                    tuple(1 if i in axes else n for i, n in enumerate(elem_shape))
                )
            factor = factor * g
        if self.weight is not None:
            factor = factor * xp.asarray(self.weight, dtype=compute)
        return factor

    def _axes(self, ndim):
        if self.axes is None:
            return tuple(range(ndim))
        return tuple(sorted(a % ndim for a in self.axes)) if ndim else ()


def _scalar(value, name):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, np.generic)):
        if not (hasattr(value, "shape") and hasattr(value, "item")):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if np.size(value) != 1:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    number = float(value.item() if hasattr(value, "item") else value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number
