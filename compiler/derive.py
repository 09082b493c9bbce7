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
from .reductions import element_level, reductions_in, row_sum, split_row_sums
from .rewrites import stabilize

GRAD_OUTPUT = sympy.Symbol("grad_output", real=True)


@dataclass
class Kernel:
    """Straight-line code: ``assignments`` (temporaries) then ``outputs`` (loss, gradients...)."""

    assignments: list
    outputs: list


@dataclass
class DerivedLoss:
    """The stable loss and its gradients for one variant, plus the fused kernels.

    For element-wise losses the gradients are ∂loss/∂input (the kernels multiply by
    grad_output); for losses with reductions they are already d Σ(grad_output·loss)/d input.
    """

    ir: object
    loss: sympy.Expr
    gradients: dict
    forward: Kernel
    forward_backward: Kernel

    @property
    def loss_is_row_level(self):
        """True when the loss has one value per row (it reduced the class axis away)."""
        return self.ir.has_reductions and not element_level(self.loss, self.ir.element_symbols)


def derive(ir):
    """Stabilize, differentiate, lower and CSE one variant's loss."""
    loss = stabilize(ir.loss)
    gradients = {}
    for inp in ir.spec.differentiable_inputs:
        if ir.has_reductions:
            gradient = reduction_gradient(loss, ir.symbols[inp.name], ir.element_symbols)
        else:
            gradient = sympy.diff(loss, ir.symbols[inp.name])
        gradients[inp.name] = stabilize(_drop_distributions(gradient))
    kernel_exprs = [loss, *gradients.values()]
    if ir.has_reductions:
        kernel_exprs = [split_row_sums(e, ir.element_symbols) for e in kernel_exprs]
    return DerivedLoss(
        ir=ir,
        loss=loss,
        gradients=gradients,
        forward=fuse(kernel_exprs[:1]),
        forward_backward=fuse(kernel_exprs),
    )


def reduction_gradient(loss, x, element_symbols):
    """d Σ(grad_output · loss) / d x_j for a loss with reductions along the class axis.

    Reverse mode over the reductions: each reduction r_k = R_k(a_k) is replaced by a row
    symbol ρ_k; its adjoint A_k = ∂O/∂ρ_k collects the loss's direct dependence (summed
    along the row when the loss is element-level) and that of every outer reduction
    through its argument. Then dO/dx_j = grad_output·∂loss_j/∂x_j + Σ_k A_k·R_k'(a_k)_j·∂a_kj/∂x_j,
    with R' the reduction's rule (sum → 1, max → arg-max mask, logsumexp → softmax).
    Row sums that are exact in closed form (Σ_j [j = y] = 1, Σ_j c = classes·c) are folded.
    """
    nodes = reductions_in(loss)
    rho = [sympy.Symbol(f"_rho{k}", real=True) for k in range(len(nodes))]
    to_rho = dict(zip(nodes, rho))
    placeholder = lambda e: e.xreplace(to_rho)  # noqa: E731
    objective = placeholder(loss)
    arguments = [placeholder(n.args[0]) for n in nodes]
    rules = [placeholder(n.local_derivative()).xreplace({n.args[0]: arguments[k]}) for k, n in enumerate(nodes)]
    rules = [r.xreplace({n: rho[k]}) for k, (r, n) in enumerate(zip(rules, nodes))]
    elementwise = element_level(loss, element_symbols)
    adjoints = {}
    for k in reversed(range(len(nodes))):
        direct = GRAD_OUTPUT * sympy.diff(objective, rho[k])
        adjoint = row_sum(direct, element_symbols) if elementwise else direct
        for m in range(k + 1, len(nodes)):
            inner = sympy.diff(arguments[m], rho[k])
            if inner != 0:
                adjoint += adjoints[m] * row_sum(rules[m] * inner, element_symbols)
        adjoints[k] = sympy.expand(adjoint, deep=False)
    gradient = GRAD_OUTPUT * sympy.diff(objective, x) if elementwise else sympy.S.Zero
    for k in range(len(nodes)):
        gradient += adjoints[k] * rules[k] * sympy.diff(arguments[k], x)
    return gradient.xreplace(dict(zip(rho, nodes)))


def declared_gradients(ir):
    """Gradients of the loss *as declared* (no rewrites), for references and the docs.

    With reductions, the gradient of Σ loss (grad_output = 1) w.r.t. each element."""
    gradients = {}
    for inp in ir.spec.differentiable_inputs:
        x = ir.symbols[inp.name]
        if ir.has_reductions:
            gradient = reduction_gradient(ir.loss, x, ir.element_symbols).subs(GRAD_OUTPUT, 1)
        else:
            gradient = sympy.diff(ir.loss, x)
        gradients[inp.name] = _drop_distributions(gradient)
    return gradients


def fuse(exprs):
    """Lower ``exprs`` and eliminate their common subexpressions into one Kernel."""
    lowered = [lower(e) for e in exprs]
    temporaries = sympy.numbered_symbols("_t", real=True)
    assignments, outputs = sympy.cse(lowered, symbols=temporaries, order="canonical", optimizations="basic")
    return Kernel(assignments=list(assignments), outputs=list(outputs))


def _drop_distributions(expr):
    """Derivatives of sign/Heaviside are 0 away from the origin and taken as 0 at it."""
    return expr.replace(sympy.DiracDelta, lambda *args: sympy.S.Zero)
