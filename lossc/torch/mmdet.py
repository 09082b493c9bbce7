"""MMDetection's loss modules on tensors, in autograd, and in an mmengine registry.

``build_loss(dict(type=...))`` returns ``nn.Module``\\ s with MMDetection 3.x's forward
``(pred, target, weight=None, avg_factor=None, reduction_override=None)`` for FocalLoss,
CrossEntropyLoss, SmoothL1Loss, L1Loss and MSELoss, with the semantics of
:mod:`lossc.mmdet` (which matches MMDetection 3.3.0): class-index targets with background =
num_classes or one-hot targets for the focal loss; class_weight, ignore_index and
avg_non_ignore for the cross-entropy; MMDetection's pipeline (weight, 'mean' divided by
avg_factor + eps) through lossc's. Unlike MMDetection, the sigmoid cross-entropy keeps a
float64 input in float64 (MMDetection computes it in float32).

Importing this module with mmengine installed registers every class in the child registry
``Registry('model', parent=mmengine.registry.MODELS, scope='lossc')``, so an MMDetection
config builds them with ``custom_imports=dict(imports=['lossc.torch.mmdet'])`` and
``type='lossc.FocalLoss'``. A registered spec that says ``exposed_as: {mmdet: Name}`` is
built by ``type='lossc.Name'`` too.
"""
import functools

import torch

from ..layers.mmdet import build_class, config_type
from ..core.pipeline import REDUCTIONS
from ..core.registry import exposed, on_register
from . import get

_MODULES = {}


def _register(cls):
    _MODULES[cls.__name__] = cls
    return cls


def build_loss(cfg):
    """Build a loss module from ``dict(type=NAME, **kwargs)`` (an optional 'lossc.' prefix is
    accepted): the MMDetection modules, and the names registered specs' ``exposed_as: {mmdet:
    Name}`` give (their parameters as keywords)."""
    name, kwargs = config_type(cfg)
    if name in _MODULES:
        return build_class(_MODULES[name], name, kwargs)
    adapters = exposed("mmdet")
    if name in adapters:
        return _exposed_module(name, adapters[name])(**kwargs)
    known = sorted(_MODULES) + sorted(adapters)
    raise KeyError(f"unknown loss type {name!r}; known types: {', '.join(known)}")


class _MMDetLoss(torch.nn.Module):
    """MMDetection's call protocol over one lossc spec."""

    def __init__(self, spec, reduction="mean", loss_weight=1.0, **params):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
        self.spec, self.reduction, self.loss_weight, self.params = spec, reduction, float(loss_weight), params

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        """The weighted, reduced loss times loss_weight."""
        if reduction_override not in (None, *REDUCTIONS):
            raise ValueError(f"reduction_override must be None or one of {', '.join(map(repr, REDUCTIONS))}")
        reduction = reduction_override or self.reduction
        inputs, weight, avg_factor, params = self.prepare(pred, target, weight, avg_factor, reduction)
        return get(self.spec)(*inputs, weight=weight, reduction=reduction, avg_factor=avg_factor,
                              loss_weight=self.loss_weight, **{**self.params, **params})

    def prepare(self, pred, target, weight, avg_factor, reduction):
        """(spec inputs, element weight, avg_factor, extra parameters) for one call."""
        return (pred, target), weight, avg_factor, {}

    def extra_repr(self):
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"


def _weight_like_loss(weight, shape):
    """MMDetection's weight reshaping: (N,) → (N, 1); a flat weight of the loss's size → its shape."""
    if weight is None or tuple(weight.shape) == tuple(shape) or len(shape) != 2:
        return weight
    if weight.dim() == 1 and weight.shape[0] == shape[0]:
        return weight.reshape(-1, 1)
    return weight.reshape(shape) if weight.numel() == shape[0] * shape[1] else weight


def _one_hot_without_background(target, pred):
    """F.one_hot(target, C + 1)[:, :C] in pred's dtype; one-hot targets pass through."""
    if target.dim() == pred.dim():
        return target.to(pred.dtype)
    if target.is_floating_point():
        raise TypeError(f"target labels must be integers, got {target.dtype}")
    classes = pred.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) > classes):
        raise ValueError(f"target labels must be in [0, {classes}] ({classes} = background)")
    return (target[:, None] == torch.arange(classes, device=target.device)[None, :]).to(pred.dtype)


@_register
class FocalLoss(_MMDetLoss):
    """Sigmoid focal loss; target (N,) class indices (C = background) or one-hot (N, C)."""

    def __init__(self, use_sigmoid=True, gamma=2.0, alpha=0.25, reduction="mean", loss_weight=1.0, activated=False):
        if not use_sigmoid:
            raise NotImplementedError("Only sigmoid focal loss supported now.")
        if activated:
            raise NotImplementedError("activated=True (probability inputs) is not supported; pass logits")
        super().__init__("sigmoid_focal", reduction, loss_weight, gamma=float(gamma), alpha=float(alpha))

    def prepare(self, pred, target, weight, avg_factor, reduction):
        return (pred, _one_hot_without_background(target, pred)), _weight_like_loss(weight, pred.shape), avg_factor, {}


@_register
class CrossEntropyLoss(_MMDetLoss):
    """Softmax cross-entropy over (N, C) logits and (N,) labels, or with use_sigmoid BCE over
    one-hot labels (ignore_index rows weigh 0; C = background gives an all-zero row)."""

    def __init__(self, use_sigmoid=False, use_mask=False, reduction="mean", class_weight=None, ignore_index=None,
                 loss_weight=1.0, avg_non_ignore=False):
        if use_mask:
            raise NotImplementedError("CrossEntropyLoss(use_mask=True) is not supported")
        spec = "sigmoid_bce" if use_sigmoid else "softmax_ce"
        super().__init__(spec, reduction, loss_weight)
        self.use_sigmoid, self.class_weight = use_sigmoid, class_weight
        self.ignore_index = -100 if ignore_index is None else int(ignore_index)
        self.avg_non_ignore = avg_non_ignore

    def prepare(self, pred, target, weight, avg_factor, reduction):
        class_weight = None if self.class_weight is None else torch.as_tensor(self.class_weight, dtype=pred.dtype,
                                                                              device=pred.device)
        if not self.use_sigmoid:
            if self.avg_non_ignore and avg_factor is None and reduction == "mean":
                avg_factor = float(target.numel() - int((target == self.ignore_index).sum()))
            params = {"ignore_index": self.ignore_index, "class_weighted": class_weight is not None}
            weight = None if weight is None else weight.to(pred.dtype)
            return (pred, target, 1.0 if class_weight is None else class_weight), weight, avg_factor, params
        if target.dim() != pred.dim():
            valid = (target >= 0) & (target != self.ignore_index)
            if self.avg_non_ignore and avg_factor is None and reduction == "mean":
                avg_factor = float(valid.sum())
            element_weight = valid[:, None].expand(pred.shape).to(pred.dtype)
            if weight is not None:
                element_weight = element_weight * weight.to(pred.dtype).reshape(-1, 1)
            target = _one_hot_without_background(torch.where(valid, target, pred.shape[1]), pred)
            weight = element_weight
        return (pred, target.to(pred.dtype), 1.0 if class_weight is None else class_weight), weight, avg_factor, {}


@_register
class SmoothL1Loss(_MMDetLoss):
    """Smooth L1 with threshold beta (lossc's huber with rho = beta)."""

    def __init__(self, beta=1.0, reduction="mean", loss_weight=1.0):
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        super().__init__("huber", reduction, loss_weight, rho=float(beta))


@_register
class L1Loss(_MMDetLoss):
    """|pred − target|."""

    def __init__(self, reduction="mean", loss_weight=1.0):
        super().__init__("l1", reduction, loss_weight)


@_register
class MSELoss(_MMDetLoss):
    """(pred − target)²."""

    def __init__(self, reduction="mean", loss_weight=1.0):
        super().__init__("mse", reduction, loss_weight)


class _ExposedModule(_MMDetLoss):
    """The module of a spec that says ``exposed_as: {mmdet: Name}``: MMDetection's forward with
    the spec's inputs (pred, target), its parameters as constructor keywords."""

    loss_name = None

    def __init__(self, reduction="mean", loss_weight=1.0, **params):
        get(self.loss_name).loss.check_parameters(params, type(self).__name__, ("reduction", "loss_weight"))
        super().__init__(self.loss_name, reduction, loss_weight, **params)


@functools.lru_cache(maxsize=None)
def _exposed_module(name, loss_name):
    """The module class ``name`` over the registered loss ``loss_name`` (one class per pair)."""
    return type(name, (_ExposedModule,), {"loss_name": loss_name, "__doc__": f"MMDetection loss over '{loss_name}'."})


def _register_in_mmengine():
    """The mmengine child registry with every module, or None without mmengine; the names of
    losses registered later are added as they come (:func:`lossc.core.registry.on_register`)."""
    try:
        from mmengine.registry import MODELS, Registry
    except ImportError:
        return None
    registry = Registry("model", parent=MODELS, scope="lossc")
    for name, cls in _MODULES.items():
        registry.register_module(name=name, module=cls, force=True)

    def add_exposed():
        for name, loss_name in exposed("mmdet").items():
            registry.register_module(name=name, module=_exposed_module(name, loss_name), force=True)

    add_exposed()
    on_register(add_exposed)
    return registry


MODELS = _register_in_mmengine()
