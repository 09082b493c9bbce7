"""lossc in PyTorch: every loss a differentiable, ``torch.compile``-able op on tensors.

``lossc.torch.get(name)`` returns a function with the inputs, parameters and pipeline
arguments of ``lossc.get(name)`` (``weight``, ``reduction``, ``avg_factor``,
``loss_weight``) that takes and returns tensors and lives in autograd: the forward runs
the fused loss-and-gradient kernel once when an input requires grad (see
:mod:`lossc.torch.ops`). ``lossc.torch.Loss(name, **params)`` is the ``nn.Module``;
``lossc.torch.<name>`` is ``get(name)`` for names that are not a drop-in of
``torch.nn.functional`` (those are in :mod:`lossc.torch.functional` and exported here).

float32 and float64 compute in their own precision; float16 and bfloat16 compute in float32
and return the input's dtype. Inputs are never modified.

Importing this module needs PyTorch (``pip install -e ".[torch]"``); ``import lossc`` does not.
"""
import torch

from ..core.registry import get as _get_loss
from ..core.registry import list_losses as _list_losses
from .functional import (binary_cross_entropy_with_logits, cosine_embedding_loss, cross_entropy, ctc_loss,
                         huber_loss, kl_div, poisson_nll_loss, sigmoid_focal_loss, smooth_l1_loss)
from .ops import can_run_eagerly, eager, fast_eager, op

__all__ = ["get", "Loss", "binary_cross_entropy_with_logits", "cosine_embedding_loss", "cross_entropy", "ctc_loss", "huber_loss", "kl_div",
           "poisson_nll_loss", "smooth_l1_loss", "sigmoid_focal_loss", "SSDMultiBoxLoss"]
LOW_PRECISION = (torch.float16, torch.bfloat16)


class TorchLoss:
    """A lossc loss on tensors (what ``get`` returns)."""

    def __init__(self, loss):
        self.loss = loss
        self.name = loss.name
        self.__doc__ = f"{loss.summary}\n\n{loss.doc}"
        self._specs = loss.pair_inputs or loss.inputs  # what a call takes: a pair loss takes its pair inputs

    def __repr__(self):
        return f"<lossc.torch loss {self.name}>"

    def __call__(self, *args, weight=None, reduction="mean", avg_factor=None, loss_weight=1.0, **kwargs):
        """The loss after the pipeline, a tensor in the prediction's dtype (element-wise for 'none')."""
        if self.loss.fast_path is not None and weight is None and avg_factor is None:
            result = fast_eager(self.loss.fast_path, args, kwargs, reduction, loss_weight)
            if result is not None:
                return result
        values, variant, runtime, axis = self.loss.split_arguments(args, kwargs)
        tensors = self._tensors(values)
        pred = tensors[0]
        out_dtype = pred.dtype
        if out_dtype in LOW_PRECISION:
            tensors = [t.float() if t.is_floating_point() else t for t in tensors]
        if weight is not None:
            if isinstance(weight, torch.Tensor) and weight.requires_grad and torch.is_grad_enabled():
                raise ValueError(f"{self.name}: weight requires grad; lossc treats the element weight as a "
                                 "constant (detach it, or multiply a reduction='none' loss by it)")
            weight = torch.as_tensor(weight, device=pred.device)
            weight = weight.to(tensors[0].dtype) if weight.is_floating_point() else weight.double().to(tensors[0].dtype)
        with_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t, spec in zip(tensors, self._specs) if spec["differentiable"])
        arguments = (tensors, [float(v) for v in runtime.values()], weight, str(reduction),
                     None if avg_factor is None else float(avg_factor), float(loss_weight), int(axis), with_grad)
        kernel = op(self.loss, variant)  # registered on first use, so a later torch.compile finds it
        if can_run_eagerly(tensors + ([] if weight is None else [weight])):
            return eager(self.loss, variant, *arguments).to(out_dtype)
        return kernel(*arguments)[0].to(out_dtype)

    def _tensors(self, values):
        """Every input as a tensor on the prediction's device; a clear error for what does not fit."""
        pred = values[0]
        if not isinstance(pred, torch.Tensor):
            raise TypeError(f"{self.name}: the prediction '{self._specs[0]['name']}' must be a torch.Tensor, "
                            f"got {type(pred).__name__}")
        if not pred.is_floating_point():
            raise TypeError(f"{self.name}: the prediction must be a floating-point tensor, got {pred.dtype}")
        tensors = []
        for spec, value in zip(self._specs, values):
            name = spec["name"]
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(
                value, dtype=pred.dtype if isinstance(value, float) else None, device=pred.device)
            if tensor.device != pred.device:
                raise ValueError(f"{self.name}: input '{name}' is on {tensor.device} but the prediction is on "
                                 f"{pred.device}")
            if tensor.requires_grad and not spec["differentiable"]:
                raise ValueError(f"{self.name}: input '{name}' requires grad but the loss is not differentiable "
                                 f"with respect to it (detach it)")
            if tensor.is_complex():
                raise TypeError(f"{self.name}: input '{name}' must be real, got {tensor.dtype}")
            if tensor.is_floating_point() and tensor.dtype != pred.dtype and pred.dtype not in LOW_PRECISION:
                tensor = tensor.to(pred.dtype)
            tensors.append(tensor)
        return tensors


def get(name):
    """The lossc loss ``name`` (built-in or registered with ``lossc.register_generated``) on tensors."""
    loss = _get_loss(name)
    if _cache.get(name, (None,))[0] is not loss:
        _cache[name] = (loss, TorchLoss(loss))
    return _cache[name][1]


def _register_ops():
    """Every variant's op of the registered losses, so that a function compiled before its
    first eager call finds them (torch.compile cannot trace a registration)."""
    for name in _list_losses():
        loss = _get_loss(name)
        for entry in loss.manifest["variants"]:
            op(loss, entry["values"])


_cache = {}


class Loss(torch.nn.Module):
    """``nn.Module`` around ``get(name)``; constructor keywords are fixed parameters and
    pipeline arguments, call keywords override them."""

    def __init__(self, name, **params):
        super().__init__()
        self.name, self.params = name, params
        self.fn = get(name)

    def forward(self, *args, **kwargs):
        """The loss of the inputs (see :class:`TorchLoss`)."""
        return self.fn(*args, **{**self.params, **kwargs})

    def extra_repr(self):
        return ", ".join([repr(self.name)] + [f"{k}={v!r}" for k, v in self.params.items()])


from .ssd import SSDMultiBoxLoss  # noqa: E402  (it builds on get)

_register_ops()


def __getattr__(name):
    """``lossc.torch.<loss name>`` for every registered loss not shadowed by a drop-in."""
    try:
        return get(name)
    except KeyError:
        raise AttributeError(f"module 'lossc.torch' has no attribute {name!r}") from None
