"""MMDetection's loss API: ``build_loss(dict(type=..., **kwargs))`` and its loss modules.

Every built loss is called as ``loss(pred, target, weight=None, avg_factor=None,
reduction_override=None)`` and runs MMDetection's pipeline — element loss → element
weight → reduction ('none' | 'mean' | 'sum', 'mean' divided by avg_factor + eps when
given) → loss_weight — through lossc's shared :class:`~lossc.Pipeline`. Besides the
MMDetection names, every spec (and every user spec registered with
``lossc.register_generated``) is buildable by its own name, and by the name its spec's
``exposed_as: {mmdet: Name}`` gives it.
"""
import inspect

import numpy as np

from ..core.backend import array_module
from ..core.pipeline import REDUCTIONS, Pipeline
from ..core.registry import exposed, get, list_losses

_LOSSES = {}


def register(cls):
    """Class decorator adding an MMDetection-style loss to the ``build_loss`` registry."""
    _LOSSES[cls.__name__] = cls
    return cls


def build_loss(cfg):
    """Build a loss from ``dict(type=NAME, **kwargs)``; errors list known types / bad kwargs."""
    name, kwargs = config_type(cfg)
    if name in _LOSSES:
        return build_class(_LOSSES[name], name, kwargs)
    adapters = exposed("mmdet")
    if name in adapters or name in list_losses():
        return SpecLoss(adapters.get(name, name), **kwargs)
    known = sorted(_LOSSES) + sorted(adapters) + list_losses()
    raise KeyError(f"unknown loss type {name!r}; known types: {', '.join(known)}")


def config_type(cfg):
    """(type name without a 'lossc.' scope prefix, the other keywords) of a config dict."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise TypeError(f"build_loss expects a dict with a 'type' key, got {cfg!r}")
    kwargs = dict(cfg)
    return str(kwargs.pop("type")).removeprefix("lossc."), kwargs


def build_class(cls, name, kwargs):
    """``cls(**kwargs)``, unknown keywords named with the allowed ones."""
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{name} got unknown argument(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}")
    return cls(**kwargs)


class _MMDetLoss:
    """Shared call protocol: element loss from a spec, then MMDetection's pipeline."""

    def __init__(self, spec, reduction="mean", loss_weight=1.0, **params):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
        self.loss = get(spec)
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.params = params

    def __call__(self, pred, target, weight=None, avg_factor=None, reduction_override=None, **inputs):
        """The weighted, reduced loss times loss_weight."""
        return self._run(pred, target, weight, avg_factor, reduction_override, inputs, False)

    def value_and_grad(self, pred, target, weight=None, avg_factor=None, reduction_override=None, **inputs):
        """(loss, (d pred,)): the gradient of the (summed) result w.r.t. pred."""
        return self._run(pred, target, weight, avg_factor, reduction_override, inputs, True)

    def _inputs(self, pred, target, weight):
        """Element-loss inputs and the element weight; subclasses adapt targets/weights."""
        return (pred, target), weight, {}

    def _run(self, pred, target, weight, avg_factor, reduction_override, inputs, with_grad):
        if reduction_override not in (None, *REDUCTIONS):
            raise ValueError(f"reduction_override must be None or one of {', '.join(map(repr, REDUCTIONS))}")
        reduction = reduction_override or self.reduction
        xp = array_module(pred, target, weight)  # NumPy or CuPy, never an implicit copy
        pred = xp.asarray(pred)
        args, weight, extra = self._inputs(pred, xp.asarray(target), weight)
        call = self.loss.bind(args, {**self.params, **extra, **inputs})
        pipeline = Pipeline(weight, reduction, avg_factor, self.loss_weight)
        return self.loss.evaluate(call, pipeline, with_grad)


def _weight_like_loss(weight, loss_shape):
    """MMDetection's weight reshaping: (N,) → (N, 1); a flat weight of loss's size → loss shape."""
    if weight is None:
        return None
    weight = array_module(weight).asarray(weight)
    if weight.shape != tuple(loss_shape) and len(loss_shape) == 2:
        if weight.shape[:1] == tuple(loss_shape[:1]) and weight.ndim == 1:
            return weight.reshape(-1, 1)
        if weight.size == loss_shape[0] * loss_shape[1]:
            return weight.reshape(loss_shape)
    return weight


@register
class FocalLoss(_MMDetLoss):
    """Sigmoid focal loss; target (N,) integer labels where C means background, or one-hot (N, C)."""

    def __init__(self, use_sigmoid=True, gamma=2.0, alpha=0.25, reduction="mean", loss_weight=1.0, activated=False):
        if not use_sigmoid:
            raise NotImplementedError("Only sigmoid focal loss supported now.")
        if activated:
            raise NotImplementedError("activated=True (probability inputs) is not supported; pass logits")
        super().__init__("sigmoid_focal", reduction, loss_weight, gamma=gamma, alpha=alpha)

    def _inputs(self, pred, target, weight):
        return (pred, _one_hot_without_background(target, pred)), _weight_like_loss(weight, pred.shape), {}


def _one_hot_without_background(target, pred):
    """F.one_hot(target, C + 1)[:, :C] as pred's dtype; one-hot targets pass through."""
    if target.ndim == pred.ndim:
        return target.astype(pred.dtype)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target labels must be integers, got dtype {target.dtype}")
    if pred.ndim != 2 or target.shape != pred.shape[:1]:
        raise ValueError(f"target of shape {target.shape} does not match pred of shape {pred.shape} (expected (N,) labels)")
    classes = pred.shape[1]
    if target.size and (int(target.min()) < 0 or int(target.max()) > classes):
        raise ValueError(f"target labels must be in [0, {classes}] ({classes} = background), got {target.min()}..{target.max()}")
    xp = array_module(pred, target)
    return (target[:, None] == xp.arange(classes)[None, :]).astype(pred.dtype)


@register
class CrossEntropyLoss(_MMDetLoss):
    """MMDetection's CrossEntropyLoss: softmax CE over (N, C) logits and (N,) labels, or with
    use_sigmoid=True, BCE over one-hot labels (C = background gives an all-zero row)."""

    def __init__(self, use_sigmoid=False, use_mask=False, reduction="mean", class_weight=None,
                 ignore_index=None, loss_weight=1.0, avg_non_ignore=False):
        if use_mask:
            raise NotImplementedError("CrossEntropyLoss(use_mask=True) is not supported")
        self.use_sigmoid = use_sigmoid
        if use_sigmoid:
            super().__init__("sigmoid_bce", reduction, loss_weight, from_sigmoid=False)
        else:
            super().__init__("softmax_ce", reduction, loss_weight, class_weighted=class_weight is not None)
        self.class_weight = class_weight
        self.ignore_index = -100 if ignore_index is None else ignore_index
        self.avg_non_ignore = avg_non_ignore

    def _run(self, pred, target, weight, avg_factor, reduction_override, inputs, with_grad):
        pred, target = np.asarray(pred), np.asarray(target)
        if not self.use_sigmoid:
            return self._softmax(pred, target, weight, avg_factor, reduction_override, inputs, with_grad)
        if target.ndim != pred.ndim:
            valid = target != self.ignore_index
            if self.avg_non_ignore and avg_factor is None and (reduction_override or self.reduction) == "mean":
                avg_factor = float(valid.sum())
            onehot = _one_hot_without_background(np.where(valid, target, pred.shape[1]), pred)
            element_weight = np.broadcast_to(valid[:, None], pred.shape).astype(pred.dtype)
            if weight is not None:
                element_weight = element_weight * np.asarray(weight, dtype=pred.dtype).reshape(-1, 1)
            target, weight = onehot, element_weight
        if self.class_weight is not None:
            inputs = {**inputs, "pos_weight": np.asarray(self.class_weight, dtype=pred.dtype)}
        return super()._run(pred, target, weight, avg_factor, reduction_override, inputs, with_grad)

    def _softmax(self, pred, target, weight, avg_factor, reduction_override, inputs, with_grad):
        """mmdet's cross_entropy: F.cross_entropy(reduction='none') → weight → reduce → loss_weight."""
        reduction = reduction_override or self.reduction
        if self.avg_non_ignore and avg_factor is None and reduction == "mean":
            avg_factor = float(target.size - np.count_nonzero(target == self.ignore_index))
        if self.class_weight is not None:
            inputs = {**inputs, "class_weight": np.asarray(self.class_weight, dtype=pred.dtype)}
        call = self.loss.bind((pred, target), {**self.params, "ignore_index": self.ignore_index, **inputs})
        weight = None if weight is None else np.asarray(weight, dtype=pred.dtype)
        return self.loss.evaluate(call, Pipeline(weight, reduction, avg_factor, self.loss_weight), with_grad)


@register
class SmoothL1Loss(_MMDetLoss):
    """Smooth L1 with threshold beta (lossc's huber with rho = beta)."""

    def __init__(self, beta=1.0, reduction="mean", loss_weight=1.0):
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        super().__init__("huber", reduction, loss_weight, rho=beta)


@register
class L1Loss(_MMDetLoss):
    """|pred − target|."""

    def __init__(self, reduction="mean", loss_weight=1.0):
        super().__init__("l1", reduction, loss_weight)

    def _inputs(self, pred, target, weight):
        return (pred, target), weight, {}


@register
class MSELoss(_MMDetLoss):
    """(pred − target)²."""

    def __init__(self, reduction="mean", loss_weight=1.0):
        super().__init__("mse", reduction, loss_weight)


class SpecLoss(_MMDetLoss):
    """Any registered spec by its own name: spec parameters plus reduction/loss_weight."""

    def __init__(self, name, reduction="mean", loss_weight=1.0, **params):
        get(name).check_parameters(params, name, ("reduction", "loss_weight"))
        super().__init__(name, reduction, loss_weight, **params)
