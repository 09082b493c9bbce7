"""Stage 4: symbolic gradients and common-subexpression elimination.

The stabilized loss is differentiated by SymPy w.r.t. every differentiable input; the
results are stabilized again (never simplified into cancelling forms), lowered, and CSE'd
together with the loss so one generated function computes loss and gradients in one pass.
Non-differentiable points follow PyTorch: d|x|/dx = sign(x) = 0 at 0, relu/max have
derivative 0 at the kink, and the derivative of sign/step is 0.
"""
from dataclasses import dataclass

import sympy

from .lowering import lower
from .rewrites import stabilize


@dataclass
class Kernel:
    """Straight-line code: ``assignments`` (temporaries) then ``outputs`` (loss, gradients...)."""

    assignments: list
    outputs: list


@dataclass
class DerivedLoss:
    """The stable loss and its gradients for one variant, plus the fused kernels."""

    ir: object
    loss: sympy.Expr
    gradients: dict
    forward: Kernel
    forward_backward: Kernel


def derive(ir):
    """Stabilize, differentiate, lower and CSE one variant's loss."""
    loss = stabilize(ir.loss)
    gradients = {}
    for inp in ir.spec.differentiable_inputs:
        gradients[inp.name] = stabilize(_drop_distributions(sympy.diff(loss, ir.symbols[inp.name])))
    return DerivedLoss(
        ir=ir,
        loss=loss,
        gradients=gradients,
        forward=fuse([loss]),
        forward_backward=fuse([loss, *gradients.values()]),
    )


def declared_gradients(ir):
    """Gradients of the loss *as declared* (no rewrites), for references and the docs."""
    return {
        inp.name: _drop_distributions(sympy.diff(ir.loss, ir.symbols[inp.name]))
        for inp in ir.spec.differentiable_inputs
    }


def fuse(exprs):
    """Lower ``exprs`` and eliminate their common subexpressions into one Kernel."""
    lowered = [lower(e) for e in exprs]
    temporaries = sympy.numbered_symbols("_t", real=True)
    assignments, outputs = sympy.cse(lowered, symbols=temporaries, order="canonical", optimizations="basic")
    return Kernel(assignments=list(assignments), outputs=list(outputs))


def _drop_distributions(expr):
    """Derivatives of sign/Heaviside are 0 away from the origin and taken as 0 at it."""
    return expr.replace(sympy.DiracDelta, lambda *args: sympy.S.Zero)
