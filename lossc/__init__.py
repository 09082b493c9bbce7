"""lossc: losses declared once as SymPy formulas, compiled to stable NumPy, CuPy and JAX kernels.

``lossc.get(name)`` returns a loss; call it with arrays, or use ``.value_and_grad``.
The Gluon, MMDetection and Paddle layers live in ``lossc.gluon``, ``lossc.mmdet``
(also ``lossc.build_loss``) and ``lossc.paddle``; the training bridges ``lossc.torch``,
``lossc.jax`` and ``lossc.paddle`` (on Paddle tensors) import their framework only when used.

The runtime is arranged by role: ``lossc.core`` (losses, registry, pipeline, layouts, pairs,
the target registry), ``lossc.kernels`` (the NumPy, CuPy and native runtimes the generated
modules run on), ``lossc.algorithms`` (CTC, SSD, sampling) and ``lossc.layers`` (Gluon,
MMDetection). The user-facing modules keep their short paths: ``lossc.gluon``,
``lossc.mmdet``, ``lossc.ssd``, ``lossc.sampling`` and ``lossc.native`` are those modules.
"""
import sys

from .algorithms.ctc import ctc_loss
from .core.loss import Loss
from .core.pipeline import Pipeline
from .core.registry import get, list_losses, register_generated
from .algorithms import sampling, ssd
from .kernels import native
from .layers import gluon, mmdet

# the public short paths: `import lossc.gluon` / `from lossc.ssd import ...` find these modules
for _module in (gluon, mmdet, ssd, sampling, native):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module

__all__ = ["Loss", "Pipeline", "get", "list_losses", "register_generated", "build_loss", "ctc_loss"]


def build_loss(cfg):
    """MMDetection-style construction from ``dict(type=..., **kwargs)``; see lossc.mmdet."""
    return mmdet.build_loss(cfg)
