"""Stage 4: symbolic gradients and common-subexpression elimination.

The stabilized loss is differentiated by SymPy w.r.t. every differentiable input; the
results are stabilized again (never simplified into cancelling forms), lowered, and CSE'd
together with the loss so one generated function computes loss and gradients in one pass.
Non-differentiable points follow PyTorch: d|x|/dx = sign(x) = 0 at 0, relu/max have
derivative 0 at the kink, and the derivative of sign/step is 0.

A loss whose large definitions are graph nodes (``ir.nodes``) is differentiated in reverse
mode over that graph: each node's local derivatives once, an adjoint symbol per node
(``_a0``, ``_a1``, …), so the cost grows with the number of definitions, not with the size
of the expression they would inline to.
"""
from dataclasses import dataclass, field

import sympy

from .lowering import lower
from .reductions import element_level, reductions_in, row_sum, split_row_sums
from .rewrites import stabilize
from .rules import recording

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
    ``steps`` are the graph's (symbol, expression) assignments the loss and gradients read:
    its nodes, then their adjoints (empty when every definition was inlined).
    """

    ir: object
    loss: sympy.Expr
    gradients: dict
    forward: Kernel
    forward_backward: Kernel
    steps: list = field(default_factory=list)
    rules_applied: list = field(default_factory=list)

    @property
    def loss_is_row_level(self):
        """True when the loss has one value per row (it reduced the class axis away)."""
        return self.ir.has_reductions and not element_level(self.loss, self.ir.element_symbols)


def derive(ir, together=False):
    """Stabilize, differentiate, lower and CSE one variant's loss (with the rules enabled now,
    see :func:`rules.disabled`); ``rules_applied`` names the canonicalize and stabilize
    rules that fired. ``together`` puts each gradient over one denominator before it is
    stabilized (SymPy's ``factor``): an alternative form for :mod:`verify`, which keeps it
    where it measures better (the quotient rule's a/(u+4) − a·u/(u+4)² cancels at large u)."""
    with recording() as fired:
        return _derive(ir, fired, together)


def _derive(ir, fired, together):
    loss = stabilize(ir.loss)
    nodes = [(symbol, stabilize(expr)) for symbol, expr in ir.nodes]
    combine = sympy.factor if together else (lambda e: e)
    finish = lambda e: stabilize(combine(_drop_distributions(e)))  # noqa: E731
    if nodes:
        adjoints, gradients = chain_rule(loss, nodes, _differentiable_symbols(ir), finish)
    else:
        adjoints, gradients = [], {}
        for inp in ir.spec.differentiable_inputs:
            if ir.has_reductions:
                gradient = reduction_gradient(loss, ir.symbols[inp.name], ir.element_symbols)
            else:
                gradient = sympy.diff(loss, ir.symbols[inp.name])
            gradients[inp.name] = finish(gradient)
    kernel_exprs = [loss, *gradients.values()]
    if ir.has_reductions:
        elements = set(ir.element_symbols) | ({GRAD_OUTPUT} if element_level(loss, ir.element_symbols) else set())
        kernel_exprs = [split_row_sums(e, elements) for e in kernel_exprs]
    return DerivedLoss(
        ir=ir,
        loss=loss,
        gradients=gradients,
        forward=fuse(kernel_exprs[:1], nodes),
        forward_backward=fuse(kernel_exprs, nodes + adjoints),
        steps=nodes + adjoints,
        rules_applied=fired,
    )


def _differentiable_symbols(ir):
    return {inp.name: ir.symbols[inp.name] for inp in ir.spec.differentiable_inputs}


def chain_rule(loss, nodes, inputs, finish=lambda e: e):
    """Reverse mode over a graph of element-wise ``nodes`` ((symbol, expression), each reading
    inputs and earlier nodes) ending in ``loss``: ([(adjoint symbol, ∂loss/∂node)], in the
    order they can be computed, and {name: d loss/d input} for ``inputs`` {name: symbol}).
    Each adjoint is the loss's direct derivative plus later nodes' adjoints times their local
    derivatives; ``finish`` post-processes every derivative (stabilization)."""
    adjoint, steps = {}, []

    def total(symbol, after):
        """d loss/d symbol: its direct derivative plus, through every node after ``after``, adjoint·∂node/∂symbol."""
        through = (adjoint[m] * sympy.diff(expr, symbol) for m, (_, expr) in enumerate(nodes)
                   if m > after and adjoint[m] != 0 and symbol in expr.free_symbols)
        return finish(sympy.diff(loss, symbol) + sum(through, sympy.S.Zero))

    for k in reversed(range(len(nodes))):
        value = total(nodes[k][0], k)
        adjoint[k] = value if value.is_Number else sympy.Symbol(f"_a{k}", real=True)
        if not value.is_Number:
            steps.append((adjoint[k], value))
    return steps, {name: total(x, -1) for name, x in inputs.items()}


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
    if elementwise:  # one grad_output per element: it stays inside every Σ_j
        element_symbols = set(element_symbols) | {GRAD_OUTPUT}
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

    With reductions, the gradient of Σ loss (grad_output = 1) w.r.t. each element. With
    graph nodes they read the steps of :func:`declared_program`."""
    return declared_program(ir)[1]


def declared_program(ir):
    """(steps, gradients) of the loss as declared: ``steps`` the (symbol, expression)
    assignments of its graph (nodes, then adjoints; none when all is inlined) that the
    loss and the gradients read."""
    if ir.nodes:
        adjoints, gradients = chain_rule(ir.loss, ir.nodes, _differentiable_symbols(ir), _drop_distributions)
        return list(ir.nodes) + adjoints, gradients
    gradients = {}
    for inp in ir.spec.differentiable_inputs:
        x = ir.symbols[inp.name]
        if ir.has_reductions:
            gradient = reduction_gradient(ir.loss, x, ir.element_symbols).subs(GRAD_OUTPUT, 1)
        else:
            gradient = sympy.diff(ir.loss, x)
        gradients[inp.name] = _drop_distributions(gradient)
    return [], gradients


def fuse(exprs, steps=()):
    """Lower ``exprs`` (and the graph ``steps`` they read) and eliminate their common
    subexpressions into one Kernel. SymPy's 'basic' pre-CSE factoring costs more than
    linear time, so a graph's kernels skip it."""
    lowered = [lower(e) for _, e in steps] + [lower(e) for e in exprs]
    temporaries = sympy.numbered_symbols("_t", real=True)
    assignments, outputs = sympy.cse(lowered, symbols=temporaries, order="canonical",
                                     optimizations=None if steps else "basic")
    if not steps:
        return Kernel(assignments=list(assignments), outputs=list(outputs))
    named = list(zip((symbol for symbol, _ in steps), outputs[:len(steps)]))
    return Kernel(assignments=_dependency_order(list(assignments) + named), outputs=list(outputs[len(steps):]))


def _dependency_order(assignments):
    """``assignments`` reordered so each comes after those it reads, otherwise keeping their order."""
    defined = {symbol for symbol, _ in assignments}
    needs = [expr.free_symbols & defined for _, expr in assignments]
    ordered, done, pending = [], set(), list(range(len(assignments)))
    while pending:
        k = next(k for k in pending if needs[k] <= done)
        pending.remove(k)
        ordered.append(assignments[k])
        done.add(assignments[k][0])
    return ordered


def _drop_distributions(expr):
    """Derivatives of sign/Heaviside are 0 away from the origin and taken as 0 at it."""
    return expr.replace(sympy.DiracDelta, lambda *args: sympy.S.Zero)
