"""lossc: losses declared once as SymPy formulas, compiled to stable NumPy, CuPy and JAX kernels.

``lossc.get(name)`` returns a loss; call it with arrays, or use ``.value_and_grad``.
The Gluon, MMDetection and Paddle layers live in ``lossc.gluon``, ``lossc.mmdet``
(also ``lossc.build_loss``) and ``lossc.paddle``; the training bridges ``lossc.torch``,
``lossc.jax`` and ``lossc.paddle`` (on Paddle tensors) import their framework only when used.
"""
from .ctc import ctc_loss
from .loss import Loss
from .pipeline import Pipeline
from .registry import get, list_losses, register_generated

__all__ = ["Loss", "Pipeline", "get", "list_losses", "register_generated", "build_loss", "ctc_loss"]


def build_loss(cfg):
    """MMDetection-style construction from ``dict(type=..., **kwargs)``; see lossc.mmdet."""
    from .mmdet import build_loss as _build

    return _build(cfg)
